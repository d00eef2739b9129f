"""The curate step's HTML report: one small self-contained page (no external JS or CSS).

KFP shows it as an Output[HTML] artifact in a sandboxed iframe, so everything is inline:
a funnel table (input lines -> each reject reason -> kept), rejects per stage and the PII
found, an SVG bar chart of reject reasons, an SVG histogram of response lengths and a few
example rejects.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from components.curate.formats import REJECT_REASONS

_EXAMPLE_TEXT_CHARS = 300
_BAR_COLOR = "#c0392b"
_HIST_COLOR = "#2e86c1"
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:60em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}tr.kept td{font-weight:600;background:#eaf6ea}
tr.rej td{color:#a33}pre{white-space:pre-wrap;word-break:break-all;margin:0;font-size:.85em}
.muted{color:#777}
"""


def histogram(values: Sequence[int], bins: int = 20) -> list[tuple[int, int, int]]:
    """Equal-width integer bins over [min, max]: (low, high inclusive, count) per bin."""
    if not len(values):
        return []
    data = np.asarray(values, dtype=np.int64)
    low, high = int(data.min()), int(data.max())
    width = max(1, math.ceil((high - low + 1) / bins))
    counts = np.bincount((data - low) // width, minlength=math.ceil((high - low + 1) / width))
    return [(low + i * width, low + (i + 1) * width - 1, int(count)) for i, count in enumerate(counts)]


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _funnel(title: str, total: int, by_reason: Mapping[str, int], kept: list[tuple[str, int]]) -> str:
    rows = [f'<tr><td>{html.escape(title)}</td><td class="n">{total}</td><td class="n">100%</td></tr>']
    for reason, count in by_reason.items():
        rows.append(
            f'<tr class="rej"><td title="{html.escape(REJECT_REASONS.get(reason, ""))}">'
            f"&minus; {html.escape(reason)}</td>"
            f'<td class="n">{count}</td><td class="n">{_percent(count, total)}</td></tr>'
        )
    for name, count in kept:
        rows.append(
            f'<tr class="kept"><td>= {html.escape(name)}</td><td class="n">{count}</td>'
            f'<td class="n">{_percent(count, total)}</td></tr>'
        )
    return "<table><tr><th>stage</th><th>lines</th><th>share</th></tr>" + "".join(rows) + "</table>"


def _stages_table(stages: Mapping[str, int]) -> str:
    cells = "".join(f"<th>{html.escape(stage)}</th>" for stage in stages)
    counts = "".join(f'<td class="n">{count}</td>' for count in stages.values())
    return f"<table><tr><th>rejected by stage</th>{cells}</tr><tr><td></td>{counts}</tr></table>"


def bar_chart_svg(counts: Mapping[str, int], width: int = 520, row: int = 22) -> str:
    """Horizontal bars, one per reject reason."""
    if not counts:
        return '<p class="muted">no rejects</p>'
    label_width, value_width = 130, 50
    scale = (width - label_width - value_width) / max(counts.values())
    parts = []
    for index, (name, count) in enumerate(counts.items()):
        y = index * row
        bar = max(1.0, count * scale)
        parts.append(
            f'<text x="{label_width - 6}" y="{y + 15}" text-anchor="end">{html.escape(name)}</text>'
            f'<rect x="{label_width}" y="{y + 3}" width="{bar:.1f}" height="{row - 6}" fill="{_BAR_COLOR}"/>'
            f'<text x="{label_width + bar + 4:.1f}" y="{y + 15}">{count}</text>'
        )
    height = row * len(counts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="12" '
        f'role="img" aria-label="reject reasons">{"".join(parts)}</svg>'
    )


def histogram_svg(bins: Sequence[tuple[int, int, int]], width: int = 520, height: int = 160) -> str:
    """Vertical bars of a histogram, with the value range and the tallest count labelled."""
    if not bins:
        return '<p class="muted">no kept records</p>'
    top, bottom = 14, 18
    plot = height - top - bottom
    peak = max(count for _, _, count in bins)
    step = width / len(bins)
    parts = []
    for index, (low, high, count) in enumerate(bins):
        bar = plot * count / peak if peak else 0
        label = f"{low}" if low == high else f"{low}-{high}"
        parts.append(
            f'<rect x="{index * step + 1:.1f}" y="{top + plot - bar:.1f}" width="{max(step - 2, 1):.1f}" '
            f'height="{bar:.1f}" fill="{_HIST_COLOR}"><title>{label} chars: {count}</title></rect>'
        )
    parts.append(f'<text x="0" y="{height - 4}">{bins[0][0]}</text>')
    parts.append(f'<text x="{width}" y="{height - 4}" text-anchor="end">{bins[-1][1]} chars</text>')
    parts.append(f'<text x="0" y="10">max {peak} records per bin</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" '
        f'role="img" aria-label="response length histogram">{"".join(parts)}</svg>'
    )


def _examples_table(examples: Sequence[Mapping[str, Any]]) -> str:
    if not examples:
        return '<p class="muted">no rejects</p>'
    rows = []
    for example in examples:
        text = str(example.get("text", ""))
        if len(text) > _EXAMPLE_TEXT_CHARS:
            text = text[:_EXAMPLE_TEXT_CHARS] + " …"
        where = f"{example['source']}:{example['line']}"
        rows.append(
            f"<tr><td>{html.escape(str(example['reason']))}</td><td>{html.escape(where)}</td>"
            f"<td>{html.escape(str(example['detail']))}<pre>{html.escape(text)}</pre></td></tr>"
        )
    header = "<tr><th>reason</th><th>where</th><th>detail and line</th></tr>"
    return f"<table>{header}{''.join(rows)}</table>"


def _lengths_table(lengths: Mapping[str, Mapping[str, Any]]) -> str:
    keys = ("min", "mean", "p50", "p95", "max")
    rows = [
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f'<td class="n">{html.escape(str(values.get(key, "-")))}</td>' for key in keys)
        + "</tr>"
        for name, values in lengths.items()
    ]
    header = "".join(f"<th>{key}</th>" for key in keys)
    return f"<table><tr><th>chars</th>{header}</tr>{''.join(rows)}</table>"


