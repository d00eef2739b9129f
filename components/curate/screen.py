"""The per-record stages of curate, as pure functions that worker processes can run.

`screen` takes one input line (or Parquet row) through parse, normalization, length
limits, quality filters, PII and the exact eval-overlap check, and returns either a
`Screened` record (with everything the later stages need: its canonical JSON line, dedup
digest, split side and word string) or a `Refused` one (reason and detail). Neither
carries the original line back: the caller still has it, and not sending it halves what
crosses between processes.
Nothing here depends on other records, so lines can be screened in any process, in
chunks; `ScreenPool` does that on several CPU cores and hands results back in input order,
so the output is the same whatever the number of workers.
"""

from __future__ import annotations

import codecs
import gc
import hashlib
import json
import multiprocessing
import multiprocessing.pool
import os
import signal
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from components.curate import formats, pii
from components.curate.decontaminate import record_words
from components.curate.filters import QualitySettings, quality_problem
from components.curate.formats import ParsedRecord, Rejection
from components.curate.minhash import MinHasher, band_keys
from components.curate.ngrams import ngram_hashes

_quote = json.encoder.encode_basestring  # json's own escaper for ensure_ascii=False

# An input line (bytes, without its line end) or a decoded Parquet row.
Item = bytes | dict[str, Any]


class LineRange(NamedTuple):
    """Where a block of whole lines lies in a local, uncompressed file.

    A screening worker reads its block there rather than receiving it through a pipe, where
    pickling and copying the lines cost the main process and the worker CPU time (the
    screened records still come back through the pipe: the main process writes them).
    """

    path: str
    offset: int
    size: int

    def lines(self) -> list[bytes]:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            block = handle.read(self.size)
        if len(block) != self.size:
            raise RuntimeError(
                f"input {self.path} changed while curate read it: "
                f"{self.size} bytes at offset {self.offset} are gone"
            )
        return split_block(block, file_start=self.offset == 0)


def split_block(block: bytes, file_start: bool) -> list[bytes]:
    """A block of whole lines as lines without their line ends."""
    lines = block.split(b"\n")
    if not lines[-1]:
        lines.pop()  # what follows the final newline
    if file_start:
        # Editors on Windows start files with a UTF-8 byte order mark; JSON does not allow one.
        lines[0] = lines[0].removeprefix(codecs.BOM_UTF8)
    return lines


# Consecutive items of a source: (number of the first one, 1-based; the items; where they
# lie in a local uncompressed file, else None).
Block = tuple[int, list[Item], LineRange | None]
# What a worker screens: (source URI, first item's number, the items or where to read them).
Chunk = tuple[str, int, list[Item] | LineRange]


@dataclass(frozen=True)
class SketchSettings:
    """Near-dedup's MinHash settings: shingle words, permutations, and LSH bands x rows."""

    shingle: int
    num_perm: int
    bands: int
    rows: int


@dataclass(frozen=True)
class ScreenSettings:
    """The CurateConfig fields the per-record stages use (picklable, for worker processes)."""

    min_response_chars: int
    max_prompt_chars: int
    max_response_chars: int
    quality: QualitySettings | None  # None: the eval set, which is kept as given
    pii: str
    val_fraction: float  # 0 with an eval set: no split
    words: bool  # compute word strings (near-dedup or n-gram decontamination needs them)
    eval_set: str | None  # named in eval_overlap details
    sketch: SketchSettings | None  # near-dedup on: compute each record's signature and band keys


class Screened(NamedTuple):
    """A record that passed every per-record stage."""

    line: int
    record: bytes  # the canonical JSON line (`Record.to_json`), UTF-8: encoded here, in the worker
    digest: bytes  # `formats.identity_digest`: the exact-dedup key; its hex prefix is the id
    content: bytes  # `formats.content_digest`: the split and eval-overlap key
    to_val: bool
    format: str
    prompt_chars: int
    response_chars: int
    system: str
    # PII placeholders written into it; None, not an empty Counter, when there are none:
    # unpickling empty Counters was most of the cost of sending results between processes.
    found: Counter[str] | None
    words: bytes  # `decontaminate.record_words`, or b"" when not asked for
    controls: int  # runs of control characters normalization replaced by a space


