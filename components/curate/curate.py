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

import errno
import gc
import gzip
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import zlib
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, NamedTuple

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from tqdm import tqdm

from components import jsonout, storage
from components.curate import formats, pii, workdirs
from components.curate.decontaminate import NgramIndex
from components.curate.filters import QualitySettings
from components.curate.formats import REASON_STAGES, REJECT_REASONS, STAGES, Rejection
from components.curate.minhash import NearDuplicates, lsh_params, select_near_duplicates
from components.curate.report import histogram, render_report
from components.curate.screen import (
    MAX_AUTO_WORKERS,
    Block,
    Item,
    LineRange,
    Refused,
    ScreenedChunk,
    ScreenPool,
    ScreenSettings,
    SketchSettings,
    available_cpus,
    item_bytes,
    item_text,
    screen,
    split_block,
)

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
# JSONL is read, and handed to the screening workers, in blocks of whole lines of about this size.
_BLOCK_BYTES = 1 << 20
_PARQUET_BATCH_ROWS = 1024
_WRITE_BATCH = 256
# One encoder for every reject line: json.dumps with options builds a new one per call.
_REJECT_JSON = json.JSONEncoder(ensure_ascii=False)


class CurateError(ValueError):
    """A problem with the run as a whole (not one record): names the file and what is wrong."""


