"""The curate step: raw instruction data in, canonical train/val JSONL out, nothing lost silently.

`curate(CurateConfig(...))` reads every input (local path or s3:// URI; JSONL, JSONL.gz or
Parquet) line by line, normalizes the three accepted record formats (see `formats.py`)
to `components.records.Record`, filters and deduplicates, splits train/val and writes

    train.jsonl  val.jsonl  rejects.jsonl  stats.json  report.html  _MANIFEST.json

Every input line ends in exactly one of train.jsonl, val.jsonl or rejects.jsonl, and
stats.json states the identity that proves it. The split is a pure function of each
record's normalized content, so it does not change with input order or between runs.
The manifest is written last (by `storage.publish_dir`), only when curation succeeded.
"""

from __future__ import annotations

import codecs
import gzip
import json
import logging
import math
import shutil
import tempfile
import zlib
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from tqdm import tqdm

from components import storage
from components.curate import formats, pii
from components.curate.decontaminate import NgramIndex
from components.curate.filters import QualitySettings, quality_problem
from components.curate.formats import REASON_STAGES, REJECT_REASONS, STAGES, ParsedRecord, Rejection
from components.curate.report import histogram, render_report
from components.records import Record

log = logging.getLogger(__name__)

TRAIN_FILE = "train.jsonl"
VAL_FILE = "val.jsonl"
REJECTS_FILE = "rejects.jsonl"
STATS_FILE = "stats.json"
REPORT_FILE = "report.html"
OUTPUT_FILES = (TRAIN_FILE, VAL_FILE, REJECTS_FILE, STATS_FILE, REPORT_FILE)
PRODUCER = "llmft.curate"

# rejects.jsonl keeps the original line so users can fix their data; a pathological line
# (a whole JSON array on one line) is cut here and marked "truncated": true.
_MAX_REJECT_TEXT_CHARS = 65_536
_REPORT_EXAMPLES = 5
_PROGRESS_EVERY_LINES = 4096
_PARQUET_BATCH_ROWS = 1024


class CurateError(ValueError):
    """A problem with the run as a whole (not one record): names the file and what is wrong."""