@dataclass
class ScreenedChunk:
    """A chunk's outcome in columns: a few large objects cross between processes, not one per record.

    Screened records are listed in input order; `found` and the MinHash columns refer to them
    by position.
    """

    refused: list[Refused]
    lines: list[int]  # line numbers
    records: list[bytes]  # canonical JSON lines, UTF-8
    digests: list[bytes]  # identity digests (exact-dedup keys)
    to_val: bytes  # 1 for a record the split sends to val
    formats: bytes  # index into formats.FORMATS
    prompt_chars: list[int]
    response_chars: list[int]
    found: dict[int, Counter[str]]  # PII placeholders written, for the records that have any
    words: list[bytes]  # word strings (empty when no stage needs them)
    signed: list[int]  # positions of the records with a MinHash signature (near-dedup on, 1+ word)
    signatures: np.ndarray  # (len(signed), num_perm) uint32
    band_keys: np.ndarray  # (len(signed), bands) uint64, salted with the system prompt
    # Positions of the records in which normalization replaced control characters by a space.
    normalized: list[int] = field(default_factory=list)
    # Set by a worker process instead of `records`: the file in the spool directory holding them,
    # one per line; `ScreenPool.map` reads it back and removes it.
    spooled: str | None = None


class Refused(NamedTuple):
    """A line rejected by a per-record stage (plain fields: exceptions do not pickle well)."""

    line: int
    reason: str
    detail: str
    found: Counter[str] | None  # PII matches of a record rejected as pii, else None


def parse_item(item: Item) -> ParsedRecord:
    return formats.parse_line(item) if isinstance(item, bytes) else formats.parse_object(item)


def item_text(item: Item) -> str:
    """The original line as text for rejects.jsonl (undecodable bytes become U+FFFD)."""
    if isinstance(item, bytes):
        return item.rstrip(b"\r\n").decode("utf-8", errors="replace")
    return json.dumps(item, ensure_ascii=False, default=str)


def item_bytes(item: Item) -> bytes:
    """The original line (without its line ending), or the Parquet row as JSON, as bytes."""
    if isinstance(item, bytes):
        return item.rstrip(b"\r\n")
    return item_text(item).encode("utf-8", errors="replace")


def escape_normalized(text: str) -> str:
    """`text` escaped for a JSON string as json.dumps(ensure_ascii=False) does, for normalized text.

    Normalized text (`formats.normalize_text`) holds no control character but \\n and \\t, so
    four replacements escape it; they take half the time of json's general escaper, which
    looks at every character. Tests compare the two.
    """
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")


def record_line(parsed: ParsedRecord, source: str, line: int, digest: bytes | None = None) -> str:
    """The canonical record as `Record.to_json` writes it (same keys, order and escaping).

    Built directly because dataclasses.asdict's deep copy and json.dumps' generic walk were a
    measurable share of curate's time; `digest` is the record's `identity_digest` when known.
    """
    record_id = (digest or formats.identity_digest(parsed)).hex()[:16]
    # json.dumps(fields, ensure_ascii=False) assembled by hand; the source is a path or URI, not
    # normalized text, so it takes json's own escaper.
    return (
        f'{{"id": "{record_id}", "prompt": "{escape_normalized(parsed.prompt)}", '
        f'"response": "{escape_normalized(parsed.response)}", '
        f'"system": "{escape_normalized(parsed.system)}", "source": {_quote(source)}, "line": {line}}}'
    )


def pii_detail(found: Counter[str]) -> str:
    return "found " + ", ".join(f"{kind}={found[kind]}" for kind in pii.PII_TYPES if found[kind])