class CurateConfig(BaseModel):
    """Parameters of the curate step; each field is a CLI option (--field-name)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    inputs: list[str] = Field(
        min_length=1,
        description="Input files: local paths or s3:// URIs of JSONL, JSONL.gz or Parquet "
        "(format sniffed from the content). Repeat to combine several files.",
        json_schema_extra={"cli_aliases": ["--input"]},
    )
    output: str = Field(
        description="Output directory (local path or s3:// URI) for train/val/rejects JSONL, "
        "stats.json, report.html and the manifest.",
    )
    eval_set: str | None = Field(
        default=None,
        json_schema_extra={"cli_aliases": ["--eval"]},
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
        "as over 90 percent of them (copies_prompt).",
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
        description="Reject training records sharing any run of this many words with a held-out record's "
        "prompt+response: an eval_set record (contaminated) or, without eval_set, a val.jsonl record of the "
        "hash split (val_contaminated); 0 turns it off.",
    )
    decontamination_boilerplate_records: int = Field(
        default=20,
        ge=1,
        description="Boilerplate is not contamination: a decontamination_ngram-word run held by more than "
        "max(this, decontamination_boilerplate_fraction x training records) distinct training records "
        "(a prompt template, a fixed instruction) is never matched against held-out records.",
    )
    decontamination_boilerplate_fraction: float = Field(
        default=0.0001,
        ge=0.0,
        le=1.0,
        description="Share of the training records above which a decontamination_ngram-word run is "
        "boilerplate (see decontamination_boilerplate_records); 1 turns the boilerplate rule off.",
    )
    near_dedup: bool = Field(
        default=True,
        description="Reject near duplicates (near_duplicate): records with the same system prompt whose "
        "prompt+response shingles are at least near_dedup_threshold similar (MinHash LSH estimate of their "
        "Jaccard similarity) to a kept record; of each group the record similar to the most others is kept "
        "(then the smallest id), whatever the input order.",
    )
    near_dedup_threshold: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="Jaccard similarity of two records' shingle sets from which they are near duplicates.",
    )
    near_dedup_shingle: int = Field(
        default=5,
        ge=1,
        le=50,
        description="Words per shingle (a record with fewer words is one shingle of all of them).",
    )
    near_dedup_num_perm: int = Field(
        default=128,
        ge=16,
        le=1024,
        description="MinHash permutations: more estimate the similarity more precisely and cost "
        "proportionally more time and memory (4 bytes per permutation per record).",
    )

    workers: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Processes that screen records (parse, filters, PII) in parallel: 0 picks one per CPU "
        "core (of the container's CPU limit, at most 8) for 16 MiB of input or more and 1 (no extra "
        "process) below; the output is the same either way.",
    )

    def boilerplate_limit(self, training_records: int) -> float:
        """Holders (distinct training records) above which a held-out n-gram is boilerplate."""
        return max(
            float(self.decontamination_boilerplate_records),
            self.decontamination_boilerplate_fraction * training_records,
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


def _check_source(uri: str) -> None:
    """Fail before writing anything if an input cannot be found."""
    if storage.is_s3(uri):
        try:
            found = storage.exists(uri)
        except storage.StorageError as error:  # it names the URI and what to check
            raise CurateError(str(error)) from None
        if not found:
            raise CurateError(f"input file {uri} does not exist")
        return
    problem = storage.local_path_problem(uri, "file")
    if problem == "is a directory, not a regular file":
        raise CurateError(f"input {uri} is a directory; pass the files in it as inputs")
    if problem:
        raise CurateError(f"input file {uri} {problem}")


def _localize(uri: str) -> Path:
    try:
        return storage.localize_file(uri)
    except Exception as error:
        raise CurateError(f"cannot read input {uri}: {error}") from error


def _iter_jsonl(uri: str, path: Path, compressed: bool) -> Iterator[Block]:
    # Bytes, not text: one line of invalid UTF-8 must reject that line only. Read in blocks
    # of whole lines and split in C: a Python step per line cost more than the rest of reading.
    number = 0
    with (
        open(path, "rb") as raw,
        tqdm(
            total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, disable=None, leave=False
        ) as bar,
    ):
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            offset = 0
            while block := stream.read(_BLOCK_BYTES):
                if not block.endswith(b"\n"):
                    block += stream.readline()  # finish the last line, however long
                lines = split_block(block, file_start=offset == 0)
                where = None if compressed else LineRange(str(path), offset, len(block))
                yield number + 1, lines, where
                number += len(lines)
                offset += len(block)
                bar.update(raw.tell() - bar.n)
        except (OSError, EOFError, zlib.error) as error:
            raise CurateError(f"cannot read {uri} after line {number}: {error}") from error
    if number == 0:
        raise CurateError(f"input file {uri} is empty: it has no lines to curate")


def _iter_parquet(uri: str, path: Path) -> Iterator[Block]:
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
                # A column that is null in this row is absent from it: a table mixing two formats
                # has every format's columns, and null ones must not make a row ambiguous.
                rows: list[Item] = [
                    {key: value for key, value in row.items() if value is not None}
                    for row in batch.to_pylist()
                ]
                yield number + 1, rows, None
                number += len(rows)
                bar.update(batch.num_rows)
        except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise CurateError(f"cannot read Parquet file {uri} after row {number}: {error}") from error


def iter_source(uri: str) -> Iterator[Block]:
    """Blocks of lines (JSONL, optionally gzip) or rows (Parquet) of one input, sniffed from its first bytes.

    Each block is (number of its first line or row, 1-based; the lines without line ends, or
    rows; for uncompressed JSONL, where the block lies in the local file, else None).
    """
    path = _localize(uri)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == b"PAR1":
        return _iter_parquet(uri, path)
    return _iter_jsonl(uri, path, compressed=magic[:2] == b"\x1f\x8b")


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

    Records are streamed to the files (the same `Record.to_json` lines
    `records.write_records` writes), so memory grows with the dedup indexes, not the data.
    """

    def __init__(self, directory: Path) -> None:
        self._stack = ExitStack()
        with self._stack:

            def open_output(name: str, mode: str) -> IO[Any]:
                encoding = "utf-8" if mode == "w" else None
                return self._stack.enter_context(open(directory / name, mode, encoding=encoding))

            # Record lines arrive UTF-8 encoded (by the screening workers), so they go out as bytes.
            self._files = {name: open_output(name, "wb") for name in (TRAIN_FILE, VAL_FILE)}
            self._buffers: dict[str, list[bytes]] = {name: [] for name in self._files}
            # The record files are hashed as they are written, for the manifest: reading them
            # again at the end would be the one step of the run on a single core.
            self._sha256 = {name: hashlib.sha256() for name in self._files}
            self._rejects = open_output(REJECTS_FILE, "w")
            # Keep the files open past this block; close() closes them.
            self._stack = self._stack.pop_all()
        self.prompt_lengths = array("q")
        self.response_lengths = array("q")
        self.examples: dict[str, list[dict[str, Any]]] = {}
        # PII matches by type: replaced (pii="redact") or found in rejected records (pii="reject").
        self.pii_found: Counter[str] = Counter()
        # Kept records in which normalization replaced control characters by a space.
        self.control_characters_replaced = 0

    def keep(
        self,
        file_name: str,
        lines: list[bytes],
        format_codes: Iterable[int],
        prompt_chars: Iterable[int],
        response_chars: Iterable[int],
        tally: SourceTally,
    ) -> None:
        """Write canonical record lines (`Record.to_json`, UTF-8) with their formats and lengths."""
        buffer = self._buffers[file_name]
        buffer.extend(lines)
        # One write per few hundred records: a write call per line cost more than the bytes.
        if len(buffer) >= _WRITE_BATCH:
            self._drain(file_name)
        if file_name == TRAIN_FILE:
            tally.train += len(lines)
        else:
            tally.val += len(lines)
        for code, count in Counter(format_codes).items():
            tally.formats[formats.FORMATS[code]] += count
        self.prompt_lengths.extend(prompt_chars)
        self.response_lengths.extend(response_chars)

    def reject(self, source: str, line: int, rejection: Rejection, text: str, tally: SourceTally) -> None:
        entry: dict[str, Any] = {
            "source": source,
            "line": line,
            "stage": REASON_STAGES[rejection.reason],
            "reason": rejection.reason,
            "detail": rejection.detail,
            "text": text[:_MAX_REJECT_TEXT_CHARS],
        }
        if rejection.kept_id is not None:
            entry["kept_id"] = rejection.kept_id
        if len(text) > _MAX_REJECT_TEXT_CHARS:
            entry["truncated"] = True
        self._rejects.write(_REJECT_JSON.encode(entry) + "\n")
        tally.rejected[rejection.reason] += 1
        examples = self.examples.setdefault(rejection.reason, [])
        if len(examples) < _REPORT_EXAMPLES:
            examples.append(entry)

    def _drain(self, file_name: str) -> None:
        buffer = self._buffers[file_name]
        if buffer:
            buffer.append(b"")  # the last record's line end
            data = b"\n".join(buffer)
            self._files[file_name].write(data)
            self._sha256[file_name].update(data)
            buffer.clear()

    def sha256(self) -> dict[str, str]:
        """The digests of the record files written so far, by file name."""
        return {name: digest.hexdigest() for name, digest in self._sha256.items()}

    def close(self) -> None:
        try:
            for file_name in self._files:
                self._drain(file_name)
        finally:
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
    ordered = np.sort(np.frombuffer(values, dtype=np.int64))

    def rank(percent: float) -> int:
        return int(ordered[max(math.ceil(percent / 100 * len(ordered)) - 1, 0)])

    return {
        "count": len(ordered),
        "min": int(ordered[0]),
        "mean": round(int(ordered.sum()) / len(ordered), 2),
        "p50": rank(50),
        "p95": rank(95),
        "max": int(ordered[-1]),
    }