class CurateConfig(BaseModel):
    """Parameters of the curate step; each field is a CLI option (--field-name)."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[str] = Field(
        min_length=1,
        description="Input files: local paths or s3:// URIs of JSONL, JSONL.gz or Parquet "
        "(format sniffed from the content). Repeat to combine several files.",
    )
    output: str = Field(
        description="Output directory (local path or s3:// URI) for train/val/rejects JSONL, "
        "stats.json, report.html and the manifest.",
    )
    eval_set: str | None = Field(
        default=None,
        description="Optional held-out eval file (same formats). It becomes val.jsonl as is, "
        "and training records equal to an eval record are rejected as eval_overlap.",
    )
    val_fraction: float = Field(
        default=0.1,
        ge=0.0,
        lt=1.0,
        description="Share of records for val.jsonl when no eval_set is given; chosen by a hash "
        "of each record's normalized prompt+response, so the split is stable across runs.",
    )
    min_response_chars: int = Field(
        default=1, ge=1, description="Reject records whose normalized response is shorter (empty_response)."
    )
    max_prompt_chars: int = Field(
        default=20_000, ge=1, description="Reject records whose normalized prompt is longer (too_long)."
    )
    max_response_chars: int = Field(
        default=20_000, ge=1, description="Reject records whose normalized response is longer (too_long)."
    )
    dedup: bool = Field(
        default=True,
        description="Reject exact duplicates of normalized (system, prompt, response); the first is kept.",
    )
    max_symbol_ratio: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Reject responses (of 8+ characters) in which a larger share of characters is neither "
        "letter, digit nor whitespace (too_many_symbols); 1 turns the check off.",
    )
    max_repeated_line_ratio: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Reject responses of 4+ non-blank lines in which a larger share of lines repeats an "
        "earlier line (repeated_lines); 1 turns the check off.",
    )
    max_repeated_ngram_ratio: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Reject responses of 20+ words in which a larger share of word 3-grams repeats an "
        "earlier one (repeated_ngrams); 1 turns the check off.",
    )
    reject_copied_prompt: bool = Field(
        default=True,
        description="Reject responses equal to the prompt, or of 20+ characters holding the prompt verbatim "
        "as over 90% of them (copies_prompt).",
    )
    reject_trivial_responses: bool = Field(
        default=True,
        description="Reject responses with no letter or digit, e.g. only punctuation (trivial_response).",
    )
    pii: Literal["redact", "reject", "off"] = Field(
        default="redact",
        description="Personal data and secrets (e-mail, phone, IP, card, SSN, AWS keys, API tokens): "
        "'redact' replaces them with [TYPE] placeholders, 'reject' rejects the record (pii), 'off' skips.",
    )
    decontamination_ngram: int = Field(
        default=13,
        ge=0,
        description="With eval_set: reject training records sharing any run of this many words with an eval "
        "record's prompt+response (contaminated); 0 turns it off.",
    )

    def quality_settings(self) -> QualitySettings:
        """The quality-filter fields for `filters.quality_problem`."""
        return QualitySettings(
            max_symbol_ratio=self.max_symbol_ratio,
            max_repeated_line_ratio=self.max_repeated_line_ratio,
            max_repeated_ngram_ratio=self.max_repeated_ngram_ratio,
            reject_copied_prompt=self.reject_copied_prompt,
            reject_trivial_responses=self.reject_trivial_responses,
        )

    @field_validator("inputs")
    @classmethod
    def _inputs_unique(cls, inputs: list[str]) -> list[str]:
        if any(not uri.strip() for uri in inputs):
            raise ValueError("inputs contains an empty path")
        repeated = sorted(uri for uri, count in Counter(inputs).items() if count > 1)
        if repeated:
            raise ValueError(f"inputs lists the same file more than once: {', '.join(repeated)}")
        return inputs

    @model_validator(mode="after")
    def _eval_set_not_an_input(self) -> CurateConfig:
        if self.eval_set is not None and self.eval_set in self.inputs:
            raise ValueError(
                f"eval_set {self.eval_set} is also an input: "
                "every training record would be rejected as eval_overlap"
            )
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> CurateConfig:
        """Load a YAML or JSON config file; any problem becomes a CurateError naming the file."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise CurateError(f"cannot read curate config {path}: {error}") from error
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise CurateError(f"curate config {path} must be a mapping of parameters, got {kind}")
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise CurateError(f"invalid curate config {path}: {error}") from error


class CurateResult(BaseModel):
    """What curate produced; the counts match stats.json."""

    output: str = Field(description="The output directory (local path or s3:// URI).")
    train_records: int = Field(description="Records in train.jsonl.")
    val_records: int = Field(description="Records in val.jsonl (from the split, or the eval set).")
    rejected: int = Field(description="Lines in rejects.jsonl (inputs and eval set together).")
    rejected_by_reason: dict[str, int] = Field(description="Rejected lines per reason (non-zero only).")
    input_records: int = Field(description="Lines read from the inputs (the eval set not included).")
    eval_records: int = Field(default=0, description="Lines read from the eval set (0 without one).")
    dataset_sha256: str = Field(
        description="Digest of the output directory's manifest: the dataset's identity."
    )

    def summary(self) -> str:
        """A few lines for logs and the CLI."""
        reasons = sorted(self.rejected_by_reason.items(), key=lambda item: (-item[1], item[0]))
        rejected = f"rejected {self.rejected}" + (
            ": " + ", ".join(f"{reason}={count}" for reason, count in reasons) if reasons else ""
        )
        if self.eval_records:
            kept = (
                f"kept {self.train_records} of {self.input_records} input records for training and "
                f"{self.val_records} of {self.eval_records} eval-set records as val"
            )
        else:
            kept = (
                f"kept {self.train_records + self.val_records} of {self.input_records} records "
                f"(train {self.train_records}, val {self.val_records})"
            )
        return f"{kept}; {rejected}\noutput {self.output} (dataset sha256 {self.dataset_sha256})"


# --- reading ---------------------------------------------------------------------------

# A source yields (1-based line or row number, raw line bytes or a decoded Parquet row).
Item = bytes | dict[str, Any]


