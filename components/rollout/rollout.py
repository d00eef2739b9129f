"""Rollout step: serve a Triton model repository and smoke-test it.

Target `local` (this release) runs the tritonserver binary from the nvidia-pytriton wheel
on 127.0.0.1 (see `local_triton.py`), waits until the model is ready, smoke-tests it over
HTTP (health, generate extension, infer) and gRPC (infer), and stops the server unless
`keep_running` is set (`llmft local --serve`), in which case it leaves `server.json` in the
work dir for `stop_local_server` / `stop_from_info`.

Target `kubernetes` (Deployment/Service, promotion or rollback) comes in a later
release: asking for it fails before anything is read or started.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components import storage
from components.rollout.local_triton import (
    SERVER_DIRNAME,
    LocalServerError,
    log_tail,
    start_local_server,
    stop_local_server,
    wait_until_ready,
    write_server_info,
)
from components.rollout.smoke import smoke_test

log = logging.getLogger(__name__)

DEFAULT_SMOKE_PROMPT = (
    "Classify the sentiment of this review: the soup was wonderful and the staff was friendly."
)
# Serving modes whose repositories the local target can serve (trtllm ones need the trtllm image).
LOCAL_SERVING_MODES = ("hf",)


class RolloutError(RuntimeError):
    """The rollout cannot run with these settings, or the served model failed its checks."""


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repository: str = Field(
        description="Triton model repository written by build (path or s3://; the local target downloads it)."
    )
    model_name: str = Field(default="llm", description="Model in the repository to serve and smoke-test.")
    target: Literal["local", "kubernetes"] = Field(
        default="local",
        description="local: tritonserver on 127.0.0.1 from the nvidia-pytriton wheel. "
        "kubernetes: Deployment/Service (later release).",
    )
    smoke_prompt: str = Field(
        default=DEFAULT_SMOKE_PROMPT, description="Raw instruction sent in the smoke test (no template)."
    )
    smoke_max_tokens: int = Field(default=16, ge=1, description="max_tokens of the smoke-test requests.")
    http_port: int = Field(
        default=0, ge=0, le=65535, description="HTTP port on 127.0.0.1; 0 picks a free one."
    )
    grpc_port: int = Field(
        default=0, ge=0, le=65535, description="gRPC port on 127.0.0.1; 0 picks a free one."
    )
    keep_running: bool = Field(
        default=False,
        description="Local target: leave the server up after the smoke test (writes server.json); "
        "otherwise stop it before the step returns.",
    )
    startup_timeout_s: float = Field(
        default=180, gt=0, description="Seconds to wait for the server and the model to be ready."
    )
    workdir: str | None = Field(
        default=None,
        description="Local directory for the server copy, its log and server.json; default: a new temp dir.",
    )

    @model_validator(mode="after")
    def _distinct_ports(self) -> RolloutConfig:
        if self.http_port and self.http_port == self.grpc_port:
            raise ValueError("http_port and grpc_port must differ")
        return self


class RolloutResult(BaseModel):
    target: str = Field(description="Where the model was rolled out.")
    endpoint_http: str = Field(description="HTTP/REST endpoint (KServe v2 + generate extension).")
    endpoint_grpc: str = Field(description="gRPC endpoint (KServe v2).")
    model_name: str = Field(description="Served model name.")
    sample_prompt: str = Field(description="Smoke-test instruction.")
    sample_output: str = Field(description="Text the served model generated for it (generate endpoint).")
    server_pid: int | None = Field(description="PID of the local tritonserver (stopped unless keep_running).")
    healthy: bool = Field(description="Server and model were ready and every smoke check passed.")
    log_path: str | None = Field(default=None, description="Local server log.")
    server_info: str | None = Field(default=None, description="server.json of a server left running.")

    def summary(self) -> str:
        state = f"running as pid {self.server_pid}" if self.server_info else "stopped after the smoke test"
        stop = f"\n  stop it with: kill {self.server_pid}" if self.server_info else ""
        return (
            f"Triton ({self.target}, {state}): model {self.model_name!r}\n"
            f"  HTTP  {self.endpoint_http}/v2/models/{self.model_name}/generate\n"
            f"  gRPC  {self.endpoint_grpc}\n"
            f"  prompt: {self.sample_prompt}\n"
            f"  output: {self.sample_output}{stop}"
        )


def _local_repository(config: RolloutConfig) -> Path:
    """The repository as a complete local directory holding `config.model_name`."""
    manifest = storage.require_complete(config.repository)  # refuses a half-written repository
    mode = manifest.metadata.get("serving_mode")
    if mode is not None and mode not in LOCAL_SERVING_MODES:
        raise RolloutError(
            f"repository {config.repository} was built for serving mode {mode!r}, which needs the trtllm "
            f"image; the local target serves {', '.join(LOCAL_SERVING_MODES)}"
        )
    local = storage.localize_dir(config.repository)
    if not (local / config.model_name / "config.pbtxt").is_file():
        models = sorted(path.parent.name for path in local.glob("*/config.pbtxt"))
        raise RolloutError(
            f"repository {config.repository} has no model {config.model_name!r} (models: {models})"
        )
    return local


def _rollout_local(config: RolloutConfig) -> RolloutResult:
    repository = _local_repository(config)
    workdir = Path(config.workdir) if config.workdir else Path(tempfile.mkdtemp(prefix="llmft-triton-"))
    server = start_local_server(repository, workdir, config.http_port, config.grpc_port)
    info = server.info
    keep = False
    try:
        try:
            wait_until_ready(server, config.model_name, config.startup_timeout_s)
        except LocalServerError as exc:
            raise RolloutError(str(exc)) from exc
        try:
            smoke = smoke_test(
                info.http_url, info.grpc_url, config.model_name, config.smoke_prompt, config.smoke_max_tokens
            )
        except Exception as exc:  # any client or check failure fails the rollout, with the server's view
            raise RolloutError(
                f"smoke test failed: {exc}\nserver log {info.log_path}:\n{log_tail(info.log_path)}"
            ) from exc
        keep = config.keep_running
    finally:
        if not keep:
            stop_local_server(info.pid)
            shutil.rmtree(workdir / SERVER_DIRNAME, ignore_errors=True)  # keep the log, drop the 30 MB copy
    server_info = str(write_server_info(info)) if keep else None
    result = RolloutResult(
        target="local",
        endpoint_http=info.http_url,
        endpoint_grpc=info.grpc_url,
        model_name=config.model_name,
        sample_prompt=config.smoke_prompt,
        sample_output=smoke.generate_output,
        server_pid=info.pid,
        healthy=True,
        log_path=info.log_path,
        server_info=server_info,
    )
    log.info("%s", result.summary())
    return result


def rollout(config: RolloutConfig) -> RolloutResult:
    """Serve `config.repository` on `config.target` and smoke-test it; raise RolloutError on failure."""
    if config.target == "kubernetes":
        raise RolloutError(
            "rollout target 'kubernetes' (Triton Deployment/Service on EKS) is not available in this "
            "release; use target='local'"
        )
    return _rollout_local(config)
