"""Rollout step: serve a Triton model repository and smoke-test it, locally or on Kubernetes.

Target `local` runs the tritonserver binary from the nvidia-pytriton wheel on 127.0.0.1
(see `local_triton.py`), waits until the model is ready, smoke-tests it (smoke.py: health,
generate, infer over HTTP and gRPC, a gRPC stream), and stops the server unless
`keep_running` is set (`llmft local --serve`), in which case it leaves `server.json` in the
work dir for `stop_local_server` / `stop_from_info`.

Target `kubernetes` (kubernetes_target.py) applies a Triton Deployment, Service and optional
HPA as a new revision, waits for it, smoke-tests it through the Service, promotes the model
version in the MLflow registry, and restores the previous revision on any failure.
`dry_run` prints the manifests instead (manifests.py) and touches no cluster.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
from components.rollout.manifests import KubernetesSettings
from components.rollout.smoke import smoke_test
from components.tracking import NULL_TRACKER, Tracker

log = logging.getLogger(__name__)

DEFAULT_SMOKE_PROMPT = (
    "Classify the sentiment of this review: the soup was wonderful and the staff was friendly."
)
# Serving modes whose repositories the local target can serve (trtllm ones need the trtllm image).
LOCAL_SERVING_MODES = ("hf",)


class RolloutError(RuntimeError):
    """The rollout cannot run with these settings, or the served model failed its checks."""


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    repository: str = Field(
        description="Triton model repository written by build (path or s3://; the local target downloads it)."
    )
    model_name: str = Field(default="llm", description="Model in the repository to serve and smoke-test.")
    target: Literal["local", "kubernetes"] = Field(
        default="local",
        description="local: tritonserver on 127.0.0.1 from the nvidia-pytriton wheel. "
        "kubernetes: a Triton Deployment/Service (settings under `kubernetes`), promoted or rolled back.",
    )
    dry_run: bool = Field(
        default=False,
        description="kubernetes target: print every manifest it would apply (multi-document YAML) and "
        "touch no cluster and no registry.",
    )
    smoke_prompt: str = Field(
        default=DEFAULT_SMOKE_PROMPT, description="Raw instruction sent in the smoke test (no template)."
    )
    smoke_max_tokens: int = Field(default=16, ge=1, description="max_tokens of the smoke-test requests.")
    smoke_expect: str | None = Field(
        default=None,
        description="Regular expression the generate answer must match (searched, case-insensitive); "
        "unset: any non-empty answer passes.",
    )
    smoke_timeout_s: float = Field(default=120, gt=0, description="Seconds each smoke-test request may take.")
    registered_model_name: str | None = Field(
        default=None,
        description="kubernetes target: MLflow registered model whose version is promoted (alias "
        "production); also names the Deployment.",
    )
    model_version: str | None = Field(
        default=None,
        description="kubernetes target: the version export registered; marked candidate during the "
        "rollout, production after it passed. Unset: no registry change.",
    )
    kubernetes: KubernetesSettings = Field(
        default_factory=KubernetesSettings, description="Settings of the kubernetes target."
    )
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

    @field_validator("smoke_expect")
    @classmethod
    def _check_expect(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"smoke_expect {value!r} is not a regular expression: {error}") from error
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> RolloutConfig:
        if self.http_port and self.http_port == self.grpc_port:
            raise ValueError("http_port and grpc_port must differ")
        if self.dry_run and self.target != "kubernetes":
            raise ValueError("dry_run needs target 'kubernetes' (the local target applies nothing)")
        return self


class RolloutResult(BaseModel):
    target: str = Field(description="Where the model was rolled out.")
    endpoint_http: str = Field(description="HTTP/REST endpoint (KServe v2 + generate extension).")
    endpoint_grpc: str = Field(description="gRPC endpoint (KServe v2).")
    model_name: str = Field(description="Served model name.")
    sample_prompt: str = Field(description="Smoke-test instruction.")
    sample_output: str | None = Field(
        default=None, description="Text the served model generated for it (generate endpoint)."
    )
    stream_output: str | None = Field(default=None, description="The same answer over a gRPC stream.")
    server_pid: int | None = Field(
        default=None, description="PID of the local tritonserver (stopped unless keep_running)."
    )
    healthy: bool = Field(default=False, description="Server and model were ready; every smoke check passed.")
    log_path: str | None = Field(default=None, description="Local server log.")
    server_info: str | None = Field(default=None, description="server.json of a server left running.")
    deployment: str | None = Field(
        default=None, description="kubernetes: the Deployment's <namespace>/<name>."
    )
    revision: str | None = Field(default=None, description="kubernetes: hash of the applied objects.")
    promoted_version: str | None = Field(
        default=None, description="kubernetes: model version now holding the production alias."
    )
    previous_production_version: str | None = Field(
        default=None, description="kubernetes: version that held production before (None: none)."
    )
    manifests: str | None = Field(default=None, description="Dry run: the manifests, as multi-document YAML.")
    dry_run: bool = Field(default=False, description="Nothing was applied (see `manifests`).")

    def summary(self) -> str:
        if self.dry_run:
            return self.manifests or ""
        if self.target == "kubernetes":
            if self.promoted_version:
                before = self.previous_production_version or "none"
                promotion = f"version {self.promoted_version} is production (was {before})"
            else:
                promotion = "no model version promoted"
            return (
                f"Triton (kubernetes, Deployment {self.deployment}, revision {self.revision}): "
                f"model {self.model_name!r}, {promotion}\n"
                f"  HTTP  {self.endpoint_http}/v2/models/{self.model_name}/generate\n"
                f"  gRPC  {self.endpoint_grpc}\n"
                f"  prompt: {self.sample_prompt}\n"
                f"  output: {self.sample_output}"
            )
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
                info.http_url,
                info.grpc_url,
                config.model_name,
                config.smoke_prompt,
                config.smoke_max_tokens,
                timeout_s=config.smoke_timeout_s,
                expect=config.smoke_expect,
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
        stream_output=smoke.stream_output,
        server_pid=info.pid,
        healthy=True,
        log_path=info.log_path,
        server_info=server_info,
    )
    log.info("%s", result.summary())
    return result


def rollout(config: RolloutConfig, tracker: Tracker = NULL_TRACKER) -> RolloutResult:
    """Serve `config.repository` on `config.target` and smoke-test it; raise RolloutError on failure.

    `tracker` is the step's MLflow run (run_step passes it): the kubernetes target promotes the model
    version in the registry of that tracking server.
    """
    # The local server's copy, log and server.json go to workdir: never into the repository it serves.
    storage.check_apart({"workdir": config.workdir}, {"repository": config.repository})
    if config.target == "kubernetes":
        # Imported here: the kubernetes client and the serving-compatibility rules are only needed there.
        from components.rollout.kubernetes_target import KubernetesRolloutError, rollout_kubernetes

        try:
            return rollout_kubernetes(config, tracker)
        except KubernetesRolloutError as error:
            raise RolloutError(str(error)) from error
    return _rollout_local(config)