def _check_source(uri: str) -> None:
    """Fail before writing anything if an input cannot be found."""
    if storage.is_s3(uri):
        try:
            found = storage.exists(uri)
        except Exception as error:  # botocore raises many types; the message is what matters
            raise CurateError(f"cannot access input {uri}: {error}") from error
        if not found:
            raise CurateError(f"input file not found: {uri}")
        return
    path = Path(uri)
    if path.is_dir():
        raise CurateError(f"input {uri} is a directory; pass the files in it as inputs")
    if not path.is_file():
        raise CurateError(f"input file not found: {uri}")


def _localize(uri: str) -> Path:
    try:
        return storage.localize_file(uri)
    except Exception as error:
        raise CurateError(f"cannot read input {uri}: {error}") from error


def _iter_jsonl(uri: str, path: Path, compressed: bool) -> Iterator[tuple[int, Item]]:
    # Bytes, not text: one line of invalid UTF-8 must reject that line only.
    number = 0
    with (
        open(path, "rb") as raw,
        tqdm(
            total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, disable=None, leave=False
        ) as bar,
    ):
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            for number, line in enumerate(stream, start=1):
                # Editors on Windows start files with a UTF-8 byte order mark; JSON does not allow one.
                yield number, line.removeprefix(codecs.BOM_UTF8) if number == 1 else line
                if number % _PROGRESS_EVERY_LINES == 0:
                    bar.update(raw.tell() - bar.n)
        except (OSError, EOFError, zlib.error) as error:
            raise CurateError(f"cannot read {uri} after line {number}: {error}") from error
        bar.update(raw.tell() - bar.n)
    if number == 0:
        raise CurateError(f"input file {uri} is empty: it has no lines to curate")