def screen(
    uri: str, line: int, item: Item, settings: ScreenSettings, eval_lines: dict[bytes, int] | None
) -> Screened | Refused:
    """One line through the per-record stages; `eval_lines` maps eval content digests to eval lines."""
    found: Counter[str] | None = None
    try:
        parsed = parse_item(item)
        formats.check_lengths(
            parsed, settings.min_response_chars, settings.max_prompt_chars, settings.max_response_chars
        )
        if settings.quality is not None:
            problem = quality_problem(parsed, settings.quality)
            if problem is not None:
                raise Rejection(*problem)
        if settings.pii != "off":
            redacted, found = pii.redact_record(parsed)
            if found and settings.pii == "reject":
                raise Rejection("pii", pii_detail(found))
            parsed = redacted
        digest, content = formats.digests(parsed)
        if eval_lines is not None:
            eval_line = eval_lines.get(content)
            if eval_line is not None:
                raise Rejection(
                    "eval_overlap", f"prompt and response equal eval record {settings.eval_set}:{eval_line}"
                )
    except Rejection as rejection:
        # A record rejected as pii reports what it held; others report nothing.
        return Refused(line, rejection.reason, rejection.detail, found or None)
    # Positional: a NamedTuple built from keywords costs twice as much, once per record.
    return Screened(
        line,
        record_line(parsed, uri, line, digest).encode("utf-8"),
        digest,
        content,
        formats.in_validation(content, settings.val_fraction),
        parsed.format,
        len(parsed.prompt),
        len(parsed.response),
        parsed.system,
        found or None,
        record_words(parsed.prompt, parsed.response) if settings.words else b"",
        parsed.controls,
    )


# --- signatures and worker processes --------------------------------------------------


