"""Multi-node training as a Kubeflow Training Operator v1 PyTorchJob, launched and watched by a CPU step.

`build_pytorchjob` turns typed settings into the PyTorchJob (a kubeflow-training SDK model); `launch`
creates it, or re-attaches to the job of the same name when a KFP retry runs the step again, streams
the master's log into the step's log, and returns or raises when the job ends; `cleanup` is what the
pipeline's exit handler calls. No KFP import here: the KFP component is a thin shell over this module.

How the job runs (Training Operator v1, verified against kubeflow/training-operator release-1.9,
pkg/controller.v1/pytorch/{envvar.go,master.go}, pkg/apis/kubeflow.org/v1/pytorch_defaults.go):
- One Master replica (rank 0) and `nodes - 1` Worker replicas, one pod per node, each running
  `torchrun --module components.train.launch`: the same rank-aware worker entry point as single-node
  torchrun (config from $LLMFT_TRAIN_CONFIG, quiet logs on ranks > 0, one MLflow run shared through
  $LLMFT_MLFLOW_RUN_ID), not `llmft train`, which would open an MLflow run and print a summary per rank.
- The operator injects into every container: MASTER_ADDR / PET_MASTER_ADDR (`<job>-master-0`, the
  headless Service it creates for the master), MASTER_PORT / PET_MASTER_PORT (the container port named
  `pytorchjob-port`), PET_NNODES (total replicas), PET_NPROC_PER_NODE (`spec.nprocPerNode`),
  PET_NODE_RANK and RANK (0 for the master, index + 1 for workers), WORLD_SIZE (replicas x nprocPerNode)
  and PYTHONUNBUFFERED=1.
- torchrun reads every `--flag` from `PET_<FLAG>` when the flag is absent (torch.distributed.argparse_util
  `env` action), and its default rendezvous backend is `static` at master_addr:master_port. So the command
  needs no --nnodes/--node-rank/--rdzv flags: the operator's environment is the whole configuration, and
  torchrun sets RANK/LOCAL_RANK/WORLD_SIZE per process for the children. No elasticPolicy: a static group
  of whole nodes; a failed attempt is retried as a whole (`rerun_failed`), resuming from a checkpoint.
- `nprocPerNode` is a string in the v1 CRD and SDK model ("auto", "cpu", "gpu" or an integer); we write
  the GPU count so WORLD_SIZE is exact.
- The operator's validating webhook requires a DNS-1035 job name, exactly one Master replica and a
  container named `pytorch` in every replica; `build_pytorchjob` checks the same before anything is sent.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import urllib3
import yaml
from kubeflow.training import TrainingClient, models
from kubeflow.training.api_client import ApiClient
from kubeflow.training.constants import constants as kf
from kubeflow.training.utils.utils import FakeResponse
from kubernetes.client import CoreV1Api, V1DeleteOptions
from kubernetes.client.rest import ApiException
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from components.redact import credential_in_value
from components.resources import ResourceProfile, SecretEnv, apply_to_pod_spec

log = logging.getLogger(__name__)

CONTAINER_NAME = kf.PYTORCHJOB_CONTAINER  # "pytorch": the operator's webhook requires this name
MASTER_PORT_NAME = "pytorchjob-port"  # the operator reads MASTER_PORT from the port with this name
DEFAULT_MASTER_PORT = 23456  # the operator's default for that port
CONFIG_ENV = "LLMFT_TRAIN_CONFIG"  # env var holding the TrainConfig as JSON, read by `--config-env`
WORKER_MODULE = "components.train.launch"  # reads CONFIG_ENV; rank 0 writes the outputs
TRAIN_COMMAND: tuple[str, ...] = ("torchrun", "--module", WORKER_MODULE)
MAX_JOB_NAME = 50  # pods and Services are `<job>-worker-<index>`: 50 + 8 + 5 digits stays within 63
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
JOB_LABEL = "llmft.io/job"
# The pipeline run a job works for. Job names come from train's output address, which equal runs
# share; the label is how the exit handler finds its own run's jobs (`jobs_of_run`).
RUN_LABEL = "llmft.io/pipeline-run"
SPEC_HASH_ANNOTATION = "llmft.io/spec-sha256"  # lets a re-attaching launcher notice a different spec

# NCCL / libfabric environment on every replica. Sources: aws-samples/awsome-distributed-training,
# 1.architectures/efa-cheatsheet.md (AWS's EFA cheat sheet) and NVIDIA's NCCL environment docs.
# On EFA nodes (profile.efa > 0), besides components.resources.EFA_ENV:
#   FI_PROVIDER=efa           pins libfabric to the EFA provider, so aws-ofi-nccl cannot quietly pick the
#                             TCP/sockets provider (harmless where aws-ofi-nccl already prefers EFA).
#   FI_EFA_USE_DEVICE_RDMA=1  GPUDirect RDMA over EFA on p4d/p5; the default from libfabric 1.18 on,
#                             needed by older images, harmless on newer ones.
#   FI_EFA_FORK_SAFE=1        makes fork() safe while memory is registered with EFA; needed on kernels
#                             older than 5.15 (EKS AL2 GPU AMIs run 5.10), a no-op on newer kernels.
#                             Data loader workers and tokenizers fork.
EFA_EXTRA_ENV: dict[str, str] = {"FI_EFA_FORK_SAFE": "1"}
# On every replica:
#   NCCL_DEBUG=WARN           NCCL prints an explicit message when a call fails (default: silent), so the
#                             failure's log tail says why a collective died. INFO is far too chatty.
NCCL_ENV: dict[str, str] = {"NCCL_DEBUG": "WARN"}
# Deliberately NOT set (per the cheat sheet): NCCL_PROTO=simple (only for aws-ofi-nccl <= 1.5),
# NCCL_SOCKET_IFNAME (NCCL already skips lo and docker*; in a VPC-CNI pod the one interface is eth0),
# NCCL_BUFFSIZE / NCCL_MIN_CHANNELS (defaults are best), RDMAV_FORK_SAFE (can break newer kernels),
# FI_EFA_USE_HUGE_PAGE=0 (only when fork() fails with ENOMEM). Any of them can go in `extra_env`.

# Names the operator sets itself or that carry the config: a second value would be ambiguous.
RESERVED_ENV = frozenset({CONFIG_ENV, "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "PYTHONUNBUFFERED"})

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DNS1035_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
# Words that mark a key as a credential ("hf_token", "MLFLOW_TRACKING_PASSWORD", "DB_PASS", "PWD");
# whole words ("pass", not "passthrough"); endings and fragments below, so "max_new_tokens" or
# "tokenizer" are fine.
_SECRET_WORDS = frozenset({"pass", "passphrase"})
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key")})
# Anywhere in a word, also in words glued together: AWS_SECRETACCESSKEY, DBPASSWORD, PRIVATEKEY.
_SECRET_FRAGMENTS = ("password", "passwd", "credential", "apikey", "accesskey", "secretkey", "privatekey")
# hf_token, HFTOKEN, MYSQLPWD, PWD, CLIENTSECRET ("secretive" is no credential).
_SECRET_ENDINGS = ("token", "pwd", "secret")
# A value that reads like key material (no spaces, letters and digits, 16+ characters): with a
# name ending in "key" (STRIPE_KEY, LICENSE_KEY) it is a credential; "SORT_KEY=name" is not.
_OPAQUE_VALUE_RE = re.compile(r"(?=.*[A-Za-z])(?=.*[0-9])[A-Za-z0-9+/=_.-]{16,}")

# (connect, read) seconds per Kubernetes API request: a hung connection must not hang the step for
# days. A tuple, not a float: the kubernetes client silently ignores a float timeout.
API_TIMEOUT_S = (10, 60)
MAX_API_ERRORS = 10  # consecutive transient API errors tolerated while waiting (x poll_s)
LOG_READ_LIMIT_BYTES = 8 * 2**20  # one log read at most; a runaway log cannot exhaust the launcher
LOG_WINDOW_MARGIN_S = 10  # overlap between log reads; duplicates are dropped by timestamp
DELETE_TIMEOUT_S = 600.0  # waiting for a replaced job's pods to terminate
HEARTBEAT_S = 15 * 60  # a "still running" line this often, so a days-long wait shows it is alive
OPERATOR_SILENT_S = 10 * 60  # no status condition this long: the operator is probably not running
TERMINAL_STATES = ("Succeeded", "Failed")


class PyTorchJobError(RuntimeError):
    """The PyTorchJob could not be created, read or deleted, or vanished while the launcher waited."""


class PyTorchJobFailed(PyTorchJobError):
    """The PyTorchJob ended Failed; carries the operator's reason and message and the master's last lines."""

    def __init__(
        self,
        name: str,
        namespace: str,
        reason: str,
        message: str,
        log_tail: list[str],
        pod_problems: list[str] | None = None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.reason = reason
        self.message = message
        self.log_tail = list(log_tail)
        self.pod_problems = list(pod_problems or [])
        lines = [f"PyTorchJob {namespace}/{name} failed: {reason}: {message}"]
        lines += [f"  {problem}" for problem in self.pod_problems]
        if self.log_tail:
            lines.append(f"last {len(self.log_tail)} lines of the master's log:")
            lines += [f"  {line}" for line in self.log_tail]
        else:
            lines.append("(no master log lines could be read)")
        super().__init__("\n".join(lines))


class PyTorchJobTimeout(PyTorchJobError):
    """The launcher stopped waiting; the PyTorchJob is left as it is (still running)."""

    def __init__(self, name: str, namespace: str, timeout_s: float, state: str) -> None:
        self.name = name
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.state = state
        super().__init__(
            f"PyTorchJob {namespace}/{name} still {state} after {_duration(timeout_s)} (timeout_s); it was "
            f"left running: a retry of this step re-attaches to it, or delete it with "
            f"`kubectl -n {namespace} delete pytorchjob {name}`"
        )


def _words(key: str) -> list[str]:
    """Lowercase words of an identifier: snake, kebab, dotted and camelCase all split."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)
    return [word for word in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if word]