def build_stats(
    config: CurateConfig, tallies: Mapping[str, SourceTally], sink: _Sink, stages: Mapping[str, Any]
) -> dict[str, Any]:
    """The content of stats.json; `check_accounting` verifies it adds up.

    `stages` holds the near_dedup and decontamination summaries (`_Curation.stage_details`).
    """
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
        # Kept records whose text normalization changed beyond whitespace, line ends and NFC.
        "normalization": {"control_characters_replaced": sink.control_characters_replaced},
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
        **stages,
        # Without `output` and `workers`, so the dataset digest does not depend on where or
        # with how many processes it was written.
        "config": config.model_dump(exclude={"output", "workers"}),
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
        foreign = sorted(
            entry.name
            for entry in path.iterdir()
            if entry.name not in ours and not entry.name.startswith(STAGING_PREFIX)
        )
        if foreign:
            raise CurateError(
                f"output directory {output} holds files curate does not write ({', '.join(foreign[:5])}); "
                "use a new or empty directory"
            )
        for staging in sorted(path.glob(f"{STAGING_PREFIX}*")):
            writer = workdirs.running_owner(staging)
            if writer is not None:
                raise CurateError(
                    f"another curate (process {writer}) is writing to {output}; wait for it to end "
                    "or use another output directory"
                )
    try:
        path.mkdir(parents=True, exist_ok=True)
        # An earlier run's manifest goes before any file changes, so a failed re-run never looks complete.
        (path / storage.MANIFEST_NAME).unlink(missing_ok=True)
        # What a killed run staged here (publish_dir would list it as part of the dataset).
        for staging in sorted(path.glob(f"{STAGING_PREFIX}*")):
            log.info("curate: removing %s, left by a curate run that was killed", staging)
            shutil.rmtree(staging)
    except OSError as error:
        raise CurateError(f"output {output} is not writable: {error}") from error
    return path


def _curate_to_local(config: CurateConfig) -> tuple[dict[str, Any], storage.Manifest]:
    """Curate into a staging directory inside the output, then give the files their names.

    A run killed before that leaves the earlier run's files as they were (without their
    manifest, removed first), never new records beside an old stats.json.
    """
    output = _prepare_local_output(config.output)
    with workdirs.owned_dir(STAGING_PREFIX, parent=output) as staging:
        stats, sha256 = _curate_into(config, staging)
        failure = _failure_message(config, stats)
        # A failed run's files still take their names (without a manifest): rejects.jsonl says why.
        _promote(staging, output, config.output)
    if failure:
        raise CurateError(failure)
    _warn_if_no_val(config, stats)
    with _writing_to(config.output):
        manifest = storage.publish_dir(
            output, config.output, producer=PRODUCER, metadata=_metadata(config, stats), sha256=sha256
        )
    return stats, manifest


def _curate_to_s3(config: CurateConfig) -> tuple[dict[str, Any], storage.Manifest]:
    """Curate into a local directory of this run, then upload (records first, manifest last)."""
    with _writing_to(config.output):
        # Before the first byte: from now on the prefix is visibly unfinished.
        _invalidate_s3_output(config.output)
    with workdirs.owned_dir(_UPLOAD_PREFIX) as directory:
        stats, sha256 = _curate_into(config, directory)
        failure = _failure_message(config, stats)
        with _writing_to(config.output):
            # The earlier run's files go before the new ones arrive: an upload cut short leaves
            # some of the new files (each whole), never a new stats.json beside old records.
            _remove_s3_outputs(config.output)
            if failure:
                _upload_partial(directory, config.output)
        if failure:
            raise CurateError(failure)
        _warn_if_no_val(config, stats)
        with _writing_to(config.output):
            manifest = storage.publish_dir(
                directory, config.output, producer=PRODUCER, metadata=_metadata(config, stats), sha256=sha256
            )
    return stats, manifest


def _warn_if_no_val(config: CurateConfig, stats: Mapping[str, Any]) -> None:
    if config.val_fraction > 0 and stats["kept"]["val"] == 0:
        log.warning("curate: val.jsonl is empty: too few records for val_fraction=%g", config.val_fraction)