class Sketcher:
    """Near-dedup's per-record work, done for a chunk at once: MinHash signatures and band keys."""

    def __init__(self, settings: SketchSettings) -> None:
        self.settings = settings
        self.hasher = MinHasher(settings.num_perm)
        self._salts: dict[str, int] = {}

    def _salt(self, system: str) -> int:
        # Band keys carry the system prompt's hash: only records with equal system prompts are compared.
        salt = self._salts.get(system)
        if salt is None:
            digest = hashlib.blake2b(system.encode("utf-8"), digest_size=8).digest()
            salt = self._salts[system] = int.from_bytes(digest, "little")
        return salt

    def sign(
        self, words: Sequence[bytes], systems: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Signatures, band keys, and which records have a shingle, for word strings and system prompts."""
        settings = self.settings
        hashes, offsets = ngram_hashes(words, settings.shingle, whole_if_shorter=True)
        signatures = self.hasher.signatures(hashes, offsets)
        salts = np.array([self._salt(system) for system in systems], dtype=np.uint64)
        # A record without a word has no shingle; its empty signature would match every other one.
        return (
            signatures,
            band_keys(signatures, settings.bands, settings.rows, salts),
            offsets[1:] > offsets[:-1],
        )

    def sketch(self, records: list[Screened]) -> tuple[list[int], np.ndarray, np.ndarray]:
        """(positions of the records with a shingle, their signatures, their band keys)."""
        signatures, keys, signed = self.sign(
            [record.words for record in records], [record.system for record in records]
        )
        return np.flatnonzero(signed).tolist(), signatures[signed], keys[signed]


def screen_chunk(
    chunk: Chunk, settings: ScreenSettings, eval_lines: dict[bytes, int] | None, sketcher: Sketcher | None
) -> ScreenedChunk:
    uri, first, payload = chunk
    items = payload.lines() if isinstance(payload, LineRange) else payload
    refused: list[Refused] = []
    screened: list[Screened] = []
    # The columns are filled as records pass: one loop, not one list comprehension per column.
    lines: list[int] = []
    records: list[bytes] = []
    digests: list[bytes] = []
    to_val = bytearray()
    format_codes = bytearray()
    prompt_chars: list[int] = []
    response_chars: list[int] = []
    found: dict[int, Counter[str]] = {}
    words: list[bytes] = []
    normalized: list[int] = []
    format_code = {name: code for code, name in enumerate(formats.FORMATS)}
    for line, item in enumerate(items, start=first):
        try:
            result = screen(uri, line, item, settings, eval_lines)
        except Exception as error:
            # A bug, not bad data (bad data is a Refused): name the line, which no traceback from a
            # worker process would, so it can be reproduced.
            raise RuntimeError(
                f"curate failed on {uri} line {line}: {type(error).__name__}: {error}"
            ) from error
        if isinstance(result, Refused):
            refused.append(result)
            continue
        if result.found:
            found[len(lines)] = result.found
        if result.controls:
            normalized.append(len(lines))
        screened.append(result)
        lines.append(line)
        records.append(result.record)
        digests.append(result.digest)
        to_val.append(result.to_val)
        format_codes.append(format_code[result.format])
        prompt_chars.append(result.prompt_chars)
        response_chars.append(result.response_chars)
        words.append(result.words)
    if sketcher is not None and screened:
        signed, signatures, keys = sketcher.sketch(screened)
    else:
        signed, signatures, keys = [], np.zeros((0, 0), np.uint32), np.zeros((0, 0), np.uint64)
    return ScreenedChunk(
        refused=refused,
        lines=lines,
        records=records,
        digests=digests,
        to_val=bytes(to_val),
        formats=bytes(format_codes),
        prompt_chars=prompt_chars,
        response_chars=response_chars,
        found=found,
        words=words if settings.words else [],
        signed=signed,
        signatures=signatures,
        band_keys=keys,
        normalized=normalized,
    )


_worker_state: tuple[ScreenSettings, dict[bytes, int] | None, Sketcher | None, Path] | None = None


def _init_worker(settings: ScreenSettings, eval_lines: dict[bytes, int] | None, spool: Path) -> None:
    global _worker_state
    # Ctrl-C reaches the whole process group: the parent alone handles it (and ends the pool);
    # a worker printing its own KeyboardInterrupt traceback would bury the parent's one line.
    # Forked workers also inherit the parent's SIGTERM handler: theirs is the default, so
    # Pool.terminate ends them at once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Screening makes no reference cycles (its objects die by reference counting), so collections
    # triggered by its many short-lived dicts and lists only cost time: collect rarely, and never
    # scan what the worker inherited from its parent.
    gc.freeze()
    gc.set_threshold(100_000, 50, 50)
    _worker_state = (settings, eval_lines, Sketcher(settings.sketch) if settings.sketch else None, spool)


def _screen_chunk(chunk: Chunk, number: int) -> ScreenedChunk:
    assert _worker_state is not None, "worker not initialized"
    settings, eval_lines, sketcher, spool = _worker_state
    screened = screen_chunk(chunk, settings, eval_lines, sketcher)
    if screened.records:
        # The canonical lines are most of a chunk's outcome. Through a file they cost both
        # processes a copy; through the pool's pipe, pickling, many small reads and waking the
        # main process's result thread cost more CPU time than that.
        path = spool / f"records-{number}"
        path.write_bytes(b"\n".join(screened.records))
        screened.records = []
        screened.spooled = str(path)
    return screened


def _unspool(chunk: ScreenedChunk) -> ScreenedChunk:
    """Read back (and remove) the record lines a worker left in a file."""
    if chunk.spooled is not None:
        path = Path(chunk.spooled)
        # Canonical lines are JSON, whose strings escape every line end: b"\n" separates them.
        chunk.records = path.read_bytes().split(b"\n")
        path.unlink()
        chunk.spooled = None
    return chunk


# Past a few workers the main process (dedup, writing) is the bottleneck; more only cost memory.
MAX_AUTO_WORKERS = 8
_CGROUP_V2_CPU = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_CPU = Path("/sys/fs/cgroup/cpu")


def _cgroup_cpu_limit() -> float | None:
    """The container's CPU limit in cores (a Kubernetes `limits.cpu`), or None when unlimited."""
    try:
        if _CGROUP_V2_CPU.exists():
            quota, period = _CGROUP_V2_CPU.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = int((_CGROUP_V1_CPU / "cpu.cfs_quota_us").read_text())
        period = int((_CGROUP_V1_CPU / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 else None


def available_cpus() -> int:
    """CPU cores this process may use: its affinity, capped by a container CPU limit.

    A pod on a 96-core node with a 2-CPU limit sees 96 cores in its affinity; starting 96
    workers there would only add memory and throttling.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(cores, int(limit))) if limit else cores


class ScreenPool:
    """Screens chunks of lines in `workers` processes (1: in this process), results in input order.

    At most two chunks per worker are in flight, so memory holds a few chunks, not a file.
    Workers hand each chunk's record lines back through a file in `spool`, a private
    directory (a run's work directory); `map` removes each file once read, and files of
    chunks still in flight when a run fails go with that directory.
    Workers are forked: they start at once with the settings in memory, and unlike "spawn"
    they never re-import the caller's main module (a script without a __main__ guard would
    run again in each worker). They only compute; they take no lock the parent may hold.
    """

    def __init__(
        self, workers: int, settings: ScreenSettings, eval_lines: dict[bytes, int] | None, spool: Path
    ) -> None:
        self.workers = workers
        self.settings = settings
        self.eval_lines = eval_lines
        self._pool: Any = None
        if workers > 1:
            context = multiprocessing.get_context("fork")
            self._pool = context.Pool(
                workers, initializer=_init_worker, initargs=(settings, eval_lines, spool)
            )

    def __enter__(self) -> ScreenPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self._pool is None:
            return
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt | SystemExit):
            self._abandon()
            return
        self._pool.terminate()
        self._pool.join()

    def _abandon(self) -> None:
        """Kill the workers and leave the pool's handler threads (daemons) blocked.

        A signal sent to the whole process group (a terminal's Ctrl-C, a pod's SIGTERM) may
        have killed a worker while it held the result queue's write lock: Pool.terminate puts a
        sentinel through that queue and would wait for the lock forever (CPython's Pool cannot
        recover a lock held by a dead worker, gh-66587). So the workers are killed here and the
        pool's own finalizer, which would run the same terminate at exit, is cancelled.
        """
        # CPython's Pool internals: stop the thread that replaces dead workers, then kill them.
        self._pool._worker_handler._state = multiprocessing.pool.TERMINATE
        self._pool._worker_handler.join(timeout=5)
        workers = list(self._pool._pool)
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.join(timeout=5)
        self._pool._terminate.cancel()  # the multiprocessing.util.Finalize that Pool.terminate calls

    def map(self, blocks: Iterable[tuple[str, Block]]) -> Iterator[tuple[str, Block, ScreenedChunk]]:
        """Each (source URI, block) with its outcome, in order.

        One stream for all sources: the workers go on with the next file while the last
        blocks of the previous one are still being screened.
        """
        if self._pool is None:
            sketcher = Sketcher(self.settings.sketch) if self.settings.sketch else None
            for uri, block in blocks:
                first, items, _ = block
                yield uri, block, screen_chunk((uri, first, items), self.settings, self.eval_lines, sketcher)
            return
        in_flight: deque[tuple[str, Block, Any]] = deque()
        for number, (uri, block) in enumerate(blocks):
            first, items, where = block
            chunk: Chunk = (uri, first, items if where is None else where)
            in_flight.append((uri, block, self._pool.apply_async(_screen_chunk, (chunk, number))))
            if len(in_flight) >= 2 * self.workers:
                source, done, result = in_flight.popleft()
                yield source, done, _unspool(result.get())
        while in_flight:
            source, done, result = in_flight.popleft()
            yield source, done, _unspool(result.get())
