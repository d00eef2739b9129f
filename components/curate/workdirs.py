"""Private directories a curate run owns, removed on every exit it can catch and by later runs.

A directory is made as `<parent>/<prefix><pid>-<random>` with an owner file naming the host,
the process id and the process's start time. The run removes it when it ends (normally, on
an exception, on SIGINT/SIGTERM turned into exceptions, and from `atexit`). SIGKILL, an
out-of-memory kill or a power cut cannot be caught: `remove_stale` at the next run's start
removes directories whose owner is provably gone (same host, and that process id no longer
runs or now belongs to a process started at another time). A directory without a readable
owner file, or owned by another host (a shared TMPDIR), is never touched.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from components import jsonout

log = logging.getLogger(__name__)

OWNER_FILE = ".owner.json"

# Directories still to remove, with the process that made them: atexit removes what no
# `finally` did (forked workers inherit this and must leave them alone).
_live: dict[Path, int] = {}


def _process_start(pid: int) -> int | None:
    """A process's start time (clock ticks since boot, from /proc), None where unknown.

    A process id can be reused after its process ends; the start time tells the two apart.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces and parentheses): state is the
    # first, starttime (field 22 of proc(5)) the 20th.
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie has ended; only its exit status waits to be read
        return -1
    return int(fields[19])


def _running(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    now = _process_start(pid)
    if now == -1:
        return False
    return started is None or now is None or now == started


def write_owner(directory: Path, pid: int | None = None) -> None:
    """Record which process owns `directory` (this one by default)."""
    pid = os.getpid() if pid is None else pid
    owner = {"host": socket.gethostname(), "pid": pid, "started": _process_start(pid)}
    (directory / OWNER_FILE).write_text(jsonout.dumps(owner), encoding="utf-8")


def _known_owner(directory: Path) -> tuple[int, int | None] | None:
    """(pid, start time) of the process on this host that owns `directory`; None if not provable."""
    try:
        owner = json.loads((directory / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return None
    pid, started = owner.get("pid"), owner.get("started")
    if not isinstance(pid, int) or not (started is None or isinstance(started, int)):
        return None
    return pid, started


def running_owner(directory: Path) -> int | None:
    """The process id of a running owner of `directory`, or None when it has none (or is unknown)."""
    owner = _known_owner(directory)
    return owner[0] if owner is not None and _running(*owner) else None


def _is_stale(directory: Path) -> bool:
    owner = _known_owner(directory)
    return owner is not None and not _running(*owner)


def remove_stale(parent: Path, prefix: str) -> list[Path]:
    """Remove `parent/<prefix>*` directories whose owner process has ended; return them."""
    removed = []
    try:
        candidates = sorted(parent.glob(f"{prefix}*"))
    except OSError:
        return []
    for directory in candidates:
        if directory.is_dir() and not directory.is_symlink() and _is_stale(directory):
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
            log.info("curate: removed %s, left by a curate run that was killed", directory)
    return removed


def _remove_live() -> None:
    for directory, pid in list(_live.items()):
        if pid == os.getpid():
            shutil.rmtree(directory, ignore_errors=True)
        _live.pop(directory, None)


atexit.register(_remove_live)


@contextmanager
def owned_dir(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """A new directory `<parent or TMPDIR>/<prefix><pid>-<random>` of this process, removed on exit."""
    root = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    directory = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root))
    _live[directory] = os.getpid()
    try:
        write_owner(directory)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        _live.pop(directory, None)


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived: unwinds like an exception so every `finally` cleans up."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated(128 + signum)


@contextmanager
def exit_cleanly_on_termination() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `Terminated` (exit status 128 + signal) while the block runs.

    By default they end the process at once, leaving its work files. Only where Python can set
    handlers (the main thread) and nobody else set one; the previous handlers come back after.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    replaced = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:
            replaced[signum] = signal.signal(signum, _terminate)
    try:
        yield
    finally:
        for signum, previous in replaced.items():
            signal.signal(signum, previous)