def _metadata(config: CurateConfig, stats: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "train_records": stats["kept"]["train"],
        "val_records": stats["kept"]["val"],
        "rejected": stats["rejected"]["total"],
        "input_records": stats["input_records"],
        "eval_records": stats["eval_records"],
        "inputs": config.inputs,
        "eval_set": config.eval_set,
    }


def _promote(staging: Path, output: Path, uri: str) -> None:
    """Move a finished run's files from `staging` into `output`, the summaries last.

    stats.json and report.html (what a person reads first) go before any record file is
    replaced and come back after all are, so no moment shows new records beside old summaries.
    Each rename is atomic (same file system).
    """
    try:
        for name in _SUMMARY_FILES:
            (output / name).unlink(missing_ok=True)
        for name in _PROMOTION_ORDER:
            os.replace(staging / name, output / name)
    except OSError as error:
        raise CurateError(f"cannot write output {uri}: {error}") from error


def _remove_s3_outputs(output: str) -> None:
    for name in OUTPUT_FILES:
        bucket, key = storage.split_s3(storage.join(output, name))
        storage._s3_client().delete_object(Bucket=bucket, Key=key)  # idempotent: absent is fine


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

# The second pass reads pending records back and settles them in groups of this many.
_SETTLE_RECORDS = 2048
# Below this much input a worker pool costs more to start than it saves.
_POOL_MIN_BYTES = 16 << 20
_PENDING = {TRAIN_FILE: "train.pending", VAL_FILE: "val.pending"}
# Directories a run owns (see workdirs.py): its work files in TMPDIR, its S3 upload staging in
# TMPDIR, its staging inside a local output directory. The first two share _TEMP_PREFIX.
_TEMP_PREFIX = "llmft-curate-"
_WORK_PREFIX = "llmft-curate-work-"
_UPLOAD_PREFIX = "llmft-curate-upload-"
STAGING_PREFIX = ".curate-staging-"
_SUMMARY_FILES = (STATS_FILE, REPORT_FILE)
# The record files first, the summaries that describe them after.
_PROMOTION_ORDER = (TRAIN_FILE, VAL_FILE, REJECTS_FILE, *_SUMMARY_FILES)
_SIGNATURES = "signatures.u32"


@dataclass
class _Survivors:
    """The records the first pass accepted, in the order they were written to the pending files.

    Only a few numbers per record: the records themselves wait on disk until near-dedup and
    val decontamination have decided, so memory holds indexes, not data.
    """

    to_val: bytearray = field(default_factory=bytearray)
    source: array = field(default_factory=lambda: array("i"))
    line: array = field(default_factory=lambda: array("q"))
    format: bytearray = field(default_factory=bytearray)
    ids: array = field(default_factory=lambda: array("Q"))  # the record id's 16 hex digits as a number
    prompt_chars: array = field(default_factory=lambda: array("q"))
    response_chars: array = field(default_factory=lambda: array("q"))
    pii: dict[int, Counter[str]] = field(default_factory=dict)  # only records with placeholders
    normalized: set[int] = field(default_factory=set)  # records with control characters replaced

    def __len__(self) -> int:
        return len(self.to_val)

    def record_id(self, index: int) -> str:
        return f"{self.ids[index]:016x}"