def looks_like_secret(key: str, value: object = None) -> bool:
    """True when `key` names a credential or `value` is one (whatever the name).

    Names: hf_token, AWS_SECRET_ACCESS_KEY, AWS_SECRETACCESSKEY, mlflowPassword, DB_PASS, PASSWD,
    PWD, PRIVATE_KEY, and *_KEY with a key-looking value. Values: see redact.credential_in_value
    (URL passwords, AWS keys, hf_/ghp_ tokens, JWTs, PEM private keys).
    """
    words = _words(key)
    if any(word in _SECRET_WORDS for word in words) or any(
        pair in _SECRET_PAIRS for pair in itertools.pairwise(words)
    ):
        return True
    if any(fragment in word for word in words for fragment in _SECRET_FRAGMENTS):
        return True
    if any(word.endswith(_SECRET_ENDINGS) for word in words):
        return True
    if words and words[-1].endswith("key") and isinstance(value, str) and _OPAQUE_VALUE_RE.fullmatch(value):
        return True
    return credential_in_value(value) is not None


def _secret_problems(value: Any, path: str) -> Iterable[str]:
    """Where a mapping holds keys that name credentials, or values that are credentials (never shown)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            text = item if isinstance(item, str) else None
            if text is not None and (kind := credential_in_value(text)):
                yield f"{path}.{key} holds what looks like {kind}"
            elif looks_like_secret(str(key), text):
                yield f"{path}.{key} looks like a credential"
            else:
                yield from _secret_problems(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _secret_problems(item, f"{path}[{index}]")
    elif isinstance(value, str) and (kind := credential_in_value(value)):
        yield f"{path} holds what looks like {kind}"


class PyTorchJobSettings(BaseModel):
    """Everything `build_pytorchjob` and `launch` need: the job's shape, its pods, and how to wait for it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(
        description=f"Job name: a DNS-1035 label of at most {MAX_JOB_NAME} characters; use `job_name()` so "
        "a KFP retry finds the same job."
    )
    namespace: str = Field(description="Namespace of the job (the KFP run's profile namespace).")
    image: str = Field(description="Train image reference (by digest or immutable tag).")
    nodes: int = Field(ge=1, description="Nodes (pods): one Master plus nodes - 1 Workers.")
    gpus_per_node: int = Field(
        ge=1, description="GPUs per node = torchrun processes per node (nprocPerNode)."
    )
    profile: ResourceProfile = Field(
        description="Cluster profile of every replica: GPUs, EFA, /dev/shm, CPU/memory, tolerations, node "
        "selector, service account, pull secrets, priority class (components.resources)."
    )
    train_config: dict[str, Any] = Field(
        description=f"The TrainConfig as a mapping (URIs and hyper-parameters only), passed as JSON in "
        f"${CONFIG_ENV}. Keys that name credentials are refused: use secret_env."
    )
    secret_env: list[SecretEnv] = Field(
        default_factory=list, description="Credentials as env vars from Secret keys (valueFrom.secretKeyRef)."
    )
    env_from_secrets: list[str] = Field(
        default_factory=list, description="Secrets whose every key becomes an env var (envFrom.secretRef)."
    )
    extra_env: dict[str, str] = Field(
        default_factory=dict,
        description="Non-secret env vars, e.g. MLFLOW_TRACKING_URI or NCCL overrides; they win over the "
        "NCCL/EFA defaults. Names that look like credentials are refused: use secret_env.",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on the PyTorchJob.")
    pod_annotations: dict[str, str] = Field(
        # Kubeflow profile namespaces usually have Istio injection on; a sidecar never exits, so the pod
        # and the job would never complete (kubeflow/trainer#1637).
        default_factory=lambda: {"sidecar.istio.io/inject": "false"},
        description="Annotations on every replica's pod (default: no Istio sidecar).",
    )
    master_port: int = Field(
        default=DEFAULT_MASTER_PORT, ge=1, le=65535, description="Port of torchrun's static rendezvous."
    )
    restart_policy: Literal["Never", "OnFailure", "ExitCode"] = Field(
        default="Never",
        description="Never: a failed replica fails the job at once and keeps its log, and clean_pod_policy "
        "stops the peers left waiting in a collective (with OnFailure they would hang until the NCCL "
        "timeout, then all restart). OnFailure/ExitCode: the operator restarts pods up to backoff_limit "
        "times. Retries across whole attempts: rerun_failed.",
    )
    backoff_limit: int = Field(
        default=3, ge=0, description="Restarts before the job fails (OnFailure/ExitCode)."
    )
    rerun_failed: bool = Field(
        default=False,
        description="When the step runs again (a KFP retry) and finds its job Failed: delete it and start "
        "a new one (with TrainConfig resume: auto it continues from the newest checkpoint). False: report "
        "the earlier failure again without spending GPU hours.",
    )
    clean_pod_policy: Literal["None", "Running", "All"] = Field(
        default="Running",
        description="Pods deleted when the job ends: Running frees the GPUs of replicas still running "
        "(e.g. workers stuck in a collective after another failed) and keeps finished pods' logs.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the finished job after this many seconds (None: keep)."
    )
    active_deadline_s: int | None = Field(
        default=None,
        ge=1,
        description="Server-side limit: the operator fails the job after this many seconds.",
    )
    timeout_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="How long the launcher waits (from its start) before giving up; the job is left running.",
    )
    poll_s: float = Field(default=30.0, gt=0, description="Seconds between status checks and log reads.")
    log_tail_lines: int = Field(
        default=50, ge=1, le=10_000, description="Master log lines kept for the failure message."
    )
    cleanup: Literal["delete", "keep"] = Field(
        default="keep", description="What the exit handler does with the job when the pipeline fails."
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if len(value) > MAX_JOB_NAME or not _DNS1035_RE.match(value):
            raise ValueError(
                f"invalid PyTorchJob name {value!r}: a lowercase letter, then letters, digits and '-', "
                f"at most {MAX_JOB_NAME} characters (pods append -worker-<index>); see job_name()"
            )
        return value

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if len(value) > 63 or not _DNS1123_LABEL_RE.match(value):
            raise ValueError(f"invalid namespace {value!r}")
        return value

    @field_validator("image")
    @classmethod
    def _check_image(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("image is empty: set the train image reference (containers/images.yaml)")
        if any(char.isspace() for char in value):
            raise ValueError(f"invalid image reference {value!r}: it contains whitespace")
        return value

    @field_validator("train_config")
    @classmethod
    def _check_train_config(cls, value: dict[str, Any]) -> dict[str, Any]:
        problems = list(_secret_problems(value, "train_config"))
        if problems:
            raise ValueError(
                "; ".join(problems) + ": the train config travels in plain text in the PyTorchJob; pass "
                "credentials with secret_env (Secret key references) instead"
            )
        from components.train.train import TrainConfig

        # Validate here, not first in every worker pod; the normalized form is what the workers get.
        return TrainConfig.model_validate(value).model_dump(mode="json")

    @field_validator("env_from_secrets")
    @classmethod
    def _check_secret_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if len(name) > 253 or not _DNS1123_SUBDOMAIN_RE.match(name):
                raise ValueError(f"invalid Secret name {name!r} in env_from_secrets")
        return value

    @field_validator("extra_env")
    @classmethod
    def _check_extra_env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _ENV_NAME_RE.match(name):
                raise ValueError(f"invalid environment variable name {name!r} in extra_env")
            kind = credential_in_value(text)
            if kind or looks_like_secret(name, text):
                what = f"holds what looks like {kind}" if kind else "looks like a credential"
                raise ValueError(
                    f"extra_env.{name} {what}: its value would be stored in plain text in the PyTorchJob; "
                    "use secret_env (a Secret key reference) instead"
                )
        return value

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            name = key.rsplit("/", 1)[-1]
            if (
                len(name) > 63
                or not _LABEL_NAME_RE.match(name)
                or len(label) > 63
                or not _LABEL_VALUE_RE.match(label)
            ):
                raise ValueError(f"invalid label {key}={label!r}")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> PyTorchJobSettings:
        if self.profile.gpus != self.gpus_per_node:
            raise ValueError(
                f"profile.gpus is {self.profile.gpus} but gpus_per_node is {self.gpus_per_node}: each "
                f"replica is one node and requests profile.gpus GPUs while torchrun starts gpus_per_node "
                f"processes; set the train profile's gpus to {self.gpus_per_node} (profiles file) or "
                f"gpus_per_node to {self.profile.gpus}"
            )
        names = [item.name for item in self.secret_env]
        names += [item.name for item in self.profile.secret_env if item.name not in names]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"secret_env sets {', '.join(duplicates)} more than once")
        clash = sorted(set(names) & set(self.extra_env))
        if clash:
            raise ValueError(f"{', '.join(clash)} set both in secret_env and extra_env")
        for name in [*names, *self.extra_env]:
            if name in RESERVED_ENV or name.startswith("PET_"):
                raise ValueError(
                    f"environment variable {name} is reserved: the Training Operator or the launcher sets it"
                )
        return self


@dataclass(frozen=True)
class JobOutcome:
    """How a launched (or re-attached) PyTorchJob ended."""

    name: str
    namespace: str
    state: str  # "Succeeded"
    seconds: float  # how long this launcher waited
    reattached: bool  # True when the job existed already (a retried step)


# ---------------------------------------------------------------------------------------------------------
# Building the job (pure functions)
# ---------------------------------------------------------------------------------------------------------


def _dns_part(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-")


def job_name(key: str, task: str) -> str:
    """The PyTorchJob name of one task for `key`: deterministic, DNS-1035, at most 50 characters.

    Pass values that stay the same when KFP retries the step (the pipeline passes train's output
    address, the CLI a digest of its settings; never the pod name), so a retry re-attaches to the job
    instead of starting a second one. The hash covers both inputs in full, so keys that share the kept
    prefix still get different names.
    """
    if not key.strip() or not task.strip():
        raise ValueError("job_name needs a non-empty key and task name")
    digest = hashlib.sha256(f"{key}\n{task}".encode()).hexdigest()[:8]
    prefix = "llmft-train-"
    room = MAX_JOB_NAME - len(prefix) - len(digest) - 1
    readable = _dns_part(key)[:room].strip("-")
    return f"{prefix}{readable}-{digest}" if readable else f"{prefix}{digest}"


@cache
def _api_client() -> ApiClient:
    # The SDK's ApiClient knows the kubeflow.org models as well as the Kubernetes ones.
    return ApiClient()


def to_dict(obj: Any) -> Any:
    """A model (or anything holding models) as plain JSON data, camelCase keys, unset fields omitted."""
    return _api_client().sanitize_for_serialization(obj)


def _deserialize(data: Mapping[str, Any], klass: str) -> Any:
    return _api_client().deserialize(FakeResponse(data), klass)


def _container_env(settings: PyTorchJobSettings, profile_env: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Env of the training container: config, NCCL/EFA defaults (extra_env wins), then Secret references."""
    # The profile's Secret references come back below, with the job's own (which win on a name).
    plain: dict[str, str] = {item["name"]: item["value"] for item in profile_env if "value" in item}
    if settings.profile.efa > 0:
        plain.update(EFA_EXTRA_ENV)
    plain.update(NCCL_ENV)
    plain.update(settings.extra_env)
    config_json = json.dumps(settings.train_config, sort_keys=True, separators=(",", ":"))
    env: list[dict[str, Any]] = [{"name": CONFIG_ENV, "value": config_json}]
    env += [{"name": name, "value": plain[name]} for name in sorted(plain)]
    secrets = {item.name: item for item in [*settings.profile.secret_env, *settings.secret_env]}
    env += [secrets[name].to_env() for name in sorted(secrets)]
    return env


def pod_template(settings: PyTorchJobSettings) -> dict[str, Any]:
    """The pod template of every replica (Master and Workers are identical; the operator sets the rank)."""
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": settings.image,
        "command": list(TRAIN_COMMAND),
        "ports": [{"name": MASTER_PORT_NAME, "containerPort": settings.master_port, "protocol": "TCP"}],
    }
    if settings.env_from_secrets:
        container["envFrom"] = [{"secretRef": {"name": name}} for name in settings.env_from_secrets]
    # GPU and EFA limits, /dev/shm emptyDir, tolerations, node selector, service account, pull secrets and
    # priority class all come from the one profile code path shared with KFP task pods.
    spec = apply_to_pod_spec({"containers": [container]}, settings.profile, containers=[CONTAINER_NAME])
    main = spec["containers"][0]
    main["env"] = _container_env(settings, main.get("env", []))
    metadata: dict[str, Any] = {"labels": {MANAGED_BY_LABEL: "llmft", JOB_LABEL: settings.name}}
    if settings.pod_annotations:
        metadata["annotations"] = dict(sorted(settings.pod_annotations.items()))
    return {"metadata": metadata, "spec": spec}


def _spec_hash(spec: Any) -> str:
    return hashlib.sha256(json.dumps(to_dict(spec), sort_keys=True).encode()).hexdigest()


def build_pytorchjob(settings: PyTorchJobSettings) -> models.KubeflowOrgV1PyTorchJob:
    """The PyTorchJob for `settings`: Master x1 + Worker x(nodes-1) (no Worker section for one node)."""
    if settings.nodes > 1 and settings.profile.efa == 0:
        log.warning("%d nodes without EFA: gradients cross nodes over TCP, which is slow", settings.nodes)
    if not settings.profile.shm_size:
        log.warning("the train profile mounts no /dev/shm: NCCL may fail in the 64 MiB container default")
    template_data = pod_template(settings)
    template = _deserialize(template_data, "V1PodTemplateSpec")
    if to_dict(template) != template_data:
        # A field the SDK's Kubernetes models do not know would be dropped silently on the way out.
        raise ValueError("the pod template holds fields unknown to the Kubernetes API models")

    def replica(count: int) -> models.KubeflowOrgV1ReplicaSpec:
        return models.KubeflowOrgV1ReplicaSpec(
            replicas=count, restart_policy=settings.restart_policy, template=copy.deepcopy(template)
        )

    replica_specs = {kf.REPLICA_TYPE_MASTER: replica(1)}
    if settings.nodes > 1:
        replica_specs[kf.REPLICA_TYPE_WORKER] = replica(settings.nodes - 1)
    spec = models.KubeflowOrgV1PyTorchJobSpec(
        nproc_per_node=str(settings.gpus_per_node),
        pytorch_replica_specs=replica_specs,
        run_policy=models.KubeflowOrgV1RunPolicy(
            backoff_limit=settings.backoff_limit,
            clean_pod_policy=settings.clean_pod_policy,
            ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
            active_deadline_seconds=settings.active_deadline_s,
        ),
    )
    labels = {MANAGED_BY_LABEL: "llmft", "app.kubernetes.io/component": "train", **settings.labels}
    return models.KubeflowOrgV1PyTorchJob(
        api_version=kf.API_VERSION,
        kind=kf.PYTORCHJOB_KIND,
        metadata=models.V1ObjectMeta(
            name=settings.name,
            namespace=settings.namespace,
            labels=dict(sorted(labels.items())),
            annotations={SPEC_HASH_ANNOTATION: _spec_hash(spec)},
        ),
        spec=spec,
    )


def manifest_yaml(job: models.KubeflowOrgV1PyTorchJob) -> str:
    """The job as YAML, keys sorted (the same job always prints the same text); used by --dry-run."""
    return yaml.safe_dump(to_dict(job), sort_keys=True, default_flow_style=False, width=2**16)


# ---------------------------------------------------------------------------------------------------------
# Talking to the cluster
# ---------------------------------------------------------------------------------------------------------


def _is_transient(error: Exception) -> bool:
    if isinstance(error, ApiException):
        return error.status in (0, 408, 429, 500, 502, 503, 504)
    return isinstance(error, urllib3.exceptions.HTTPError | OSError)


def _api_error(action: str, namespace: str, name: str, error: Exception) -> PyTorchJobError:
    if isinstance(error, ApiException) and error.status in (401, 403):
        return PyTorchJobError(
            f"not allowed to {action} PyTorchJob {namespace}/{name} ({error.status} {error.reason}): the "
            f"step's service account needs create/get/delete on pytorchjobs.kubeflow.org and get/list on "
            f"pods and pods/log in namespace {namespace}"
        )
    return PyTorchJobError(f"cannot {action} PyTorchJob {namespace}/{name}: {_describe(error)}")


def _read_job(client: TrainingClient, namespace: str, name: str) -> dict[str, Any] | None:
    """The job as plain data, or None if there is none (raw dicts: conditions are all we read)."""
    try:
        return client.custom_api.get_namespaced_custom_object(
            kf.GROUP, kf.VERSION, namespace, kf.PYTORCHJOB_PLURAL, name, _request_timeout=API_TIMEOUT_S
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def _read_job_or_raise(client: TrainingClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _read_job(client, namespace, name)
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
        raise _api_error("read", namespace, name, error) from error


def job_state(job: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The job's state from its conditions ("Pending" before the operator wrote any), and that condition.

    A terminal condition wins over the others; otherwise the latest condition whose status is True.
    """
    conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    for terminal in ("Failed", "Succeeded"):
        for condition in conditions:
            if condition.get("type") == terminal:
                return terminal, condition
    if conditions:
        return str(conditions[-1].get("type")), conditions[-1]
    return "Pending", {}


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes} min"


def _ts_key(stamp: str) -> tuple[str, str] | None:
    """Sortable key of an RFC 3339 timestamp as the kubelet writes it (fraction of variable length)."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z", stamp)
    return None if match is None else (match.group(1), (match.group(2) or "").ljust(9, "0"))


def _print_line(line: str) -> None:
    print(line, flush=True)  # flush: the step's stdout is a pipe, and a buffered line shows up hours late


class _MasterLog:
    """Follows the master pod's log by polling: bounded reads, overlapping windows, deduplicated by timestamp.

    Polling (not a follow stream) keeps every request bounded in time and size, survives container
    restarts and API hiccups, and needs no thread. Logs are best effort: problems are logged, never raised.
    """

    def __init__(
        self,
        core: CoreV1Api,
        namespace: str,
        job: str,
        sink: Callable[[str], None],
        tail: int,
        from_start: bool,
    ) -> None:
        self.core = core
        self.namespace = namespace
        self.job = job
        self.sink = sink
        self.tail_size = tail
        self.tail: deque[str] = deque(maxlen=tail)
        self.from_start = from_start
        self.pod: dict[str, Any] | None = None
        self._last_read: float | None = None
        self._last_key: tuple[str, str] | None = None
        self._seen_at_last_key: set[str] = set()
        self._restarts = 0
        self._warned = False
        self._pod_note = ""

    def _unavailable(self, why: str) -> None:
        if not self._warned:
            log.warning("master logs unavailable (%s); still watching the job", why)
            self._warned = True
        else:
            log.debug("master logs unavailable: %s", why)

    def job_pods(self, role: str | None = None) -> list[dict[str, Any]]:
        selector = f"{kf.JOB_NAME_LABEL}={self.job}" + (f",{kf.JOB_ROLE_LABEL}={role}" if role else "")
        found = self.core.list_namespaced_pod(
            self.namespace, label_selector=selector, _request_timeout=API_TIMEOUT_S
        )
        pods = [to_dict(pod) for pod in found.items]
        # Filter here too: the selector is the server's job, but a partial API must not mix jobs up.
        wanted = {kf.JOB_NAME_LABEL: self.job, **({kf.JOB_ROLE_LABEL: role} if role else {})}
        return [p for p in pods if wanted.items() <= ((p.get("metadata") or {}).get("labels") or {}).items()]

    def _report_pod(self, pod: dict[str, Any]) -> None:
        """Warn (once per change) why the master is not running: unschedulable, image or Secret missing..."""
        status = pod.get("status") or {}
        note = ""
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                note = f"is not scheduled: {condition.get('message') or condition.get('reason')}"
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                note = (
                    f"container {container.get('name')} is waiting: {waiting.get('reason')}"
                    f" {waiting.get('message') or ''}".rstrip()
                )
        if note and note != self._pod_note:
            log.warning("master pod %s %s", pod["metadata"]["name"], note)
        self._pod_note = note

    def _read(self, pod: str, previous: bool = False, tail_lines: int | None = None) -> str:
        options: dict[str, Any] = {"container": CONTAINER_NAME, "timestamps": True}
        options["limit_bytes"] = LOG_READ_LIMIT_BYTES
        if previous:
            options["previous"] = True
        if tail_lines is not None:
            options["tail_lines"] = tail_lines
        elif self._last_read is not None:
            options["since_seconds"] = int(time.monotonic() - self._last_read) + LOG_WINDOW_MARGIN_S
        # Raw bytes: the client would otherwise try to parse a log that happens to look like JSON.
        response = self.core.read_namespaced_pod_log(
            pod, self.namespace, _preload_content=False, _request_timeout=API_TIMEOUT_S, **options
        )
        try:
            return response.data.decode("utf-8", errors="replace")
        finally:
            response.release_conn()

    def _emit(self, text: str) -> None:
        for raw in text.splitlines():
            stamp, _, line = raw.partition(" ")
            key = _ts_key(stamp)
            if key is None:
                line = raw  # no timestamp to deduplicate by: show it as it is
            elif self._last_key is not None and key < self._last_key:
                continue  # read before, in the overlap of two windows
            elif key == self._last_key:
                if raw in self._seen_at_last_key:
                    continue
                self._seen_at_last_key.add(raw)
            else:
                self._last_key, self._seen_at_last_key = key, {raw}
            self.tail.append(line)
            self.sink(f"[master] {line}")

    def pump(self) -> None:
        """Read what the master wrote since the last call and pass it to the sink."""
        try:
            masters = self.job_pods(role="master")
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            self._unavailable(f"cannot list pods: {_describe(error)}")
            return
        if not masters:
            return  # the operator has not created the master pod yet
        self.pod = masters[0]
        self._report_pod(self.pod)
        name = self.pod["metadata"]["name"]
        statuses = (self.pod.get("status") or {}).get("containerStatuses") or []
        status = next((s for s in statuses if s.get("name") == CONTAINER_NAME), None)
        if status is None:
            return  # scheduled but no container yet
        started = time.monotonic()
        first_tail = None if self._last_read is not None or self.from_start else self.tail_size
        try:
            restarts = int(status.get("restartCount") or 0)
            if restarts > self._restarts:
                # The container restarted since the last read: its last words are in the previous instance.
                self._emit(self._read(name, previous=True, tail_lines=first_tail))
                self._restarts = restarts
            if "waiting" in (status.get("state") or {}):
                return  # creating or crash-looping: the current instance has no log yet
            self._emit(self._read(name, tail_lines=first_tail))
            self._last_read = started
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            self._unavailable(_describe(error))

    def failure_details(self) -> list[str]:
        """One line per replica whose container ended badly, then the last lines of a failed worker."""
        try:
            pods = sorted(self.job_pods(), key=lambda pod: pod["metadata"]["name"])
        except (ApiException, urllib3.exceptions.HTTPError, OSError):
            return []
        problems: list[str] = []
        failed_worker: str | None = None
        for pod in pods:
            name = pod["metadata"]["name"]
            role = (pod["metadata"].get("labels") or {}).get(kf.JOB_ROLE_LABEL)
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                state, last = status.get("state") or {}, status.get("lastState") or {}
                ended = state.get("terminated") or last.get("terminated")
                if not ended or ended.get("exitCode") == 0:
                    continue
                problems.append(
                    f"pod {name}: container {status.get('name')} exited with code {ended.get('exitCode')}"
                    f" ({ended.get('reason') or 'no reason given'}),"
                    f" {status.get('restartCount', 0)} restart(s)"
                )
                if role != "master" and failed_worker is None and status.get("name") == CONTAINER_NAME:
                    failed_worker = name
        if failed_worker is not None:
            try:
                text = self._read(failed_worker, tail_lines=min(self.tail_size, 20))
            except (ApiException, urllib3.exceptions.HTTPError, OSError):
                return problems
            lines = [
                raw.partition(" ")[2] if _ts_key(raw.partition(" ")[0]) else raw for raw in text.splitlines()
            ]
            problems += [f"last lines of {failed_worker}:", *(f"  {line}" for line in lines)]
        return problems


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"{error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"


def _default_client(namespace: str) -> TrainingClient:
    # In a pod this loads the in-cluster config (the step's service account); elsewhere ~/.kube/config.
    return TrainingClient(namespace=namespace)


def _create(client: TrainingClient, job: models.KubeflowOrgV1PyTorchJob) -> bool:
    """Create the job; False if a job of that name appeared meanwhile (a parallel retry): re-attach then.

    Through the SDK client's CustomObjectsApi rather than TrainingClient.create_job, which has no request
    timeout and folds every HTTP status into one RuntimeError (409 must mean "re-attach").
    """
    namespace, name = job.metadata.namespace, job.metadata.name
    try:
        client.custom_api.create_namespaced_custom_object(
            kf.GROUP,
            kf.VERSION,
            namespace,
            kf.PYTORCHJOB_PLURAL,
            to_dict(job),
            _request_timeout=API_TIMEOUT_S,
        )
    except ApiException as error:
        if error.status == 409:
            return False
        if error.status == 404:
            raise PyTorchJobError(
                f"cannot create PyTorchJob {namespace}/{name}: the API server has no resource "
                "pytorchjobs.kubeflow.org; install the Kubeflow Training Operator (v1) on the cluster"
            ) from error
        raise _api_error("create", namespace, name, error) from error
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise _api_error("create", namespace, name, error) from error
    return True


def launch(
    settings: PyTorchJobSettings,
    client: TrainingClient | None = None,
    log_sink: Callable[[str], None] = _print_line,
) -> JobOutcome:
    """Create the PyTorchJob (or re-attach to it), stream the master's log, and wait until it ends.

    Returns on Succeeded. Raises PyTorchJobFailed (operator reason + message, failed replicas, the master's
    last lines) on Failed, PyTorchJobTimeout after `timeout_s` (the job is left running), PyTorchJobError
    when the API refuses or the job disappears. Status is read from the job's conditions directly:
    TrainingClient.wait_for_job_conditions only raises on Failed when Failed is not an expected condition,
    and its poll count is timeout / interval, which drifts by the time each poll takes.
    """
    client = client or _default_client(settings.namespace)
    job = build_pytorchjob(settings)
    name, namespace = settings.name, settings.namespace
    started = time.monotonic()
    existing = _read_job_or_raise(client, namespace, name)
    # A failed job of another pipeline run (same inputs, so same name) is not this step's earlier
    # attempt: the new run trains again instead of reporting the old run's failure.
    from_other_run = existing is not None and _run_label(existing) != settings.labels.get(RUN_LABEL)
    if (
        existing is not None
        and (settings.rerun_failed or from_other_run)
        and job_state(existing)[0] == "Failed"
    ):
        _, condition = job_state(existing)
        log.warning(
            "PyTorchJob %s/%s failed in %s (%s: %s): replacing it",
            namespace,
            name,
            "another pipeline run" if from_other_run else "an earlier attempt (rerun_failed is set)",
            condition.get("reason", "Failed"),
            condition.get("message", ""),
        )
        _delete_and_wait(client, namespace, name, poll_s=settings.poll_s)
        existing = None
    reattached = existing is not None or not _create(client, job)
    if reattached:
        existing = existing or _read_job_or_raise(client, namespace, name) or {}
        state, _ = job_state(existing)
        log.info("re-attaching to existing PyTorchJob %s/%s (%s)", namespace, name, state)
        previous = ((existing.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        if previous and previous != job.metadata.annotations[SPEC_HASH_ANNOTATION]:
            log.warning(
                "PyTorchJob %s/%s was created from other settings than this attempt's; following it as it is",
                namespace,
                name,
            )
    else:
        log.info(
            "created PyTorchJob %s/%s: %d node(s) x %d GPU(s), %d EFA interface(s) per node",
            namespace,
            name,
            settings.nodes,
            settings.gpus_per_node,
            settings.profile.efa,
        )
    master_log = _MasterLog(
        client.core_api, namespace, name, log_sink, settings.log_tail_lines, from_start=not reattached
    )
    state = _wait(client, settings, master_log, started)
    seconds = time.monotonic() - started
    log.info("PyTorchJob %s/%s %s after %s", namespace, name, state, _duration(seconds))
    return JobOutcome(name=name, namespace=namespace, state=state, seconds=seconds, reattached=reattached)


def _run_label(job: Mapping[str, Any]) -> str | None:
    return ((job.get("metadata") or {}).get("labels") or {}).get(RUN_LABEL)


def jobs_of_run(pipeline_run: str, namespace: str, client: TrainingClient | None = None) -> list[str]:
    """Names of the PyTorchJobs labelled with `pipeline_run` in `namespace` (sorted); [] if unreadable.

    The exit handler's look-up: it must record the run's outcome even when the API refuses, so an
    error is logged, not raised.
    """
    client = client or _default_client(namespace)
    try:
        found = client.custom_api.list_namespaced_custom_object(
            kf.GROUP,
            kf.VERSION,
            namespace,
            kf.PYTORCHJOB_PLURAL,
            label_selector=f"{RUN_LABEL}={pipeline_run}",
            _request_timeout=API_TIMEOUT_S,
        )
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
        log.warning(
            "cannot list the PyTorchJobs of run %s in %s: %s", pipeline_run, namespace, _describe(error)
        )
        return []
    return sorted(str(item["metadata"]["name"]) for item in found.get("items") or [])


def _wait(
    client: TrainingClient, settings: PyTorchJobSettings, master_log: _MasterLog, started: float
) -> str:
    name, namespace = settings.name, settings.namespace
    deadline = started + settings.timeout_s
    state, errors, last_state, heartbeat = "Pending", 0, "", started
    condition: dict[str, Any] = {}
    silent_warned = False
    while True:
        try:
            job = _read_job(client, namespace, name)
            errors = 0
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            if not _is_transient(error) or errors + 1 >= MAX_API_ERRORS:
                raise _api_error("read", namespace, name, error) from error
            errors += 1
            log.warning("reading PyTorchJob %s/%s failed (%s); retrying", namespace, name, error)
            job = {}
        if job is None:
            raise PyTorchJobError(
                f"PyTorchJob {namespace}/{name} was deleted while the launcher waited for it"
            )
        if job:
            state, condition = job_state(job)
            if state != last_state:
                log.info("PyTorchJob %s/%s: %s. %s", namespace, name, state, condition.get("message", ""))
                last_state = state
        now = time.monotonic()
        if state == "Pending" and not silent_warned and now - started >= OPERATOR_SILENT_S:
            log.warning(
                "PyTorchJob %s/%s has no status after %s: is the Training Operator running and watching "
                "namespace %s?",
                namespace,
                name,
                _duration(now - started),
                namespace,
            )
            silent_warned = True
        master_log.pump()
        if state == "Succeeded":
            return state
        if state == "Failed":
            raise PyTorchJobFailed(
                name,
                namespace,
                reason=str(condition.get("reason") or "Failed"),
                message=str(condition.get("message") or "no message from the operator"),
                log_tail=list(master_log.tail),
                pod_problems=master_log.failure_details(),
            )
        now = time.monotonic()
        if now >= deadline:
            raise PyTorchJobTimeout(name, namespace, settings.timeout_s, state)
        if now - heartbeat >= HEARTBEAT_S:
            log.info("PyTorchJob %s/%s still %s after %s", namespace, name, state, _duration(now - started))
            heartbeat = now
        time.sleep(min(settings.poll_s, max(deadline - now, 0.0)))


def cleanup(
    name: str,
    namespace: str,
    policy: Literal["delete", "keep"],
    client: TrainingClient | None = None,
) -> bool:
    """The exit handler's clean-up after a failed run; True if the job was deleted.

    `delete` removes the job (its pods and Services go with it, through their owner references);
    `keep` leaves it for inspection and warns when it still runs and holds GPUs. A missing job is no
    error: the run may have failed before the train step created it.
    """
    if policy not in ("delete", "keep"):
        raise ValueError(f"unknown cleanup policy {policy!r}: use delete or keep")
    client = client or _default_client(namespace)
    if policy == "keep":
        try:
            job = _read_job(client, namespace, name)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            log.warning("cannot read PyTorchJob %s/%s to report on it: %s", namespace, name, error)
            return False
        if job is None:
            log.info("no PyTorchJob %s/%s to keep", namespace, name)
        elif (state := job_state(job)[0]) not in TERMINAL_STATES:
            log.warning(
                "keeping PyTorchJob %s/%s, which is still %s and holds its GPUs; delete it with "
                "`kubectl -n %s delete pytorchjob %s`",
                namespace,
                name,
                state,
                namespace,
                name,
            )
        else:
            log.info("keeping PyTorchJob %s/%s (%s) for inspection", namespace, name, state)
        return False
    if not _delete(client, namespace, name):
        log.info("no PyTorchJob %s/%s to delete", namespace, name)
        return False
    log.info("deleted PyTorchJob %s/%s", namespace, name)
    return True


def _delete(client: TrainingClient, namespace: str, name: str, foreground: bool = False) -> bool:
    """Delete the job; False if there was none. Its pods and Services go too (owner references)."""
    try:
        client.custom_api.delete_namespaced_custom_object(
            kf.GROUP,
            kf.VERSION,
            namespace,
            kf.PYTORCHJOB_PLURAL,
            name,
            body=V1DeleteOptions(propagation_policy="Foreground" if foreground else "Background"),
            _request_timeout=API_TIMEOUT_S,
        )
    except ApiException as error:
        if error.status == 404:
            return False
        raise _api_error("delete", namespace, name, error) from error
    except (urllib3.exceptions.HTTPError, OSError) as error:
        raise _api_error("delete", namespace, name, error) from error
    return True


def _delete_and_wait(
    client: TrainingClient, namespace: str, name: str, poll_s: float, timeout_s: float = DELETE_TIMEOUT_S
) -> None:
    """Delete the job and wait until it is gone, so a new one of the same name can be created.

    Foreground: the job object stays until its pods are gone, so the new job's pods (same names) do not
    collide with the old ones still terminating.
    """
    _delete(client, namespace, name, foreground=True)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if _read_job(client, namespace, name) is None:
                return
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as error:
            if not _is_transient(error):
                raise _api_error("read", namespace, name, error) from error
        if time.monotonic() >= deadline:
            raise PyTorchJobError(
                f"PyTorchJob {namespace}/{name} was deleted but is still there after {_duration(timeout_s)}"
            )
        time.sleep(min(poll_s, 5.0))
