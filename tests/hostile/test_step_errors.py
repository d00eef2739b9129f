"""Errors a person can act on (issue 13, item 12): one line, no traceback, the URI or file named.

Every case runs the real CLI (`python -m pipelines.cli ...`) in a subprocess under a hard timeout
and checks: a non-zero exit, no "Traceback", exactly one error line, and the URI or file in it.
S3 faults come from real endpoints on loopback: the moto server (a missing bucket or prefix), a
closed port (an unreachable endpoint), and a server that answers every request with 403
AccessDenied (moto does not enforce bucket policies).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from components import storage

ROOT = Path(__file__).resolve().parents[2]
# Python start-up and imports (torch for train/evaluate/export) on a loaded machine.
STARTUP_ALLOWANCE_S = 60.0
# What storage's bounds allow for a closed port: S3_MAX_ATTEMPTS refused connections and their backoff.
UNREACHABLE_BOUND_S = storage.S3_MAX_ATTEMPTS * storage.S3_CONNECT_TIMEOUT_S + 3
# A log record the CLI prints on stderr before the error ("12:00:00 WARNING name: ...").
_LOG_RECORD = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "MLFLOW_", "KFP_", "LLMFT_"))
    }
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _aws_env(tmp_path: Path, endpoint: str, credentials: bool = True) -> dict[str, str]:
    env = _clean_env(
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION="us-east-1",
        # No configuration of this machine, and no instance metadata service, may supply credentials.
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        LLMFT_CACHE=str(tmp_path / "cache"),
    )
    if credentials:
        env |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    return env


def _llmft(
    args: list[str], env: dict[str, str], timeout_s: float = 180
) -> tuple[subprocess.CompletedProcess[str], float]:
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


def _one_error_line(result: subprocess.CompletedProcess[str], *named: str) -> str:
    """The only non-log line on stderr; it must name one of `named`."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not _LOG_RECORD.match(line)]
    assert len(lines) == 1, result.stderr
    assert any(name in lines[0] for name in named), lines[0]
    return lines[0]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on exit: connections to it are refused


# --- S3 faults ----------------------------------------------------------------------------------------


def step_commands(bucket: str, tmp_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Each step reading s3://<bucket>/...: (its arguments, the URIs an error may name)."""
    s3 = f"s3://{bucket}"
    out = str(tmp_path / "out")
    evaluate_data = ["--data", f"{s3}/data", "--output", out]
    return {
        "curate": (["curate", "--input", f"{s3}/raw.jsonl", "--output", out], [f"{s3}/raw.jsonl"]),
        "train": (
            ["train", "--base-model", f"{s3}/base", "--data", f"{s3}/data", "--output", out],
            [f"{s3}/base", f"{s3}/data"],
        ),
        "evaluate": (
            ["evaluate", "--base-model", f"{s3}/base", "--adapter", f"{s3}/adapter", *evaluate_data],
            [f"{s3}/base", f"{s3}/adapter", f"{s3}/data"],
        ),
        "export": (
            ["export", "--base-model", f"{s3}/base", "--adapter", f"{s3}/adapter", "--output", out],
            [f"{s3}/base", f"{s3}/adapter"],
        ),
        "build": (["build", "--model", f"{s3}/merged", "--output", out], [f"{s3}/merged"]),
        "rollout": (["rollout", "--repository", f"{s3}/repository"], [f"{s3}/repository"]),
    }


STEPS = ["curate", "train", "evaluate", "export", "build", "rollout"]


class _DenyAll(BaseHTTPRequestHandler):
    """An S3 endpoint whose bucket policy denies everything: 403 AccessDenied, as S3 words it."""

    body = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
        b"<Message>Access Denied</Message><RequestId>1</RequestId></Error>"
    )

    def _deny(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(self.body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _deny

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def denying_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DenyAll)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("step", STEPS)
def test_no_credentials(tmp_path: Path, step: str) -> None:
    args, named = step_commands("bucket", tmp_path)[step]
    result, _ = _llmft(args, _aws_env(tmp_path, f"http://127.0.0.1:{_closed_port()}", credentials=False))
    line = _one_error_line(result, *named)
    assert "Unable to locate credentials" in line and "AWS_ACCESS_KEY_ID" in line


@pytest.mark.parametrize("step", STEPS)
def test_unreachable_endpoint_fails_in_seconds(tmp_path: Path, step: str) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    args, named = step_commands("bucket", tmp_path)[step]
    result, elapsed = _llmft(args, _aws_env(tmp_path, endpoint))
    line = _one_error_line(result, *named)
    assert f"no answer from {endpoint} after {storage.S3_MAX_ATTEMPTS} attempts" in line
    assert "AWS_ENDPOINT_URL" in line
    assert elapsed < UNREACHABLE_BOUND_S + STARTUP_ALLOWANCE_S


@pytest.mark.parametrize("step", STEPS)
def test_missing_bucket(s3_server: str, tmp_path: Path, step: str) -> None:
    args, named = step_commands("no-such-bucket-llmft", tmp_path)[step]
    result, _ = _llmft(args, _aws_env(tmp_path, s3_server))
    line = _one_error_line(result, *named)
    assert "bucket 'no-such-bucket-llmft' does not exist" in line


@pytest.mark.parametrize("step", STEPS)
def test_missing_prefix_in_a_bucket_does_not_exist(s3_bucket, tmp_path: Path, step: str) -> None:
    args, named = step_commands(s3_bucket.name, tmp_path)[step]
    result, _ = _llmft(args, _aws_env(tmp_path, s3_bucket.endpoint_url))
    line = _one_error_line(result, *named)
    assert "does not exist" in line or "model not found" in line


@pytest.mark.parametrize("step", STEPS)
def test_access_denied(denying_endpoint: str, tmp_path: Path, step: str) -> None:
    args, named = step_commands("bucket", tmp_path)[step]
    result, _ = _llmft(args, _aws_env(tmp_path, denying_endpoint))
    line = _one_error_line(result, *named)
    assert "access denied (HTTP 403 AccessDenied)" in line


def test_s3_output_denied_is_one_line(denying_endpoint: str, tmp_path: Path) -> None:
    """A write (curate's output) refused by the bucket: the output URI is named."""
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"input": "What is 2+2?", "output": "4"}\n' * 3)
    result, _ = _llmft(
        ["curate", "--input", str(raw), "--output", "s3://bucket/curated"],
        _aws_env(tmp_path, denying_endpoint),
    )
    _one_error_line(result, "s3://bucket/curated")


