"""The evaluation report: one self-contained HTML page (inline CSS and SVG, no scripts).

It is shown in the Kubeflow UI as an HTML artifact, which renders it in a sandboxed
frame with no network access, so nothing may be fetched from elsewhere. Every piece of
model or user text goes through `html.escape`: generations are untrusted output.
"""

from __future__ import annotations

import math
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from components.evaluate.evaluate import EvaluateResult

_SCORES = (
    ("val_loss", "validation loss", True),
    ("perplexity", "perplexity", True),
    ("exact_match", "exact match", False),
    ("token_f1", "token F1", False),
    ("rouge_l", "ROUGE-L", False),
)
_CURVE_STYLE = {"loss_curve": ("train loss", "#1f77b4"), "eval_curve": ("validation loss", "#d62728")}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1b1b1b; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #d0d0d0; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.better { color: #116329; } td.worse { color: #a40e26; }
td.text { white-space: pre-wrap; max-width: 32em; font-family: ui-monospace, monospace; font-size: 0.9em; }
.badge { display: inline-block; padding: 4px 12px; border-radius: 4px; color: #fff; font-weight: bold; }
.passed { background: #1a7f37; } .failed { background: #cf222e; }
.note { color: #555; }
code { font-size: 0.95em; }
"""


def _number(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


def _delta_cell(delta: float, lower_is_better: bool) -> str:
    improved = delta < 0 if lower_is_better else delta > 0
    css = "better" if improved else ("worse" if delta != 0 else "")
    return f"<td class='num {css}'>{delta:+.4f}</td>"


def metrics_table(result: EvaluateResult) -> str:
    """Base vs tuned, and the production model's scores and tuned's difference to them when compared."""
    production = result.production
    rows = []
    for name, label, lower_is_better in _SCORES:
        base, tuned = getattr(result.base, name), getattr(result.tuned, name)
        row = (
            f"<tr><td>{escape(label)}</td><td class='num'>{_number(base)}</td>"
            f"<td class='num'>{_number(tuned)}</td>{_delta_cell(tuned - base, lower_is_better)}"
        )
        if production is not None:
            served = getattr(production, name)
            row += f"<td class='num'>{_number(served)}</td>{_delta_cell(tuned - served, lower_is_better)}"
        rows.append(row + "</tr>")
    head = "<tr><th>metric</th><th>base</th><th>tuned</th><th>delta</th>"
    if production is not None:
        head += "<th>production</th><th>tuned - production</th>"
    return f"<table>{head}</tr>{''.join(rows)}</table>"


def generations_table(generations: list[dict[str, Any]]) -> str:
    if not generations:
        return "<p class='note'>No generations to show.</p>"
    columns: tuple[str, ...] = ("prompt", "reference", "base", "tuned")
    if any("production" in item for item in generations):
        columns += ("production",)
    head = "".join(f"<th>{name}</th>" for name in columns)
    rows = "".join(
        "<tr>"
        + "".join(f"<td class='text'>{escape(str(item.get(name, '')))}</td>" for name in columns)
        + "</tr>"
        for item in generations
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) covering [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def loss_curve_svg(curves: dict[str, list[tuple[float, float]]], width: int = 640, height: int = 300) -> str:
    """A line chart of (step, loss) series as inline SVG; non-finite points are skipped."""
    series = {
        name: [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
        for name, points in curves.items()
    }
    series = {name: points for name, points in series.items() if points}
    if not series:
        return "<p class='note'>The training metrics hold no finite loss values to plot.</p>"
    left, right, top, bottom = 60, 20, 16, 44
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    if y_high == y_low:
        y_low, y_high = y_low - 0.5, y_high + 0.5
    padding = (y_high - y_low) * 0.05
    y_low, y_high = y_low - padding, y_high + padding
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * plot_w

    def py(y: float) -> float:
        return top + (y_high - y) / (y_high - y_low) * plot_h

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' role='img' aria-label='loss curve' font-size='11' "
        "font-family='sans-serif'>",
        f"<rect x='{left}' y='{top}' width='{plot_w}' height='{plot_h}' fill='#fff' stroke='#999'/>",
    ]
    for tick in _ticks(y_low, y_high):
        y = py(tick)
        parts.append(f"<line x1='{left}' y1='{y:.1f}' x2='{left + plot_w}' y2='{y:.1f}' stroke='#eee'/>")
        parts.append(f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end'>{tick:g}</text>")
    for tick in _ticks(x_low, x_high):
        x = px(tick)
        parts.append(
            f"<line x1='{x:.1f}' y1='{top + plot_h}' x2='{x:.1f}' y2='{top + plot_h + 4}' stroke='#999'/>"
        )
        parts.append(f"<text x='{x:.1f}' y='{top + plot_h + 16}' text-anchor='middle'>{tick:g}</text>")
    parts.append(f"<text x='{left + plot_w / 2:.1f}' y='{height - 6}' text-anchor='middle'>step</text>")
    parts.append(
        f"<text x='14' y='{top + plot_h / 2:.1f}' text-anchor='middle' "
        f"transform='rotate(-90 14 {top + plot_h / 2:.1f})'>loss</text>"
    )
    for index, (name, points) in enumerate(series.items()):
        label, color = _CURVE_STYLE.get(name, (name, "#555"))
        coordinates = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        if len(points) > 1:
            parts.append(
                f"<polyline points='{coordinates}' fill='none' stroke='{color}' stroke-width='1.5'/>"
            )
        if len(points) <= 50:  # sparse series (validation) read better with markers
            parts.extend(
                f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='3' fill='{color}'/>" for x, y in points
            )
        legend_y = top + 14 + index * 16
        parts.append(
            f"<rect x='{left + plot_w - 130}' y='{legend_y - 9}' width='10' height='10' fill='{color}'/>"
            f"<text x='{left + plot_w - 115}' y='{legend_y}'>{escape(label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_report(
    result: EvaluateResult,
    *,
    inputs: dict[str, str],
    data: dict[str, Any],
    thresholds: dict[str, Any],
    generations: list[dict[str, Any]],
    curves: dict[str, list[tuple[float, float]]] | None,
) -> str:
    verdict = "PASSED" if result.passed else "FAILED"
    reasons = "".join(f"<li>{escape(reason)}</li>" for reason in result.reasons)
    threshold_rows = "".join(
        f"<tr><td><code>{escape(key)}</code></td><td>{escape(str(value))}</td></tr>"
        for key, value in thresholds.items()
    )
    input_rows = "".join(
        f"<tr><td>{escape(key)}</td><td><code>{escape(str(value))}</code></td></tr>"
        for key, value in inputs.items()
    )
    curve = (
        loss_curve_svg(curves)
        if curves
        else "<p class='note'>No training metrics were given (<code>train_metrics</code>): no loss curve.</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>llmft evaluation: {verdict}</title>
<style>{_CSS}</style></head>
<body>
<h1>llmft evaluation <span class="badge {verdict.lower()}">gate {verdict}</span></h1>
<table>{input_rows}</table>
<h2>Gate</h2>
<ul>{reasons}</ul>
<table><tr><th>threshold</th><th>value</th></tr>{threshold_rows}</table>
<h2>Base vs tuned</h2>
{metrics_table(result)}
<p class="note">Production model: {escape(result.production_note)}</p>
<p class="note">Validation loss and perplexity over the response tokens of
{data.get("val_records", "?")} val records ({data.get("val_tokens", "?")} tokens); exact match, token F1
and ROUGE-L over greedy generations for the first {data.get("generation_records", "?")} records
(lowercased, punctuation removed).</p>
<h2>Training loss</h2>
{curve}
<h2>Sample generations</h2>
{generations_table(generations)}
</body></html>
"""