def _iter_parquet(uri: str, path: Path) -> Iterator[tuple[int, Item]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise CurateError(f"{uri} is a Parquet file; reading it needs pyarrow") from error
    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:
        raise CurateError(f"cannot read Parquet file {uri}: {error}") from error
    total = parquet.metadata.num_rows
    if total == 0:
        raise CurateError(f"input file {uri} is empty: it has no rows to curate")
    number = 0
    with tqdm(total=total, unit="row", desc=path.name, disable=None, leave=False) as bar:
        try:
            for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                for row in batch.to_pylist():
                    number += 1
                    # A column that is null in this row is absent from it: a table mixing two formats
                    # has every format's columns, and null ones must not make a row ambiguous.
                    yield number, {key: value for key, value in row.items() if value is not None}
                bar.update(batch.num_rows)
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise CurateError(f"cannot read Parquet file {uri} after row {number}: {error}") from error


def iter_source(uri: str) -> Iterator[tuple[int, Item]]:
    """Lines (JSONL, optionally gzip) or rows (Parquet) of one input, sniffed from its first bytes."""
    path = _localize(uri)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == b"PAR1":
        return _iter_parquet(uri, path)
    return _iter_jsonl(uri, path, compressed=magic[:2] == b"\x1f\x8b")


def parse_item(item: Item) -> ParsedRecord:
    return formats.parse_line(item) if isinstance(item, bytes) else formats.parse_object(item)


def item_text(item: Item) -> str:
    """The original line as text for rejects.jsonl (undecodable bytes become U+FFFD)."""
    if isinstance(item, bytes):
        return item.rstrip(b"\r\n").decode("utf-8", errors="replace")
    return json.dumps(item, ensure_ascii=False, default=str)


# --- writing ---------------------------------------------------------------------------


@dataclass
class SourceTally:
    """Per-input counts for stats.json."""

    role: str  # "input" or "eval"
    lines: int = 0
    train: int = 0
    val: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    formats: Counter[str] = field(default_factory=Counter)


class _Sink:
    """The three streamed outputs plus what stats.json and the report need.

    Records are written as they are accepted (the same `Record.to_json` lines
    `records.write_records` writes), so memory grows with the dedup index, not the data.
    """

    def __init__(self, directory: Path) -> None:
        self._stack = ExitStack()
        with self._stack:

            def open_output(name: str) -> TextIO:
                return self._stack.enter_context(open(directory / name, "w", encoding="utf-8"))

            self._files = {name: open_output(name) for name in (TRAIN_FILE, VAL_FILE)}
            self._rejects = open_output(REJECTS_FILE)
            # Keep the files open past this block; close() closes them.
            self._stack = self._stack.pop_all()
        self.prompt_lengths = array("q")
        self.response_lengths = array("q")
        self.examples: dict[str, list[dict[str, Any]]] = {}
        # PII matches by type: replaced (pii="redact") or found in rejected records (pii="reject").
        self.pii_found: Counter[str] = Counter()

    def keep(self, file_name: str, record: Record, record_format: str, tally: SourceTally) -> None:
        self._files[file_name].write(record.to_json() + "\n")
        if file_name == TRAIN_FILE:
            tally.train += 1
        else:
            tally.val += 1
        tally.formats[record_format] += 1
        self.prompt_lengths.append(len(record.prompt))
        self.response_lengths.append(len(record.response))

    def reject(self, source: str, line: int, rejection: Rejection, text: str, tally: SourceTally) -> None:
        entry: dict[str, Any] = {
            "source": source,
            "line": line,
            "reason": rejection.reason,
            "detail": rejection.detail,
            "text": text[:_MAX_REJECT_TEXT_CHARS],
        }
        if len(text) > _MAX_REJECT_TEXT_CHARS:
            entry["truncated"] = True
        self._rejects.write(json.dumps(entry, ensure_ascii=False) + "\n")
        tally.rejected[rejection.reason] += 1
        examples = self.examples.setdefault(rejection.reason, [])
        if len(examples) < _REPORT_EXAMPLES:
            examples.append(entry)

    def close(self) -> None:
        self._stack.close()

    def report_examples(self) -> list[dict[str, Any]]:
        """Up to five rejects, one reason after another so the report shows variety."""
        queues = [list(self.examples[reason]) for reason in REJECT_REASONS if reason in self.examples]
        chosen: list[dict[str, Any]] = []
        while len(chosen) < _REPORT_EXAMPLES and any(queues):
            for queue in queues:
                if queue and len(chosen) < _REPORT_EXAMPLES:
                    chosen.append(queue.pop(0))
        return chosen


# --- stats -----------------------------------------------------------------------------


def _by_reason(counter: Mapping[str, int]) -> dict[str, int]:
    return {reason: counter[reason] for reason in REJECT_REASONS if counter.get(reason)}


def length_summary(values: array) -> dict[str, Any]:
    """min/mean/p50/p95/max (nearest-rank percentiles) of character lengths."""
    if not values:
        return {"count": 0, "min": None, "mean": None, "p50": None, "p95": None, "max": None}
    ordered = sorted(values)

    def rank(percent: float) -> int:
        return ordered[max(math.ceil(percent / 100 * len(ordered)) - 1, 0)]

    return {
        "count": len(ordered),
        "min": ordered[0],
        "mean": round(sum(ordered) / len(ordered), 2),
        "p50": rank(50),
        "p95": rank(95),
        "max": ordered[-1],
    }


def build_stats(config: CurateConfig, tallies: Mapping[str, SourceTally], sink: _Sink) -> dict[str, Any]:
    """The content of stats.json; `check_accounting` verifies it adds up."""
    inputs = [tally for tally in tallies.values() if tally.role == "input"]
    evals = [tally for tally in tallies.values() if tally.role == "eval"]
    input_rejects = sum((tally.rejected for tally in inputs), Counter())
    eval_rejects = sum((tally.rejected for tally in evals), Counter())
    all_rejects = input_rejects + eval_rejects
    if config.eval_set:
        identity = (
            "input_records == kept.train + rejected.inputs.total and "
            "eval_records == kept.val + rejected.eval.total (val.jsonl is the eval set; "
            "rejected.total counts both)"
        )
    else:
        identity = "input_records == kept.train + kept.val + rejected.total"
    return {
        "identity": identity,
        "input_records": sum(tally.lines for tally in inputs),
        "eval_records": sum(tally.lines for tally in evals),
        "val_source": "eval_set" if config.eval_set else "hash_split",
        "kept": {
            "train": sum(tally.train for tally in tallies.values()),
            "val": sum(tally.val for tally in tallies.values()),
        },
        "rejected": {
            "total": sum(all_rejects.values()),
            "by_reason": _by_reason(all_rejects),
            "inputs": {"total": sum(input_rejects.values()), "by_reason": _by_reason(input_rejects)},
            "eval": {"total": sum(eval_rejects.values()), "by_reason": _by_reason(eval_rejects)},
        },
        # Rejects per curation stage (each reason belongs to one; see formats.REASON_STAGES).
        "stages": {
            stage: sum(count for reason, count in all_rejects.items() if REASON_STAGES[reason] == stage)
            for stage in STAGES
        },
        "pii": {pii_type: sink.pii_found[pii_type] for pii_type in pii.PII_TYPES if sink.pii_found[pii_type]},
        "per_source": {
            uri: {
                "role": tally.role,
                "lines": tally.lines,
                "train": tally.train,
                "val": tally.val,
                "rejected": {"total": sum(tally.rejected.values()), "by_reason": _by_reason(tally.rejected)},
                "formats": dict(sorted(tally.formats.items())),
            }
            for uri, tally in tallies.items()
        },
        "lengths": {
            "prompt": length_summary(sink.prompt_lengths),
            "response": length_summary(sink.response_lengths),
        },
        # Without `output`, so the dataset digest does not depend on where it was written.
        "config": config.model_dump(exclude={"output"}),
    }


def check_accounting(stats: Mapping[str, Any]) -> None:
    """Raise if any line is unaccounted for; a failure here is a bug in curate, not in the data."""
    kept, rejected = stats["kept"], stats["rejected"]
    per_source_ok = all(
        source["lines"] == source["train"] + source["val"] + source["rejected"]["total"]
        for source in stats["per_source"].values()
    )
    if stats["val_source"] == "eval_set":
        totals_ok = (
            stats["input_records"] == kept["train"] + rejected["inputs"]["total"]
            and stats["eval_records"] == kept["val"] + rejected["eval"]["total"]
        )
    else:
        totals_ok = stats["input_records"] == kept["train"] + kept["val"] + rejected["total"]
    stages_ok = sum(stats["stages"].values()) == rejected["total"]
    if not (per_source_ok and totals_ok and stages_ok):
        raise RuntimeError(f"curate accounting does not add up ({stats['identity']}): {json.dumps(stats)}")


# --- output location -------------------------------------------------------------------


def _prepare_local_output(output: str) -> Path:
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise CurateError(f"output {output} exists and is not a directory")
    if path.is_dir():
        # publish_dir lists every file in the directory, so refuse to adopt unrelated files.
        ours = (*OUTPUT_FILES, storage.MANIFEST_NAME)
        foreign = sorted(entry.name for entry in path.iterdir() if entry.name not in ours)
        if foreign:
            raise CurateError(
                f"output directory {output} holds files curate does not write ({', '.join(foreign[:5])}); "
                "use a new or empty directory"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
        # An earlier run's manifest goes before any file changes, so a failed re-run never looks complete.
        (path / storage.MANIFEST_NAME).unlink(missing_ok=True)
    except OSError as error:
        raise CurateError(f"output {output} is not writable: {error}") from error
    return path


def _invalidate_s3_output(output: str) -> None:
    manifest = storage.join(output, storage.MANIFEST_NAME)
    if storage.exists(manifest):
        bucket, key = storage.split_s3(manifest)
        storage._s3_client().delete_object(Bucket=bucket, Key=key)


@contextmanager
def _writing_to(output: str) -> Iterator[None]:
    """Turn any storage failure while writing the output into a CurateError naming it."""
    try:
        yield
    except Exception as error:
        raise CurateError(f"cannot write output {output}: {error}") from error


def _upload_partial(directory: Path, output: str) -> None:
    """Put a failed run's files (no manifest) where the user looks, so rejects.jsonl can be read."""
    _invalidate_s3_output(output)
    for name in OUTPUT_FILES:
        storage.upload_file(directory / name, storage.join(output, name))


def _failure_message(config: CurateConfig, stats: Mapping[str, Any]) -> str | None:
    """Why the run produced nothing usable (no train records, or no val records from an eval set)."""
    rejects_uri = storage.join(config.output, REJECTS_FILE)

    def describe(what: str, uris: list[str], lines: int, by_reason: Mapping[str, int], to_val: int) -> str:
        rejected = sum(by_reason.values())
        reasons = ", ".join(f"{reason}={count}" for reason, count in by_reason.items())
        fate = "all rejected" if rejected == lines else f"{rejected} rejected"
        if rejected:
            fate += f" ({reasons})"
        if to_val:
            # Tiny inputs can land wholly in val: say so rather than blame the data.
            fate += f", {to_val} split to val (val_fraction={config.val_fraction:g})"
        names = ", ".join(uris)
        return f"no {what} records left after curation of {names}: {lines} lines, {fate}; see {rejects_uri}"

    kept = stats["kept"]
    if kept["train"] == 0:
        inputs_by_reason = stats["rejected"]["inputs"]["by_reason"]
        to_val = 0 if config.eval_set else kept["val"]
        return describe("training", config.inputs, stats["input_records"], inputs_by_reason, to_val)
    if config.eval_set and kept["val"] == 0:
        eval_by_reason = stats["rejected"]["eval"]["by_reason"]
        return describe("eval", [config.eval_set], stats["eval_records"], eval_by_reason, 0)
    return None


# --- the step --------------------------------------------------------------------------


def _curate_into(config: CurateConfig, directory: Path) -> dict[str, Any]:
    """Read every source and write train/val/rejects/stats/report into `directory`; return the stats."""
    try:
        sink = _Sink(directory)
    except OSError as error:
        raise CurateError(f"output {config.output} is not writable: {error}") from error
    tallies: dict[str, SourceTally] = {}
    try:
        # eval content digest -> its line, to name the eval record an overlapping one matches.
        eval_lines: dict[bytes, int] | None = None
        # Word n-grams of the eval records; the hash split's val records are not indexed
        # because the split is made while streaming (see README, "Decontamination").
        eval_ngrams: NgramIndex | None = None
        if config.eval_set:
            eval_lines = {}
            if config.decontamination_ngram:
                eval_ngrams = NgramIndex(config.decontamination_ngram)
            tally = tallies[config.eval_set] = SourceTally(role="eval")
            log.info("curate: reading eval set %s", config.eval_set)
            for line, item in iter_source(config.eval_set):
                tally.lines += 1
                try:
                    parsed = parse_item(item)
                    formats.check_lengths(
                        parsed, config.min_response_chars, config.max_prompt_chars, config.max_response_chars
                    )
                    # The eval set is not quality-filtered (it is kept as given) but its
                    # PII is treated like the inputs', so val.jsonl leaks nothing either.
                    parsed, found = _screen_pii(parsed, config.pii, sink)
                except Rejection as rejection:
                    sink.reject(config.eval_set, line, rejection, item_text(item), tally)
                    continue
                eval_lines.setdefault(formats.content_digest(parsed), line)
                record = _record(parsed, config.eval_set, line)
                if eval_ngrams is not None:
                    eval_ngrams.add(parsed, f"{record.id} ({config.eval_set}:{line})")
                sink.keep(VAL_FILE, record, parsed.format, tally)
                sink.pii_found.update(found)
            if eval_ngrams is not None:
                log.info("curate: eval set indexed: %d distinct %d-grams", len(eval_ngrams), eval_ngrams.n)

        quality = config.quality_settings()
        # identity digest -> (input index, line) of the record kept first.
        kept_at: dict[bytes, tuple[int, int]] = {}
        for index, uri in enumerate(config.inputs):
            tally = tallies[uri] = SourceTally(role="input")
            log.info("curate: reading %s (%d/%d)", uri, index + 1, len(config.inputs))
            for line, item in iter_source(uri):
                tally.lines += 1
                try:
                    parsed = parse_item(item)
                    formats.check_lengths(
                        parsed, config.min_response_chars, config.max_prompt_chars, config.max_response_chars
                    )
                    problem = quality_problem(parsed, quality)
                    if problem is not None:
                        raise Rejection(*problem)
                    parsed, found = _screen_pii(parsed, config.pii, sink)
                    digest = formats.identity_digest(parsed)
                    if eval_lines is not None:
                        eval_line = eval_lines.get(formats.content_digest(parsed))
                        if eval_line is not None:
                            raise Rejection(
                                "eval_overlap",
                                f"prompt and response equal eval record {config.eval_set}:{eval_line}",
                            )
                    if eval_ngrams is not None:
                        shared = eval_ngrams.match(parsed)
                        if shared is not None:
                            raise Rejection(
                                "contaminated",
                                f"shares the {eval_ngrams.n}-word sequence {shared[0]!r} with eval record "
                                f"{shared[1]}",
                            )
                    if config.dedup:
                        original = kept_at.get(digest)
                        if original is not None:
                            raise Rejection(
                                "duplicate",
                                f"duplicate of record {digest.hex()[:16]} kept from "
                                f"{config.inputs[original[0]]}:{original[1]}",
                            )
                        kept_at[digest] = (index, line)
                except Rejection as rejection:
                    sink.reject(uri, line, rejection, item_text(item), tally)
                    continue
                to_val = eval_lines is None and formats.in_validation(parsed, config.val_fraction)
                split = VAL_FILE if to_val else TRAIN_FILE
                sink.keep(split, _record(parsed, uri, line), parsed.format, tally)
                sink.pii_found.update(found)
            log.info(
                "curate: %s: %d lines, train %d, val %d, rejected %d",
                uri,
                tally.lines,
                tally.train,
                tally.val,
                sum(tally.rejected.values()),
            )
    finally:
        sink.close()

    stats = build_stats(config, tallies, sink)
    check_accounting(stats)
    stats_text = json.dumps(stats, indent=2, ensure_ascii=False) + "\n"
    (directory / STATS_FILE).write_text(stats_text, encoding="utf-8")
    page = render_report(stats, histogram(sink.response_lengths), sink.report_examples())
    (directory / REPORT_FILE).write_text(page, encoding="utf-8")
    return stats


def _screen_pii(parsed: ParsedRecord, mode: str, sink: _Sink) -> tuple[ParsedRecord, Counter[str]]:
    """Apply the pii setting: the record to keep and its redaction counts, or Rejection("pii").

    Counts of a record that is rejected by the pii check go to the sink at once; those of a
    redacted record are added by the caller only when it is kept, so stats.json's "pii"
    counts the placeholders actually written.
    """
    if mode == "off":
        return parsed, Counter()
    redacted, found = pii.redact_record(parsed)
    if found and mode == "reject":
        sink.pii_found.update(found)
        types = ", ".join(f"{pii_type}={found[pii_type]}" for pii_type in pii.PII_TYPES if found[pii_type])
        raise Rejection("pii", f"found {types}")
    return redacted, found


def _record(parsed: ParsedRecord, source: str, line: int) -> Record:
    return Record(
        id=formats.record_id(parsed),
        prompt=parsed.prompt,
        response=parsed.response,
        system=parsed.system,
        source=source,
        line=line,
    )


def curate(config: CurateConfig) -> CurateResult:
    """Run the curate step; raise CurateError for problems that are not about one record."""
    if not config.output.strip():
        raise CurateError("curate needs an output directory (local path or s3:// URI); output is empty")
    for uri in [*config.inputs, *([config.eval_set] if config.eval_set else [])]:
        _check_source(uri)
    to_s3 = storage.is_s3(config.output)
    if to_s3:
        directory = Path(tempfile.mkdtemp(prefix="llmft-curate-"))
    else:
        directory = _prepare_local_output(config.output)
    log.info("curate: %d input file(s) -> %s", len(config.inputs), config.output)
    try:
        stats = _curate_into(config, directory)
        failure = _failure_message(config, stats)
        if failure:
            if to_s3:
                with _writing_to(config.output):
                    _upload_partial(directory, config.output)
            raise CurateError(failure)
        if config.val_fraction > 0 and stats["kept"]["val"] == 0:
            log.warning(
                "curate: val.jsonl is empty: too few records for val_fraction=%g", config.val_fraction
            )
        metadata = {
            "train_records": stats["kept"]["train"],
            "val_records": stats["kept"]["val"],
            "rejected": stats["rejected"]["total"],
            "input_records": stats["input_records"],
            "eval_records": stats["eval_records"],
            "inputs": config.inputs,
            "eval_set": config.eval_set,
        }
        with _writing_to(config.output):
            if to_s3:
                _invalidate_s3_output(config.output)
            manifest = storage.publish_dir(directory, config.output, producer=PRODUCER, metadata=metadata)
    finally:
        if to_s3:
            shutil.rmtree(directory, ignore_errors=True)

    result = CurateResult(
        output=config.output,
        train_records=stats["kept"]["train"],
        val_records=stats["kept"]["val"],
        rejected=stats["rejected"]["total"],
        rejected_by_reason=stats["rejected"]["by_reason"],
        input_records=stats["input_records"],
        eval_records=stats["eval_records"],
        dataset_sha256=manifest.digest,
    )
    for line in result.summary().splitlines():
        log.info("curate: %s", line)
    return result
