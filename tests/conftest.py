"""Shared fixtures: real servers on loopback for S3 (moto) and MLflow.

Both servers run as subprocesses in their own process group, bound to 127.0.0.1 on a
free port, started once per test session and stopped by their process id at the end.
Tests that touch S3 take `s3_bucket`: a fresh bucket on the moto server, with the AWS
environment pointed at it and `components.storage`'s cached boto3 client rebuilt.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from components import storage

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:] if path.exists() else ""


def _wait_until_up(process: subprocess.Popen, url: str, timeout_s: float, log_path: Path) -> None:
    """Poll `url` until it answers 200, the process exits, or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with code {process.returncode} before {url} answered:\n{_log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s:\n{_log_tail(log_path)}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(process: subprocess.Popen, timeout_s: float = 15) -> None:
    """Stop a server started in its own session, and its children: their group id is its pid.

    The group id cannot be reused while any member lives, so signalling it never reaches
    another process; the loop ends once every member is gone.
    """
    pgid = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, or its zombie keeps the group alive
        if not _group_alive(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait(timeout=10)


def _start(command: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log_file = open(log_path, "wb")  # noqa: SIM115 - kept open for the server's lifetime
    try:
        return subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    finally:
        log_file.close()  # the child holds its own descriptor


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on loopback; yields its endpoint URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    process = _start([sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)], log_path)
    endpoint = f"http://{LOOPBACK}:{port}"
    try:
        _wait_until_up(process, f"{endpoint}/moto-api/", timeout_s=60, log_path=log_path)
        yield endpoint
    finally:
        _stop(process)


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the moto server, and a boto3 client for checking it directly."""

    name: str
    endpoint_url: str
    client: Any

    def uri(self, *parts: str) -> str:
        return storage.join(f"s3://{self.name}", *parts) if parts else f"s3://{self.name}"


@pytest.fixture
def s3_bucket(s3_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """Point boto3 (through the environment) at the moto server and create an empty bucket."""
    import boto3

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # No real AWS configuration on the machine may leak into the tests.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    cache = tmp_path / "s3-cache"
    cache.mkdir()
    monkeypatch.setenv("LLMFT_CACHE", str(cache))
    storage._s3_client.cache_clear()
    client = boto3.client("s3", endpoint_url=s3_server)
    name = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    try:
        yield S3Bucket(name=name, endpoint_url=s3_server, client=client)
    finally:
        storage._s3_client.cache_clear()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` with a sqlite store on loopback; yields its tracking URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log_path = root / "server.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    # The job runner spawns background consumers the tests do not use.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root",
        str(root / "artifacts"),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    process = _start(command, log_path, env=env)
    uri = f"http://{LOOPBACK}:{port}"
    try:
        _wait_until_up(process, f"{uri}/health", timeout_s=90, log_path=log_path)
        yield uri
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny Llama-architecture base model of the local run (a complete HF checkpoint directory)."""
    from components.sample.tiny_model import TinyModelConfig, build_tiny_model

    output = tmp_path_factory.mktemp("tiny-base") / "model"
    build_tiny_model(TinyModelConfig(output=str(output)))
    return str(output)
