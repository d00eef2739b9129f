"""Every network wait is bounded, and the bound is the one --help states.

A loopback server that accepts connections and never answers stands in for a hung KFP API or
MLflow tracking server (a stuck proxy, a half-dead pod). The commands run as subprocesses under
a hard timeout, so a regression fails the test instead of hanging it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from components import tracking
from pipelines import client as kc

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = str(ROOT / "dist" / "llm_finetune.yaml")
REQUIRED = [
    *("--param", "base_model_uri=s3://b/base", "--param", "storage_root=s3://b/root"),
    *("--param", "train_data_uri=s3://b/raw"),
]
# Python start-up and imports (kfp, pydantic) on a loaded machine, on top of the stated bound.
STARTUP_ALLOWANCE_S = 30.0


@pytest.fixture
def silent_server() -> Iterator[str]:
    """http://127.0.0.1:<port> of a server that accepts every connection and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(connection)  # kept open, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        listener.close()


def _llmft(*args: str, timeout_s: float) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("KFP_HOST", "KFP_TOKEN", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,  # a hang fails the test here instead of blocking the suite
    )
    return result, time.monotonic() - started


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:") or ": error:" in line]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_kfp_that_never_answers_fails_within_the_stated_bound(silent_server: str, command: str) -> None:
    request_timeout_s = 2.0
    bound_s = 3 * request_timeout_s  # what --help states: 3x --request-timeout
    extra = ["--name", "nightly", "--cron", "0 0 2 * * *"] if command == "schedule" else []
    result, elapsed = _llmft(
        command,
        "--host",
        silent_server,
        "--package",
        PACKAGE,
        "--request-timeout",
        str(request_timeout_s),
        *extra,
        *REQUIRED,
        timeout_s=bound_s + STARTUP_ALLOWANCE_S,
    )
    assert result.returncode == 1, result.stderr
    line = _one_line_error(result.stderr)
    assert f"cannot reach KFP at {silent_server}" in line and "no answer within 2 s" in line
    assert elapsed < bound_s + STARTUP_ALLOWANCE_S


def test_kfp_default_request_timeout_is_stated_in_help() -> None:
    result, _ = _llmft("submit", "--help", timeout_s=60)
    help_text = " ".join(result.stdout.split())
    assert f"{3 * kc.DEFAULT_REQUEST_TIMEOUT_S:g} s by default" in help_text


@pytest.mark.timeout(30)
def test_every_kfp_request_is_bounded(silent_server: str) -> None:
    """Not only the health check: a call after connecting (kfp.Client sets no timeout) is bounded too."""
    from kfp_server_api import ApiClient, Configuration

    api_client = ApiClient(Configuration(host=silent_server))
    kc._bound_requests(api_client, 1.0)
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        api_client.rest_client.request("GET", f"{silent_server}/apis/v2beta1/runs")
    # One try, no re-sent request (urllib3 would repeat a timed-out GET 3 times by default).
    assert time.monotonic() - started < 3.0


@pytest.mark.timeout(30)
def test_wait_for_run_request_timeout_is_not_dropped(silent_server: str) -> None:
    """kfp_server_api silently drops a float timeout; wait_for_run passes a (connect, read) pair."""
    client = kc.Client.__new__(kc.Client)  # no health check: only the generated API is used
    from kfp_server_api import ApiClient, Configuration, RunServiceApi

    client.runs = RunServiceApi(ApiClient(Configuration(host=silent_server)))
    client._uihost = silent_server
    started = time.monotonic()
    with pytest.raises(kc.RunWaitTimeout):
        kc.wait_for_run(client, "run-1", timeout_s=1.0, poll_s=0.1)
    assert time.monotonic() - started < 15.0


def test_mlflow_that_never_answers_fails_fast_before_any_work(silent_server: str, tmp_path: Path) -> None:
    connect_s, read_s = tracking.REACHABILITY_TIMEOUT_S
    bound_s = connect_s + read_s
    data = tmp_path / "raw.jsonl"
    data.write_text('{"input": "a", "output": "b"}\n')
    output = tmp_path / "curated"
    result, elapsed = _llmft(
        "curate",
        "--input",
        str(data),
        "--output",
        str(output),
        "--mlflow-tracking-uri",
        silent_server,
        timeout_s=bound_s + STARTUP_ALLOWANCE_S,
    )
    assert result.returncode == 1, result.stderr
    line = _one_line_error(result.stderr)
    assert f"MLflow tracking server {silent_server} is not reachable" in line
    assert f"no answer within {read_s:g} s" in line
    assert elapsed < bound_s + STARTUP_ALLOWANCE_S
    assert not output.exists()  # nothing was curated


def test_mlflow_bound_is_stated_in_help() -> None:
    result, _ = _llmft("curate", "--help", timeout_s=60)
    help_text = " ".join(result.stdout.split())
    connect_s, read_s = tracking.REACHABILITY_TIMEOUT_S
    assert f"fails the step within {connect_s + read_s:g} s, before any work" in help_text