class _Pending(NamedTuple):
    """One record read back from a pending file."""

    index: int  # into _Survivors
    record: bytes  # the canonical JSON line
    original: bytes  # the input line, for rejects.jsonl
    words: bytes  # its word string (empty when no stage needs it)


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """Run the cyclic garbage collector rarely for a while, then restore its thresholds.

    The first pass allocates many short-lived containers (all freed by reference counting)
    while the exact-dedup index grows; at the default thresholds the collector scans that
    index again and again.
    """
    thresholds = gc.get_threshold()
    if thresholds[0]:  # 0: automatic collection is off, leave it so
        gc.set_threshold(max(thresholds[0], 100_000), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def _worker_count(config: CurateConfig) -> int:
    if config.workers:
        return config.workers
    local = [Path(uri) for uri in config.inputs if not storage.is_s3(uri)]
    small = len(local) == len(config.inputs) and sum(path.stat().st_size for path in local) < _POOL_MIN_BYTES
    return 1 if small else min(available_cpus(), MAX_AUTO_WORKERS)


class _Curation:
    """One run: the per-record stages, the batch stages, and the second pass over pending records.

    First pass: every line of the eval set and the inputs is screened (parsed, filtered,
    PII handled, checked against the eval set; see `screen.py`, in worker processes for
    large inputs), the eval set's n-grams are indexed, then exact dedup runs in input order.
    Survivors go to a pending file per split (the hash split is known from each record's
    content at once) with their MinHash signature and LSH band keys. Second pass: near
    duplicates are chosen over all survivors at once, val records are written (and, without
    an eval set, indexed), the training records are counted against the held-out index to
    drop its boilerplate n-grams, then train records are checked against it before they are
    written. So no train record is written before val and the boilerplate are known; curate
    writes the manifest only after all.
    """

    def __init__(self, config: CurateConfig, sink: _Sink, work: Path) -> None:
        self.config = config
        self.sink = sink
        self.work = work
        self.tallies: dict[str, SourceTally] = {}
        self.survivors = _Survivors()
        # identity digest -> (input index, line) of the record kept first.
        self.kept_at: dict[bytes, tuple[int, int]] = {}
        # eval content digest -> its line, to name the eval record an overlapping one matches.
        self.eval_lines: dict[bytes, int] | None = None
        self.eval_ngrams: NgramIndex | None = None
        self.val_ngrams: NgramIndex | None = None
        # Near-dedup and decontamination need every record first: decontamination tells
        # boilerplate from contamination by counting all training records, and without an eval
        # set its held-out data are the final val records. Without them each record is final
        # when the first pass accepts it.
        self.decontaminating = config.decontamination_ngram > 0 and (
            config.eval_set is not None or config.val_fraction > 0
        )
        self.deferred = config.near_dedup or self.decontaminating
        # Per survivor: whether it holds an n-gram of the held-out index (boilerplate included).
        self.holds_held_out = np.zeros(0, dtype=bool)
        self.boilerplate_limit: float | None = None
        self.boilerplate_ngrams = 0
        self.bands, self.rows = (0, 0)
        if config.near_dedup:
            self.bands, self.rows = lsh_params(config.near_dedup_threshold, config.near_dedup_num_perm)
        self.band_keys: list[np.ndarray] = []
        self.keyed = array("q")  # survivors that have shingles, in signature-file order
        self.near: NearDuplicates | None = None
        self._stack = ExitStack()
        with self._stack:

            def open_work_file(name: str) -> BinaryIO:
                return self._stack.enter_context(open(work / name, "wb"))

            self.pending = {split: open_work_file(name) for split, name in _PENDING.items()}
            self.signature_file = open_work_file(_SIGNATURES)
            # Keep the files open past this block; close_pending() closes them.
            self._stack = self._stack.pop_all()

    def close_pending(self) -> None:
        self._stack.close()

    def _settings(self, eval_set: bool) -> ScreenSettings:
        config = self.config
        return ScreenSettings(
            min_response_chars=config.min_response_chars,
            max_prompt_chars=config.max_prompt_chars,
            max_response_chars=config.max_response_chars,
            # The eval set is not quality-filtered (it is kept as given) but its PII is
            # treated like the inputs', so val.jsonl leaks nothing either.
            quality=None if eval_set else config.quality_settings(),
            pii=config.pii,
            val_fraction=0.0 if config.eval_set else config.val_fraction,
            # Near-dedup shingles and decontamination n-grams are both cut from the word strings.
            words=bool(config.decontamination_ngram) if eval_set else self.deferred,
            eval_set=config.eval_set,
            sketch=None
            if eval_set or not config.near_dedup
            else SketchSettings(config.near_dedup_shingle, config.near_dedup_num_perm, self.bands, self.rows),
        )

    # --- first pass --------------------------------------------------------------------

    def read_eval_set(self, uri: str) -> None:
        sink = self.sink
        self.eval_lines = {}
        tally = self.tallies[uri] = SourceTally(role="eval")
        log.info("curate: reading eval set %s", uri)
        settings = self._settings(eval_set=True)
        word_strings: list[bytes] = []
        names: list[str] = []
        for first, items, _ in iter_source(uri):
            tally.lines += len(items)
            for line, item in enumerate(items, start=first):
                result = screen(uri, line, item, settings, None)
                if isinstance(result, Refused):
                    self._refuse(uri, item, result, tally)
                    continue
                self.eval_lines.setdefault(result.content, line)
                if settings.words:
                    word_strings.append(result.words)
                    names.append(f"{result.digest.hex()[:16]} ({uri}:{line})")
                code = formats.FORMATS.index(result.format)
                sink.keep(
                    VAL_FILE, [result.record], [code], [result.prompt_chars], [result.response_chars], tally
                )
                sink.pii_found.update(result.found)
                sink.control_characters_replaced += result.controls > 0
        if settings.words:
            self.eval_ngrams = NgramIndex(self.config.decontamination_ngram)
            self.eval_ngrams.add(word_strings, names)
            log.info(
                "curate: eval set indexed: %d distinct %d-grams", len(self.eval_ngrams), self.eval_ngrams.n
            )

    def read_inputs(self, workers: int) -> None:
        config = self.config
        index_of = {uri: index for index, uri in enumerate(config.inputs)}
        with (
            _fewer_collections(),
            ScreenPool(workers, self._settings(eval_set=False), self.eval_lines, self.work) as pool,
        ):
            for uri, (first, items, _), screened in pool.map(self._input_blocks()):
                tally = self.tallies[uri]
                tally.lines += len(items)
                for refused in screened.refused:
                    self._refuse(uri, items[refused.line - first], refused, tally)
                self._take(index_of[uri], first, items, screened)
        for uri in config.inputs:
            tally = self.tallies[uri]
            rejected = sum(tally.rejected.values())
            log.info(
                "curate: %s: %d lines, %d passed the first pass, rejected %d",
                uri,
                tally.lines,
                tally.lines - rejected,
                rejected,
            )

    def _input_blocks(self) -> Iterator[tuple[str, Block]]:
        """Every input's blocks, one file after another."""
        for index, uri in enumerate(self.config.inputs):
            self.tallies[uri] = SourceTally(role="input")
            log.info("curate: reading %s (%d/%d)", uri, index + 1, len(self.config.inputs))
            for block in iter_source(uri):
                yield uri, block

    def _refuse(self, uri: str, item: Item, refused: Refused, tally: SourceTally) -> None:
        rejection = Rejection(refused.reason, refused.detail)
        self.sink.reject(uri, refused.line, rejection, item_text(item), tally)
        # A record rejected as pii counts what it held (pii="reject"); others carry nothing.
        self.sink.pii_found.update(refused.found)

    def _take(self, index: int, first: int, items: list[Item], chunk: ScreenedChunk) -> None:
        """The batch stage for one screened chunk, in input order: exact dedup."""
        config = self.config
        uri = config.inputs[index]
        tally = self.tallies[uri]
        kept_at = self.kept_at
        if not config.dedup:
            fresh = list(range(len(chunk.lines)))
        else:
            fresh = []
            for position, (line, digest) in enumerate(zip(chunk.lines, chunk.digests, strict=True)):
                original = kept_at.get(digest)
                if original is None:
                    kept_at[digest] = (index, line)
                    fresh.append(position)
                    continue
                kept_id = digest.hex()[:16]
                where = f"{config.inputs[original[0]]}:{original[1]}"
                rejection = Rejection(
                    "duplicate", f"duplicate of record {kept_id} kept from {where}", kept_id=kept_id
                )
                self.sink.reject(uri, line, rejection, item_text(items[line - first]), tally)
        if self.deferred:
            self._park(index, first, items, chunk, fresh)
            return
        # No second-pass stage configured: the records are final and go to their outputs at once.
        for position in fresh:
            if position in chunk.found:
                self.sink.pii_found.update(chunk.found[position])
        if chunk.normalized:
            self.sink.control_characters_replaced += len(set(chunk.normalized).intersection(fresh))
        for split, side in ((TRAIN_FILE, 0), (VAL_FILE, 1)):
            chosen = [position for position in fresh if chunk.to_val[position] == side]
            self.sink.keep(
                split,
                [chunk.records[position] for position in chosen],
                [chunk.formats[position] for position in chosen],
                [chunk.prompt_chars[position] for position in chosen],
                [chunk.response_chars[position] for position in chosen],
                tally,
            )

    def _park(
        self, index: int, first: int, items: list[Item], chunk: ScreenedChunk, fresh: list[int]
    ) -> None:
        """Write first-pass survivors to their split's pending file and remember their numbers."""
        survivors = self.survivors
        base = len(survivors)
        if self.config.near_dedup:
            # Signatures and band keys were computed while screening; keep the survivors' ones.
            slot = {position: number for number, position in enumerate(fresh)}
            rows = [row for row, position in enumerate(chunk.signed) if position in slot]
            if rows:
                self.signature_file.write(chunk.signatures[rows].tobytes())
                self.band_keys.append(chunk.band_keys[rows])
                self.keyed.extend(base + slot[chunk.signed[row]] for row in rows)
        pending: dict[str, list[bytes]] = {TRAIN_FILE: [], VAL_FILE: []}
        words = chunk.words
        normalized = set(chunk.normalized)
        for number, position in enumerate(fresh):
            line = chunk.lines[position]
            to_val = chunk.to_val[position]
            # Three lines per record: canonical record, original line, word string.
            pending[VAL_FILE if to_val else TRAIN_FILE] += (
                chunk.records[position],
                item_bytes(items[line - first]),
                words[position] if words else b"",
            )
            if position in chunk.found:
                survivors.pii[base + number] = chunk.found[position]
            if position in normalized:
                survivors.normalized.add(base + number)
            survivors.to_val.append(to_val)
            survivors.line.append(line)
            survivors.format.append(chunk.formats[position])
            survivors.ids.append(int.from_bytes(chunk.digests[position][:8], "big"))
            survivors.prompt_chars.append(chunk.prompt_chars[position])
            survivors.response_chars.append(chunk.response_chars[position])
        survivors.source.extend([index] * len(fresh))
        for split, lines in pending.items():
            if lines:
                self.pending[split].write(b"\n".join(lines) + b"\n")

    # --- second pass -------------------------------------------------------------------

    def second_pass(self) -> None:
        config = self.config
        if not self.deferred:
            return
        if config.near_dedup:
            self.near = self._near_duplicates()
        # Without an eval set the split's val records are the held-out data: train records
        # must not share a passage with them.
        if self.eval_lines is None and self.decontaminating and any(self.survivors.to_val):
            self.val_ngrams = NgramIndex(config.decontamination_ngram)
        self._settle_split(VAL_FILE)
        if self.val_ngrams is not None:
            log.info("curate: val indexed: %d distinct %d-grams", len(self.val_ngrams), self.val_ngrams.n)
        if self.held_out is not None:
            self._drop_boilerplate(self.held_out)
        self._settle_split(TRAIN_FILE)

    @property
    def held_out(self) -> NgramIndex | None:
        """The index training records are decontaminated against: the eval set's or val's."""
        return self.eval_ngrams if self.eval_ngrams is not None else self.val_ngrams

    def _drop_boilerplate(self, held_out: NgramIndex) -> None:
        """Count the training records holding each held-out n-gram; stop matching the common ones.

        The training records are the train side's first-pass survivors (distinct after exact
        dedup). Which of them hold some held-out n-gram is remembered: the matching pass
        hashes only those.
        """
        self.holds_held_out = np.zeros(len(self.survivors), dtype=bool)
        training_records = 0
        for entries in self._pending_groups(TRAIN_FILE):
            holding = held_out.count_holders([entry.words for entry in entries])
            self.holds_held_out[[entry.index for entry in entries]] = holding
            training_records += len(entries)
        self.boilerplate_limit = self.config.boilerplate_limit(training_records)
        self.boilerplate_ngrams = held_out.drop_common(self.boilerplate_limit)
        log.info(
            "curate: %d held-out %d-grams are boilerplate (held by more than %g of %d training records, "
            "or overlapping one that is) and do not count as contamination",
            self.boilerplate_ngrams,
            held_out.n,
            self.boilerplate_limit,
            training_records,
        )

    def _near_duplicates(self) -> NearDuplicates:
        """Near-duplicate decisions for every survivor (kept_by indexes survivors)."""
        count = len(self.survivors)
        kept_by = np.full(count, -1, dtype=np.int64)
        similarity = np.zeros(count, dtype=np.float32)
        keyed = np.frombuffer(self.keyed, dtype=np.int64)
        if not len(keyed):
            return NearDuplicates(kept_by, similarity, candidate_pairs=0, similar_pairs=0)
        log.info("curate: near-dedup of %d records (%d bands x %d rows)", len(keyed), self.bands, self.rows)
        shape = (len(keyed), self.config.near_dedup_num_perm)
        signatures = np.memmap(self.work / _SIGNATURES, dtype=np.uint32, mode="r", shape=shape)
        ids = np.frombuffer(self.survivors.ids, dtype=np.uint64)[keyed]
        # Rank by record id (content), not position: which record of a group is kept does not
        # depend on the input order.
        ranks = np.empty(len(keyed), dtype=np.int64)
        ranks[np.lexsort((keyed, ids))] = np.arange(len(keyed))
        local = select_near_duplicates(
            np.concatenate(self.band_keys), signatures, ranks, self.config.near_dedup_threshold
        )
        del signatures
        removed = np.flatnonzero(local.kept_by >= 0)
        kept_by[keyed[removed]] = keyed[local.kept_by[removed]]
        similarity[keyed[removed]] = local.similarity[removed]
        return NearDuplicates(kept_by, similarity, local.candidate_pairs, local.similar_pairs)

    def _pending_groups(self, file_name: str) -> Iterator[list[_Pending]]:
        """One split's pending records, in order, in groups of _SETTLE_RECORDS."""
        wanted = int(file_name == VAL_FILE)
        members = np.flatnonzero(np.frombuffer(self.survivors.to_val, dtype=np.uint8) == wanted).tolist()
        with (
            open(self.work / _PENDING[file_name], "rb") as pending,
            tqdm(total=len(members), unit="rec", desc=file_name, disable=None, leave=False) as bar,
        ):
            for start in range(0, len(members), _SETTLE_RECORDS):
                group = members[start : start + _SETTLE_RECORDS]
                # Three lines per record (see _park): canonical record, original line, word string.
                yield [
                    _Pending(index, pending.readline()[:-1], pending.readline()[:-1], pending.readline()[:-1])
                    for index in group
                ]
                bar.update(len(group))

    def _settle_split(self, file_name: str) -> None:
        """Read one split's pending records in order and keep or reject each."""
        for entries in self._pending_groups(file_name):
            self._settle(file_name, entries)

    def _settle(self, file_name: str, entries: list[_Pending]) -> None:
        config, survivors, near = self.config, self.survivors, self.near
        alive: list[_Pending] = []
        for entry in entries:
            if near is not None and near.kept_by[entry.index] >= 0:
                kept = int(near.kept_by[entry.index])
                kept_id = survivors.record_id(kept)
                rejection = Rejection(
                    "near_duplicate",
                    f"near duplicate (estimated Jaccard similarity {near.similarity[entry.index]:.2f} >= "
                    f"{config.near_dedup_threshold:g}) of record {kept_id} kept from {self._where(kept)}",
                    kept_id=kept_id,
                )
                self._reject(entry, rejection)
                continue
            alive.append(entry)
        held_out = self.held_out
        if file_name == TRAIN_FILE and held_out is not None:
            reason, label = (
                ("contaminated", "eval") if self.eval_ngrams is not None else ("val_contaminated", "val")
            )
            # Only records holding some held-out n-gram can share a non-boilerplate one.
            suspects = [entry for entry in alive if self.holds_held_out[entry.index]]
            matches = held_out.match([entry.words for entry in suspects])
            shared = {entry.index: match for entry, match in zip(suspects, matches, strict=True)}
            checked = []
            for entry in alive:
                overlap = shared.get(entry.index)
                if overlap is None:
                    checked.append(entry)
                    continue
                rejection = Rejection(
                    reason,
                    f"shares the {config.decontamination_ngram}-word sequence {overlap[0]!r} with {label} "
                    f"record {overlap[1]}",
                )
                self._reject(entry, rejection)
            alive = checked
        # One `keep` per run of records from the same input (survivors are in input order).
        for source, run in itertools.groupby(alive, key=lambda entry: survivors.source[entry.index]):
            entries = list(run)
            self.sink.keep(
                file_name,
                [entry.record for entry in entries],
                [survivors.format[entry.index] for entry in entries],
                [survivors.prompt_chars[entry.index] for entry in entries],
                [survivors.response_chars[entry.index] for entry in entries],
                self.tallies[config.inputs[source]],
            )
        for entry in alive:
            if entry.index in survivors.pii:
                self.sink.pii_found.update(survivors.pii[entry.index])
            if entry.index in survivors.normalized:
                self.sink.control_characters_replaced += 1
        if file_name == VAL_FILE and self.val_ngrams is not None:
            names = [f"{survivors.record_id(entry.index)} ({self._where(entry.index)})" for entry in alive]
            self.val_ngrams.add([entry.words for entry in alive], names)

    def _where(self, index: int) -> str:
        return f"{self.config.inputs[self.survivors.source[index]]}:{self.survivors.line[index]}"

    def _reject(self, entry: _Pending, rejection: Rejection) -> None:
        uri = self.config.inputs[self.survivors.source[entry.index]]
        text = entry.original.decode("utf-8", errors="replace")
        self.sink.reject(uri, self.survivors.line[entry.index], rejection, text, self.tallies[uri])

    def stage_details(self) -> dict[str, Any]:
        """stats.json's near_dedup and decontamination sections."""
        config = self.config
        near_dedup: dict[str, Any] | None = None
        if self.near is not None:
            near_dedup = {
                "shingle_words": config.near_dedup_shingle,
                "num_perm": config.near_dedup_num_perm,
                "threshold": config.near_dedup_threshold,
                "bands": self.bands,
                "rows": self.rows,
                "records_compared": len(self.keyed),
                "candidate_pairs": self.near.candidate_pairs,
                "similar_pairs": self.near.similar_pairs,
                "removed": self.near.removed,
            }
        held_out = self.held_out
        return {
            "near_dedup": near_dedup,
            "decontamination": {
                "ngram": config.decontamination_ngram,
                "held_out": "eval_set"
                if self.eval_ngrams is not None
                else "val"
                if self.val_ngrams is not None
                else None,
                # Distinct held-out n-grams matched against, and those left out as boilerplate.
                "held_out_ngrams": len(held_out) if held_out is not None else 0,
                "boilerplate_ngrams": self.boilerplate_ngrams,
                "boilerplate_limit": self.boilerplate_limit,
            },
        }


@contextmanager
def _room_to_write(directory: Path) -> Iterator[None]:
    """Turn running out of disk space into a CurateError that says where curate writes."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise CurateError(
            f"curate ran out of disk space ({error}). It writes its outputs to {directory} and, while it "
            f"runs, work files to {tempfile.gettempdir()} (the records waiting for the second pass take "
            "about twice the kept data): free space there, or point TMPDIR at a local directory with room"
        ) from error


def _curate_into(config: CurateConfig, directory: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Read every source and write train/val/rejects/stats/report into `directory`.

    Returns the stats and the sha256 of the record files.
    """
    try:
        sink = _Sink(directory)
    except OSError as error:
        raise CurateError(f"output {config.output} is not writable: {error}") from error
    with _room_to_write(directory):
        try:
            # Pending records, signatures and the records workers hand back live beside nothing
            # the user sees, and go in any case.
            with workdirs.owned_dir(_WORK_PREFIX) as work:
                run = _Curation(config, sink, work)
                try:
                    if config.eval_set:
                        run.read_eval_set(config.eval_set)
                    run.read_inputs(_worker_count(config))
                finally:
                    run.close_pending()
                run.second_pass()
        finally:
            sink.close()

        stats = build_stats(config, run.tallies, sink, run.stage_details())
        check_accounting(stats)
        stats_text = jsonout.dumps(stats, indent=2, ensure_ascii=False) + "\n"
        (directory / STATS_FILE).write_text(stats_text, encoding="utf-8")
        page = render_report(stats, histogram(sink.response_lengths), sink.report_examples())
        (directory / REPORT_FILE).write_text(page, encoding="utf-8")
    return stats, sink.sha256()


def curate(config: CurateConfig) -> CurateResult:
    """Run the curate step; raise CurateError for problems that are not about one record."""
    if not config.output.strip():
        raise CurateError("curate needs an output directory (local path or s3:// URI); output is empty")
    for uri in [*config.inputs, *([config.eval_set] if config.eval_set else [])]:
        _check_source(uri)
    storage.check_apart(
        {"output": config.output},
        {**{f"inputs[{n}]": uri for n, uri in enumerate(config.inputs)}, "eval_set": config.eval_set},
    )
    log.info("curate: %d input file(s) -> %s", len(config.inputs), config.output)
    with workdirs.exit_cleanly_on_termination():
        # Work directories of runs killed before they could clean up (up to a few times the input).
        workdirs.remove_stale(Path(tempfile.gettempdir()), _TEMP_PREFIX)
        if storage.is_s3(config.output):
            stats, manifest = _curate_to_s3(config)
        else:
            stats, manifest = _curate_to_local(config)

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