def render_report(
    stats: Mapping[str, Any],
    response_bins: Sequence[tuple[int, int, int]],
    examples: Sequence[Mapping[str, Any]],
) -> str:
    """The whole page from stats.json's content, a response-length histogram and example rejects."""
    kept = stats["kept"]
    rejected = stats["rejected"]
    sections = [f"<h1>curate: kept {kept['train'] + kept['val']} records</h1>"]
    sections.append(f'<p class="muted">{html.escape(stats["identity"])}</p>')

    sections.append("<h2>Funnel</h2>")
    if stats["eval_records"]:
        inputs, evals = rejected["inputs"]["by_reason"], rejected["eval"]["by_reason"]
        sections.append(_funnel("input lines", stats["input_records"], inputs, [("train", kept["train"])]))
        sections.append(_funnel("eval set lines", stats["eval_records"], evals, [("val", kept["val"])]))
    else:
        sections.append(
            _funnel(
                "input lines",
                stats["input_records"],
                rejected["by_reason"],
                [("train", kept["train"]), ("val", kept["val"])],
            )
        )

    if stats.get("stages"):
        sections.append(_stages_table(stats["stages"]))
    if stats.get("pii"):
        # Redact mode: placeholders written; reject mode: matches in the records rejected as pii.
        action = "rejected records held" if stats["config"].get("pii") == "reject" else "replaced"
        found = ", ".join(f"{html.escape(name)} {count}" for name, count in stats["pii"].items())
        sections.append(f"<p>PII {action}: {found}</p>")

    sections.append("<h2>Reject reasons</h2>")
    sections.append(bar_chart_svg(rejected["by_reason"]))
    sections.append("<h2>Response length (characters, kept records)</h2>")
    sections.append(histogram_svg(response_bins))
    sections.append(_lengths_table(stats["lengths"]))
    sections.append("<h2>Example rejects</h2>")
    sections.append(_examples_table(examples))
    sections.append('<p class="muted">All rejects, with line numbers, are in rejects.jsonl.</p>')
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>llmft curate report</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(sections)}</body></html>\n"
    )
