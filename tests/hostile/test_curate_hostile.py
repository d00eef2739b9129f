"""Hostile input and faults for curate: one bad line never stops a run, nothing half-done looks done.

- a line nested 100,000 levels deep is one rejected line (`too_deep`), in this process and in
  the screening workers;
- duplicate JSON keys are rejected (`duplicate_key`, naming the key), never silently resolved;
- a NUL or other control character inside text becomes a space (never glues words) and is
  counted in stats.json;
- a curate killed with SIGKILL over an earlier complete output leaves either the old files or
  the new ones beside its stats.json, never a mix, and no manifest;
- SIGINT prints one line and exits 130, SIGTERM exits 143, both leave no work directory;
- work directories of killed runs are removed by the next run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components import storage
from components.curate import formats
from components.curate.curate import CurateConfig, curate

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"input": "What is 2+2?", "output": "4"}
DEEP = 100_000
# Bounded waits for the subprocess tests (seconds).
START_WAIT = 120
EXIT_WAIT = 60


def _write(path: Path, lines: list[Any]) -> Path:
    path.write_bytes(
        b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    )
    return path


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _assert_adds_up(out: Path, input_lines: int) -> dict[str, Any]:
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    rejects = _jsonl(out / "rejects.jsonl")
    train, val = _jsonl(out / "train.jsonl"), _jsonl(out / "val.jsonl")
    assert stats["input_records"] == input_lines == len(train) + len(val) + len(rejects)
    assert stats["kept"] == {"train": len(train), "val": len(val)}
    assert stats["rejected"]["by_reason"] == dict(Counter(reject["reason"] for reject in rejects))
    assert (out / storage.MANIFEST_NAME).is_file()
    return stats


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A TMPDIR of this test's own, for this process (tempfile caches it) and its children."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


# --- item 6: deep nesting ---------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_deeply_nested_line_is_one_reject_with_its_line(tmp_path: Path, workers: int) -> None:
    deep = b'{"input": ' + b"[" * DEEP + b"]" * DEEP + b', "output": "x"}'
    deep_object = b'{"input": "q", "output": "a", "extra": ' + b'{"k": ' * DEEP + b"1" + b"}" * DEEP + b"}"
    lines = [GOOD, deep, {"prompt": "Name a colour", "completion": "Blue"}, deep_object]
    source = _write(tmp_path / "data.jsonl", lines)
    out = tmp_path / "out"
    result = curate(CurateConfig(inputs=[str(source)], output=str(out), val_fraction=0.0, workers=workers))
    assert result.rejected_by_reason == {"too_deep": 2}
    _assert_adds_up(out, len(lines))
    rejects = {reject["line"]: reject for reject in _jsonl(out / "rejects.jsonl")}
    assert sorted(rejects) == [2, 4]
    assert all(reject["reason"] == "too_deep" and reject["stage"] == "parse" for reject in rejects.values())
    assert "nested" in rejects[2]["detail"]
    assert rejects[2]["truncated"] is True  # the 200 kB line is cut in rejects.jsonl


def test_too_deep_is_a_rejection_for_the_parser() -> None:
    with pytest.raises(formats.Rejection) as caught:
        formats.parse_line(b"[" * DEEP + b"]" * DEEP)
    assert caught.value.reason == "too_deep"


# --- item 7: duplicate keys and control characters ----------------------------------------


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('{"input": "q", "output": "first", "output": "second"}', "output"),
        ('{"input" : "q", "input":"q2", "output": "a"}', "input"),  # spacing does not hide it
        (
            '{"messages": [{"role": "user", "content": "q", "content": "q2"},'
            ' {"role": "assistant", "content": "a"}]}',
            "content",
        ),
        ('{"input": "q", "output": "a", "meta": {"x": 1, "x": 2}}', "x"),  # nested, even if ignored
        ('{"input": "he said \\":\\" ok", "output": "a", "output" : "b"}', "output"),
    ],
)
def test_duplicate_keys_are_rejected_naming_the_key(line: str, key: str) -> None:
    with pytest.raises(formats.Rejection) as caught:
        formats.parse_line(line.encode())
    assert caught.value.reason == "duplicate_key"
    assert repr(key) in caught.value.detail


def test_colons_and_quotes_in_text_are_no_duplicate() -> None:
    line = '{"input": "key \\"a\\": 1, \\"a\\": 2", "output": "time: 10:30"}'
    assert formats.parse_line(line.encode()).response == "time: 10:30"


def test_duplicate_keys_in_a_run_are_rejected_and_counted(tmp_path: Path) -> None:
    lines: list[Any] = [GOOD, b'{"input": "Capital of France?", "output": "Paris", "output": "Lyon"}']
    source = _write(tmp_path / "data.jsonl", lines)
    out = tmp_path / "out"
    result = curate(CurateConfig(inputs=[str(source)], output=str(out), val_fraction=0.0))
    assert result.rejected_by_reason == {"duplicate_key": 1}
    _assert_adds_up(out, len(lines))
    (reject,) = _jsonl(out / "rejects.jsonl")
    assert reject["line"] == 2 and "'output'" in reject["detail"]


def test_nul_and_control_characters_become_a_space_and_are_counted(tmp_path: Path) -> None:
    raw_nul = b'{"input": "hello\x00world", "output": "fine answer"}'  # a raw NUL byte in the string
    escaped = {"input": "tab\u0007bell", "output": "one\u0000\u0001two"}  # escaped controls
    lines: list[Any] = [GOOD, raw_nul, escaped]
    source = _write(tmp_path / "data.jsonl", lines)
    out = tmp_path / "out"
    curate(CurateConfig(inputs=[str(source)], output=str(out), val_fraction=0.0))
    stats = _assert_adds_up(out, len(lines))
    records = {record["line"]: record for record in _jsonl(out / "train.jsonl")}
    assert records[2]["prompt"] == "hello world"
    assert records[3]["prompt"] == "tab bell"
    assert records[3]["response"] == "one two"  # a run of controls is one space
    assert stats["normalization"] == {"control_characters_replaced": 2}


def test_normalize_text_replaces_control_runs_with_one_space() -> None:
    assert formats.normalize_text("a\x00b") == "a b"
    assert formats.normalize_text("a\x00\x1f\x7f\x85b") == "a b"
    assert formats.clean_text("x\x00y\x01\x02z") == ("x y z", 2)
    assert formats.clean_text("plain") == ("plain", 0)


# --- items 10 and 11: kills and interrupts -----------------------------------------------

_WORDS = [f"w{number}" for number in range(5000)]


def _big_input(path: Path, lines: int) -> Path:
    """Unique records with every other line malformed, so rejects.jsonl fills from the start."""
    rng = random.Random(13)
    with open(path, "w", encoding="utf-8") as handle:
        for number in range(lines):
            if number % 2:
                handle.write(f"not json {number}\n")
                continue
            prompt = " ".join(rng.choices(_WORDS, k=12))
            response = " ".join(rng.choices(_WORDS, k=20))
            handle.write(json.dumps({"input": prompt, "output": response}) + "\n")
    return path


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _stop_leftover_curate() -> Iterator[None]:
    """A test that fails midway must not leave its curate (and curate's workers) running."""
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate(timeout=EXIT_WAIT)


def _start_curate(source: Path, out: Path, tmp: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)}
    command = [sys.executable, "-m", "pipelines.cli", "curate", "--input", str(source), "--output", str(out)]
    process = subprocess.Popen(
        [*command, *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    _STARTED.append(process)
    return process


def _wait_for(condition, process: subprocess.Popen[bytes], what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + START_WAIT
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"curate ended (rc {process.returncode}) before {what}: {process.stderr.read()!r}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait(EXIT_WAIT)
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _rejects_growing(out: Path, since: float):  # type: ignore[no-untyped-def]
    """True once a rejects.jsonl under `out` (staged or final) is newer than `since` and not empty."""

    def check() -> bool:
        return any(
            path.stat().st_mtime > since and path.stat().st_size > 0 for path in out.rglob("rejects.jsonl")
        )

    return check


def _work_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("llmft-curate-*"))


def test_sigkill_over_a_complete_output_never_mixes_old_and_new(tmp_path: Path, private_tmp: Path) -> None:
    small = _write(tmp_path / "small.jsonl", [GOOD, {"input": "Name a colour", "output": "Blue"}])
    out = tmp_path / "out"
    curate(CurateConfig(inputs=[str(small)], output=str(out), val_fraction=0.0))
    old_stats = (out / "stats.json").read_bytes()
    big = _big_input(tmp_path / "big.jsonl", 300_000)

    started = time.time()
    time.sleep(0.05)  # mtimes after this are the new run's
    process = _start_curate(big, out, private_tmp, "--workers", "1")
    _wait_for(_rejects_growing(out, started), process, "curate wrote rejects")
    assert process.poll() is None, "curate finished before it could be killed: give it more input"
    process.kill()
    process.wait(EXIT_WAIT)

    assert not (out / storage.MANIFEST_NAME).exists(), "a killed run's directory must not look complete"
    visible = {path.name for path in out.iterdir() if not path.name.startswith(".")}
    # Whatever a person reads beside stats.json belongs to the run that wrote that stats.json.
    assert (out / "stats.json").read_bytes() == old_stats
    stats = json.loads(old_stats)
    assert len(_jsonl(out / "train.jsonl")) == stats["kept"]["train"]
    assert len(_jsonl(out / "rejects.jsonl")) == stats["rejected"]["total"]
    assert visible <= {"train.jsonl", "val.jsonl", "rejects.jsonl", "stats.json", "report.html"}
    assert _work_dirs(private_tmp), "SIGKILL cannot be caught: its work directory stays until the next run"

    # The next run finishes the directory and removes what the killed one left.
    result = curate(CurateConfig(inputs=[str(small)], output=str(out), val_fraction=0.0))
    assert result.train_records == 2
    assert sorted(path.name for path in out.iterdir()) == sorted(
        ["train.jsonl", "val.jsonl", "rejects.jsonl", "stats.json", "report.html", storage.MANIFEST_NAME]
    )
    storage.require_complete(str(out))
    assert _work_dirs(private_tmp) == [], "the killed run's work directory must be removed"


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_prints_one_line_and_leaves_nothing(
    tmp_path: Path, private_tmp: Path, signum: int, code: int
) -> None:
    big = _big_input(tmp_path / "big.jsonl", 300_000)
    out = tmp_path / "out"
    started = time.time()
    time.sleep(0.05)
    process = _start_curate(big, out, private_tmp, "--workers", "2")
    _wait_for(_rejects_growing(out, started), process, "curate wrote rejects")
    assert process.poll() is None, "curate finished before it could be interrupted: give it more input"
    os.killpg(process.pid, signum)  # the whole group, as Ctrl-C in a terminal: workers too
    _, stderr = process.communicate(timeout=EXIT_WAIT)
    text = stderr.decode(errors="replace")
    assert process.returncode == code, text
    assert "Traceback" not in text, text
    if signum == signal.SIGINT:
        assert text.strip().splitlines()[-1] == "llmft curate: interrupted", text
    assert _work_dirs(private_tmp) == [], "an interrupted run must remove its work directory"
    assert not (out / storage.MANIFEST_NAME).exists()
    assert [path.name for path in out.iterdir() if path.name.startswith(".")] == [], "staging left behind"


def test_stale_work_dirs_of_dead_runs_are_removed_and_live_ones_kept(private_tmp: Path) -> None:
    from components.curate import workdirs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(EXIT_WAIT)
    stale = private_tmp / f"llmft-curate-work-{dead.pid}-abc"
    stale.mkdir()
    (stale / "signatures.u32").write_bytes(b"x" * 100)
    workdirs.write_owner(stale, dead.pid)
    live = private_tmp / f"llmft-curate-work-{os.getpid()}-def"
    live.mkdir()
    workdirs.write_owner(live, os.getpid())
    foreign = private_tmp / "llmft-curate-work-legacy"  # no owner file: not provably ours
    foreign.mkdir()

    removed = workdirs.remove_stale(private_tmp, "llmft-curate-")
    assert removed == [stale]
    assert not stale.exists() and live.is_dir() and foreign.is_dir()