# --- local inputs: missing, a symlink loop, a device ----------------------------------------------------


def local_commands(bad: str, tmp_path: Path) -> dict[str, list[str]]:
    out = str(tmp_path / "out")
    return {
        "curate --input": ["curate", "--input", bad, "--output", out],
        "train --data": ["train", "--base-model", str(tmp_path / "base"), "--data", bad, "--output", out],
        "train --base-model": ["train", "--base-model", bad, "--data", bad, "--output", out],
        "evaluate --data": [
            "evaluate",
            "--base-model",
            bad,
            "--adapter",
            bad,
            "--data",
            bad,
            "--output",
            out,
        ],
        "export --base-model": ["export", "--base-model", bad, "--adapter", bad, "--output", out],
        "build --model": ["build", "--model", bad, "--output", out],
        "rollout --repository": ["rollout", "--repository", bad],
    }


def _loop(tmp_path: Path) -> str:
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    return str(tmp_path / "loop-a")


LOCAL_CASES = {
    "missing": (lambda tmp: str(tmp / "no" / "such" / "path"), "does not exist"),
    "symlink-loop": (_loop, "symlink loop"),
    "dev-null": (lambda tmp: "/dev/null", "is a character device, not a"),
}


@pytest.mark.parametrize("case", list(LOCAL_CASES))
@pytest.mark.parametrize("command", list(local_commands("x", Path("/x"))))
def test_bad_local_input(tmp_path: Path, case: str, command: str) -> None:
    make, problem = LOCAL_CASES[case]
    bad = make(tmp_path)
    result, _ = _llmft(local_commands(bad, tmp_path)[command], _clean_env())
    line = _one_error_line(result, bad)
    assert problem in line
    assert "_MANIFEST.json" not in line  # not "it is incomplete": there is nothing there


# --- YAML files: --params-file, --config, the images file ------------------------------------------------


PARAMS_FILES = {
    "yaml-syntax": (b"base_model_uri: [s3://b/base\n", "line 2, column 1: not valid YAML"),
    "not-a-mapping": (b"- base_model_uri\n- storage_root\n", "must hold a mapping of name: value, not list"),
    "binary": (bytes(range(256)), "not a text file"),
    "directory": (None, "is a directory, not a regular file"),
}


@pytest.mark.parametrize("case", list(PARAMS_FILES))
@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_malformed_params_file(tmp_path: Path, case: str, command: str) -> None:
    content, problem = PARAMS_FILES[case]
    path = tmp_path / "params.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    extra = ["--name", "nightly", "--cron", "0 0 2 * * *"] if command == "schedule" else []
    host = f"http://127.0.0.1:{_closed_port()}"  # never reached: the file is read first
    result, _ = _llmft([command, "--host", host, "--params-file", str(path), *extra], _clean_env())
    line = _one_error_line(result, f"--params-file {path}")
    assert problem in line


def test_step_config_yaml_error_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("data: [a\nbase_model: b\n")
    result, _ = _llmft(["train", "--config", str(config)], _clean_env())
    line = _one_error_line(result, f"--config {config}")
    assert "not valid YAML" in line


IMAGES_YAML_ERROR = "base: [registry.example/llmft-base:1.0\ntrain: x\n"


@pytest.mark.parametrize("how", ["llmft compile --images", "llmft compile LLMFT_IMAGES_FILE", "compile.py"])
def test_images_file_yaml_error_is_one_line(tmp_path: Path, how: str) -> None:
    images = tmp_path / "images.yaml"
    images.write_text(IMAGES_YAML_ERROR)
    output = tmp_path / "pipeline.yaml"
    env = _clean_env()
    if how == "llmft compile --images":
        command = [
            sys.executable,
            "-m",
            "pipelines.cli",
            "compile",
            "--images",
            str(images),
            "--output",
            str(output),
        ]
    elif how == "llmft compile LLMFT_IMAGES_FILE":
        env["LLMFT_IMAGES_FILE"] = str(images)
        command = [sys.executable, "-m", "pipelines.cli", "compile", "--output", str(output)]
    else:
        env["LLMFT_IMAGES_FILE"] = str(images)
        command = [sys.executable, "compile.py", "--output", str(output)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    line = _one_error_line(result, str(images))
    assert "line 2, column 6: not valid YAML" in line
    assert not output.exists()


def test_rollout_fetch_from_a_missing_bucket_is_one_line(s3_server: str, tmp_path: Path) -> None:
    """The engine pods' init container (components.rollout.fetch_repository) reports S3 faults in one line."""
    uri = "s3://no-such-bucket-llmft/repository"
    result = subprocess.run(
        [sys.executable, "-m", "components.rollout.fetch_repository", uri, str(tmp_path / "models")],
        cwd=ROOT,
        env=_aws_env(tmp_path, s3_server),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "cannot fetch the model repository" in line]
    assert len(errors) == 1 and uri in errors[0] and "does not exist" in errors[0], result.stderr
