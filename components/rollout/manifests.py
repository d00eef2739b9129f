"""Kubernetes objects of the `kubernetes` rollout target: pure functions from typed settings to manifests.

`KubernetesSettings` is what a user sets (namespace, replicas, the Triton pods' `ResourceProfile`, where
the model repository comes from, autoscaling); `ServingPlan` is those settings resolved against one model
repository (image, Triton's repository URL, GPUs the engine needs); `build_manifests(plan)` returns the
Service, Deployment and optional HorizontalPodAutoscaler as plain dicts, in the order they are applied.
Nothing here talks to a cluster: `cluster_api.py` does that, `kubernetes_target.py` runs the flow.

Why the Deployment looks the way it does:
- tritonserver listens on 8000 (HTTP/REST), 8001 (gRPC) and 8002 (Prometheus metrics), its defaults.
- Probes hit Triton's own health endpoints on the HTTP port: the startup probe waits for
  /v2/health/ready (every model loaded; large models take minutes, so its budget is
  `model_load_timeout_s`), readiness keeps polling it, liveness polls /v2/health/live. Without the
  startup probe, liveness would kill a pod that is still loading weights.
- RollingUpdate with maxUnavailable 0: the old revision keeps serving until a new pod is ready, so a
  new revision that never becomes ready costs no capacity (maxSurge 1 needs room for one more pod).
- The model repository is read by Triton itself from s3:// (credentials as env vars from a Secret,
  through secretKeyRef; or the pod's IAM role) or from a PersistentVolumeClaim mounted read-only.
- Except where the repository's models open files by absolute path (`trtllm-engine`: the tensorrtllm
  backend's gpt_model_path lies under the build's `model_repository_path`): Triton would download an
  s3:// repository to a temporary directory where that path does not exist. Such a repository is put at
  exactly `model_repository_path`: copied from S3 by an init container (the llmft base image,
  fetch_repository.py, checked against the manifest) into an emptyDir mounted there in both containers,
  or a PVC's `pvc_path` mounted there (subPath). tritonserver then reads that local path, and gets no S3
  credentials: only the init container reads S3.
- A trtllm-engine over more than one GPU (tensor_parallel x pipeline_parallel) runs in the tensorrtllm
  backend's MPI leader mode: the container's command is mpirun with one tritonserver per GPU, built as
  NVIDIA's launch_triton_server.py builds it (`mpi_launch_args`); a multi-GPU trtllm-llmapi model runs
  under `mpirun -n 1` as its docs launch it, the LLM API spawning its own workers (`triton_launch`).
- GPUs, EFA, /dev/shm (the python backend and NCCL exchange tensors through it), tolerations, node
  selector, pull secrets, priority class and service account come from the pods' `ResourceProfile`
  through `components.resources.apply_to_pod_spec`, the same code PyTorchJob workers use.
- Triton never talks to the Kubernetes API: no service account token is mounted.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from components import storage
from components.resources import (
    SHM_MOUNT_PATH,
    ResourceProfile,
    apply_to_pod_spec,
    cpu_cores,
    memory_bytes,
    preset_profiles,
)
from components.serving_compat import ENGINE_MODE, LLMAPI_MODE

CONTAINER_NAME = "tritonserver"
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
MODELS_VOLUME = "model-repository"
MODELS_MOUNT = "/models"
FETCH_CONTAINER_NAME = "fetch-repository"
FETCH_MODULE = "components.rollout.fetch_repository"
# The metadata key build writes when the repository's models open files by absolute path under it.
REPOSITORY_PATH_KEY = "model_repository_path"
# Room in the emptyDir beyond the repository's files: filesystem blocks, the manifest, a boto3 temp file.
FETCH_MARGIN_FRACTION = Decimal("0.1")
FETCH_MARGIN_BYTES = 2**30
TRITON_UID = 1000  # the triton-server user of NGC tritonserver images, and the uid of llmft's images

MANAGED_BY = "llmft"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
VERSION_LABEL = "app.kubernetes.io/version"
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
APP_NAME = "tritonserver"
MODEL_ANNOTATION = "llmft.io/model"
REPOSITORY_ANNOTATION = "llmft.io/repository"
REPOSITORY_DIGEST_ANNOTATION = "llmft.io/repository-sha256"
MAX_NAME = 63  # Service names are DNS-1035 labels
NAME_PREFIX = "triton-"  # also makes every name start with a letter, as DNS-1035 requires

# Startup probe period; its failure threshold is derived from model_load_timeout_s.
STARTUP_PERIOD_S = 10

_DNS1035_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
_ENDPOINT_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_HOST_PORT_RE = re.compile(r"^[A-Za-z0-9.-]+:[0-9]{1,5}$")
_METRIC_NAME_RE = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")


class ManifestError(ValueError):
    """The settings cannot make valid manifests for this repository; the message names the field."""


def default_server_profile() -> ResourceProfile:
    """The Triton pods' profile when none is given: the p5 preset's build step (the GPU pool the engine
    was built on); `size_to_engine` then cuts it down to the GPUs the engine needs."""
    return preset_profiles("p5").build


class KubernetesSettings(BaseModel):
    """Where and how the `kubernetes` target runs Triton."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    namespace: str = Field(default="llmft", description="Namespace of the Deployment, Service and HPA.")
    name: str | None = Field(
        default=None,
        description="Name of the Deployment, Service and HPA (a DNS-1035 label); default: derived from the "
        "registered model name (else the served model name), so every run of one model updates the same "
        "Deployment.",
    )
    replicas: int = Field(default=1, ge=1, description="Triton pods (the HPA's minimum when autoscaling).")
    image: str | None = Field(
        default=None,
        description="tritonserver image; default: the triton_image the build recorded (TensorRT-LLM "
        "modes), else default_image.",
    )
    default_image: str | None = Field(
        default=None,
        description="Image for repositories whose build recorded no triton_image (serving mode hf: "
        "tritonserver with the python backend, torch and transformers); default: the trtllm image of "
        "containers/images.yaml.",
    )
    profile: ResourceProfile = Field(
        default_factory=default_server_profile,
        description="Cluster profile of each Triton pod: GPUs, EFA, /dev/shm, CPU/memory, tolerations, node "
        "selector (GPU product), service account, pull secrets, priority class (components.resources).",
    )
    size_to_engine: bool = Field(
        default=True,
        description="Give each pod the GPUs the engine needs (tensor_parallel x pipeline_parallel, 1 without "
        "them), scaling the profile's CPU, memory and /dev/shm in proportion; off: use the profile as is.",
    )
    s3_credentials_secret: str | None = Field(
        default=None,
        description="Secret holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and optionally "
        "AWS_SESSION_TOKEN) for Triton's S3 reads, passed by secretKeyRef; unset: the pod's own identity "
        "(IRSA through the profile's service account).",
    )
    s3_region: str | None = Field(
        default=None,
        description="AWS_DEFAULT_REGION for Triton's S3 client (set it when the bucket's region differs "
        "from the cluster's).",
    )
    s3_endpoint: str | None = Field(
        default=None,
        description="S3-compatible endpoint, e.g. https://minio.minio.svc:9000 (Triton reads "
        "s3://<endpoint>/<bucket>/<path>); unset: AWS S3.",
    )
    pvc_claim: str | None = Field(
        default=None,
        description="Serve the repository from this PersistentVolumeClaim (mounted read-only at /models; a "
        "trtllm-engine repository's pvc_path at its model_repository_path) instead of S3; `repository` is "
        "then where this step reads the repository's manifest.",
    )
    pvc_path: str = Field(default="", description="Path of the repository inside the claim.")
    fetch_image: str | None = Field(
        default=None,
        description="Image of the init container that copies a trtllm-engine repository from S3 to its "
        "model_repository_path in the pod (it runs python -m components.rollout.fetch_repository); "
        "default: the base image of containers/images.yaml.",
    )
    pod_annotations: dict[str, str] = Field(
        default_factory=dict, description="Extra annotations on the Triton pods (e.g. for a service mesh)."
    )
    model_load_timeout_s: int = Field(
        default=1800, ge=10, description="Startup probe budget: seconds a pod may take to load its models."
    )
    autoscale_max_replicas: int = Field(
        default=0, ge=0, description="Above 0: a HorizontalPodAutoscaler scales replicas up to this many."
    )
    autoscale_cpu_utilization: int = Field(
        default=80,
        ge=1,
        le=100,
        description="HPA target: average CPU utilization, in percent of the CPU request.",
    )
    autoscale_pods_metric: str | None = Field(
        default=None,
        description="HPA target instead of CPU: a per-pod custom metric served by a metrics adapter "
        "(e.g. Prometheus Adapter exposing a Triton queue-time metric).",
    )
    autoscale_pods_target: str = Field(
        default="1", description="Average value of autoscale_pods_metric per pod to aim for (a quantity)."
    )
    timeout_s: float = Field(
        default=2400, gt=0, description="Seconds to wait for the new revision to be rolled out and available."
    )
    poll_s: float = Field(default=5.0, gt=0, le=60, description="Seconds between Deployment status reads.")
    http_url: str | None = Field(
        default=None,
        description="Reach the Service's HTTP port here for the smoke test (e.g. a kubectl port-forward, "
        "http://127.0.0.1:8000); default: its cluster DNS name.",
    )
    grpc_url: str | None = Field(
        default=None,
        description="Reach the Service's gRPC port here (host:port); default: its cluster DNS name.",
    )
    cluster_domain: str = Field(default="cluster.local", description="The cluster's DNS domain.")

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        if len(value) > 63 or not _DNS1123_LABEL_RE.match(value):
            raise ValueError(f"namespace {value!r} is not a DNS-1123 label (lowercase alphanumerics and '-')")
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > MAX_NAME or not _DNS1035_RE.match(value)):
            raise ValueError(
                f"name {value!r} is not a DNS-1035 label: start with a letter, lowercase alphanumerics and "
                f"'-', at most {MAX_NAME} characters"
            )
        return value

    @field_validator("s3_credentials_secret", "pvc_claim")
    @classmethod
    def _check_object_name(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 253 or not _DNS1123_SUBDOMAIN_RE.match(value)):
            raise ValueError(f"{value!r} is not a valid Kubernetes object name")
        return value

    @field_validator("s3_endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not _ENDPOINT_RE.match(value):
            raise ValueError(f"s3_endpoint {value!r} must look like https://host[:port] (no path)")
        return value

    @field_validator("grpc_url")
    @classmethod
    def _check_grpc_url(cls, value: str | None) -> str | None:
        if value is not None and not _HOST_PORT_RE.match(value):
            raise ValueError(f"grpc_url {value!r} must be host:port")
        return value

    @field_validator("http_url")
    @classmethod
    def _check_http_url(cls, value: str | None) -> str | None:
        if value is not None and not _ENDPOINT_RE.match(value):
            raise ValueError(f"http_url {value!r} must look like http://host:port")
        return value

    @field_validator("autoscale_pods_metric")
    @classmethod
    def _check_metric(cls, value: str | None) -> str | None:
        if value is not None and not _METRIC_NAME_RE.match(value):
            raise ValueError(f"autoscale_pods_metric {value!r} is not a metric name")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> KubernetesSettings:
        if self.autoscale_max_replicas and self.autoscale_max_replicas < self.replicas:
            raise ValueError(
                f"autoscale_max_replicas {self.autoscale_max_replicas} is below replicas {self.replicas}"
            )
        if self.pvc_path.startswith("/") or ".." in self.pvc_path.split("/"):
            raise ValueError(f"pvc_path {self.pvc_path!r} must be a relative path inside the claim")
        if self.pvc_path and not self.pvc_claim:
            raise ValueError("pvc_path is set but pvc_claim is not")
        return self


@dataclass(frozen=True)
class RepositoryFetch:
    """The init container that copies an S3 repository to its pinned path in the pod (an emptyDir)."""

    source: str  # the s3:// repository
    path: str  # where it goes: the repository's model_repository_path
    image: str  # the llmft base image (fetch_repository.py, boto3)
    size_limit: str  # the emptyDir's sizeLimit, from the manifest's file sizes (`repository_volume_size`)


@dataclass(frozen=True)
class TritonLaunch:
    """How the pod starts tritonserver: one process, or `mpi_ranks` of them under mpirun (`triton_launch`)."""

    mpi_ranks: int = 0  # 0: tritonserver itself is the container's command, no MPI launcher


SINGLE_PROCESS = TritonLaunch()


@dataclass(frozen=True)
class ServingPlan:
    """`KubernetesSettings` resolved against one model repository: everything the manifests say."""

    name: str
    settings: KubernetesSettings
    profile: ResourceProfile  # sized for the engine
    image: str
    model_name: str
    repository: str  # where the step read the repository (its manifest)
    repository_digest: str
    triton_repository: str  # what tritonserver's --model-repository gets
    # Where the repository must sit in the tritonserver container (its models open files by absolute
    # path, see `pinned_repository_path`); None: Triton may read it from anywhere.
    repository_path: str | None = None
    fetch: RepositoryFetch | None = None  # set: an init container copies the repository from S3 first
    launch: TritonLaunch = SINGLE_PROCESS  # how tritonserver is started (`triton_launch`)

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    @property
    def selector(self) -> dict[str, str]:
        return {NAME_LABEL: APP_NAME, INSTANCE_LABEL: self.name}

    @property
    def labels(self) -> dict[str, str]:
        return {
            **self.selector,
            VERSION_LABEL: self.repository_digest[:12],
            COMPONENT_LABEL: "inference-server",
            PART_OF_LABEL: "llmft",
            MANAGED_BY_LABEL: MANAGED_BY,
        }


# ---------------------------------------------------------------------------------------------------------
# Names and sizes
# ---------------------------------------------------------------------------------------------------------


def _dns_part(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-")


def release_name(model: str) -> str:
    """The Deployment/Service/HPA name of a model: `triton-<model>`, a DNS-1035 label of <= 63 characters.

    Deterministic, so a retried step or the next pipeline run of the same model updates the same
    Deployment. A hash suffix keeps names apart when the model name had to be shortened or changed.
    """
    if not model.strip():
        raise ManifestError("release_name needs a non-empty model name")
    part = _dns_part(model)
    name = f"{NAME_PREFIX}{part}"
    if part == model and len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    room = MAX_NAME - len(NAME_PREFIX) - len(digest) - 1
    part = part[:room].strip("-")
    return f"{NAME_PREFIX}{part}-{digest}" if part else f"{NAME_PREFIX}{digest}"


def _format_cpu(cores: Decimal) -> str:
    millis = int(cores * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{max(millis, 1)}m"


def _format_memory(size: int) -> str:
    """Whole Gi when exact, else whole Mi (rounded down: a share never exceeds the node's)."""
    if size % 2**30 == 0:
        return f"{size // 2**30}Gi"
    return f"{size // 2**20}Mi" if size >= 2**20 else str(size)


def sized_profile(profile: ResourceProfile, gpus: int) -> ResourceProfile:
    """`profile` cut to `gpus` GPUs, with CPU, memory and /dev/shm scaled in the same proportion.

    A profile describing a whole node (the build step's: 8 GPUs, 96 CPUs, 1000Gi) becomes one pod's share
    of it. CPU profiles (no GPUs) are returned unchanged: there is nothing to scale by.
    """
    if profile.gpus == 0 or gpus == profile.gpus:
        return profile
    share = Decimal(gpus) / Decimal(profile.gpus)

    def memory(value: str | None) -> str | None:
        return None if value is None else _format_memory(int(memory_bytes(value) * share))

    def cpu(value: str | None) -> str | None:
        return None if value is None else _format_cpu(cpu_cores(value) * share)

    update = {
        "gpus": gpus,
        "cpu_request": cpu(profile.cpu_request),
        "cpu_limit": cpu(profile.cpu_limit),
        "memory_request": memory(profile.memory_request),
        "memory_limit": memory(profile.memory_limit),
        "shm_size": memory(profile.shm_size),
    }
    return ResourceProfile.model_validate({**profile.model_dump(), **update})


def engine_gpus(metadata: Mapping[str, Any]) -> int:
    """GPUs one Triton pod needs for the repository: tensor_parallel x pipeline_parallel, else 1."""
    try:
        tensor = int(metadata.get("tensor_parallel") or 1)
        pipeline = int(metadata.get("pipeline_parallel") or 1)
    except (TypeError, ValueError) as error:
        raise ManifestError(
            f"repository metadata tensor_parallel={metadata.get('tensor_parallel')!r} / pipeline_parallel="
            f"{metadata.get('pipeline_parallel')!r} are not integers"
        ) from error
    if tensor < 1 or pipeline < 1:
        raise ManifestError(f"repository metadata asks for {tensor} x {pipeline} GPUs")
    return tensor * pipeline


def pod_profile(settings: KubernetesSettings, metadata: Mapping[str, Any]) -> ResourceProfile:
    """The Triton pods' profile for this repository (see `KubernetesSettings.size_to_engine`)."""
    needed = engine_gpus(metadata)
    profile = settings.profile
    if settings.size_to_engine and profile.gpus:
        return sized_profile(profile, needed)
    engine_built = "tensor_parallel" in metadata or "pipeline_parallel" in metadata
    if engine_built and profile.gpus != needed:
        raise ManifestError(
            f"kubernetes.profile.gpus is {profile.gpus} but the engine needs tensor_parallel x "
            f"pipeline_parallel = {needed} GPUs per pod; set it to {needed} or turn size_to_engine on"
        )
    return profile


def triton_launch(metadata: Mapping[str, Any]) -> TritonLaunch:
    """How tritonserver must be started for the repository, as NVIDIA's launch script starts it.

    trtllm-engine across tensor_parallel x pipeline_parallel > 1 GPUs runs in the tensorrtllm backend's
    leader mode, its documented default: one tritonserver per GPU under mpirun, rank 0 serving and the
    others running the engine's shards (orchestrator mode, TRTLLM_ORCHESTRATOR=1, is for several models
    in one server and spawns its workers with MPI_Comm_spawn). trtllm-llmapi is launched as its docs
    launch it, world size 1 (`mpirun -n 1`): the LLM API spawns its own tensor/pipeline-parallel workers
    from model.yaml's sizes. One GPU, and the hf mode, keep a plain tritonserver.
    """
    gpus = engine_gpus(metadata)
    if gpus == 1:
        return SINGLE_PROCESS
    mode = metadata.get("serving_mode")
    if mode == ENGINE_MODE:
        return TritonLaunch(mpi_ranks=gpus)
    if mode == LLMAPI_MODE:
        return TritonLaunch(mpi_ranks=1)
    return SINGLE_PROCESS


def gpu_product_of(profile: ResourceProfile) -> str | None:
    """The GPU product the pods are pinned to (node selector), if any."""
    return profile.effective_node_selector().get(profile.gpu_product_label)


def pinned_repository_path(metadata: Mapping[str, Any]) -> str | None:
    """Where the repository must sit in the tritonserver container, or None when anywhere will do.

    Build records `model_repository_path` for repositories whose models open files by absolute path
    (trtllm-engine: the engine at `<model_repository_path>/tensorrt_llm/1/engine`). The hf and
    trtllm-llmapi models resolve their files relative to their version directory and record none.
    """
    path = metadata.get(REPOSITORY_PATH_KEY)
    if path is None:
        if metadata.get("serving_mode") == ENGINE_MODE:
            raise ManifestError(
                f"the repository's metadata (serving_mode {ENGINE_MODE}) has no {REPOSITORY_PATH_KEY}: its "
                "tensorrt_llm model opens the engine by an absolute path this step cannot know; rebuild it "
                "with this llmft's build step"
            )
        return None
    if not isinstance(path, str) or not path.startswith("/") or posixpath.normpath(path) != path:
        raise ManifestError(
            f"repository metadata {REPOSITORY_PATH_KEY}={path!r} is not a normalized absolute path"
        )
    # Kubernetes refuses ':' in a mountPath; "/" would hide the image; the profile mounts /dev/shm.
    overlaps_shm = path == SHM_MOUNT_PATH or path.startswith(SHM_MOUNT_PATH + "/")
    if ":" in path or path == "/" or overlaps_shm or SHM_MOUNT_PATH.startswith(path + "/"):
        raise ManifestError(
            f"repository metadata {REPOSITORY_PATH_KEY}={path!r} cannot be a mount point in the Triton pod "
            f"(not '/', not {SHM_MOUNT_PATH} or a directory above or below it, no ':'); rebuild with another "
            "build triton.model_repository_path"
        )
    return path


def repository_volume_size(repository_bytes: int) -> str:
    """sizeLimit of the emptyDir an engine repository is copied into: its files plus a margin, in Mi."""
    size = repository_bytes + int(repository_bytes * FETCH_MARGIN_FRACTION) + FETCH_MARGIN_BYTES
    return f"{math.ceil(size / 2**20)}Mi"


def triton_repository_url(
    repository: str, settings: KubernetesSettings, pinned_path: str | None = None
) -> str:
    """What tritonserver's --model-repository gets: `pinned_path` (see `pinned_repository_path`) when the
    repository must sit there, else the PVC mount, s3://bucket/path or s3://endpoint/bucket/path."""
    if settings.pvc_claim:
        if pinned_path:
            return pinned_path
        return f"{MODELS_MOUNT}/{settings.pvc_path}".rstrip("/") if settings.pvc_path else MODELS_MOUNT
    if not storage.is_s3(repository):
        raise ManifestError(
            f"repository {repository!r} is not on s3://: Triton pods cannot read a path on this machine; "
            "publish it to s3:// or set kubernetes.pvc_claim to a claim holding it"
        )
    if pinned_path:
        return pinned_path  # the init container copies it there
    bucket, key = storage.split_s3(repository)
    path = f"{bucket}/{key}".rstrip("/")
    return f"s3://{settings.s3_endpoint}/{path}" if settings.s3_endpoint else f"s3://{path}"


# ---------------------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------------------


def _metadata(plan: ServingPlan, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": plan.namespace,
        "labels": dict(plan.labels),
        "annotations": {
            MODEL_ANNOTATION: plan.model_name,
            REPOSITORY_ANNOTATION: plan.repository,
            REPOSITORY_DIGEST_ANNOTATION: plan.repository_digest,
        },
    }


def _s3_env(settings: KubernetesSettings, endpoint_variable: bool) -> list[dict[str, Any]]:
    """S3 access for the container that reads the repository from S3. Triton takes an S3-compatible
    endpoint in its s3:// URL; boto3 (the init container) takes it from AWS_ENDPOINT_URL_S3."""
    env: list[dict[str, Any]] = []
    if settings.s3_credentials_secret:
        # Credentials only as references: the manifest (and anything that prints it) never holds one.
        for variable, optional in (
            ("AWS_ACCESS_KEY_ID", False),
            ("AWS_SECRET_ACCESS_KEY", False),
            ("AWS_SESSION_TOKEN", True),
        ):
            reference: dict[str, Any] = {"name": settings.s3_credentials_secret, "key": variable}
            if optional:
                reference["optional"] = True
            env.append({"name": variable, "valueFrom": {"secretKeyRef": reference}})
    if settings.s3_region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": settings.s3_region})
    if endpoint_variable and settings.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": settings.s3_endpoint})
    return env


# Bound on one HTTP request body. The served models refuse prompts far below it (16 bytes per token of
# the context at most: 2 MiB for a 128k context); this keeps tritonserver itself from buffering an
# arbitrary body. Releases before 25.11 crashed on multi-MB JSON bodies (server PR #8432); every
# image in serving_compat's table is newer and answers 400 instead. The flag exists since 25.05.
HTTP_MAX_INPUT_BYTES = 8 * 2**20


def triton_args(plan: ServingPlan) -> list[str]:
    return [
        f"--model-repository={plan.triton_repository}",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        f"--http-max-input-size={HTTP_MAX_INPUT_BYTES}",
        "--allow-metrics=true",
        # config.pbtxt files are complete; auto-complete would start each python model once more to ask it.
        "--disable-auto-complete-config",
        # On SIGTERM Triton stops taking requests and lets in-flight ones finish for this long.
        "--exit-timeout-secs=60",
    ]


# The tensorrtllm backend's Triton model: ranks above 0 load only it (the ensemble's python models run
# on rank 0 alone). Build names it so (components/build/triton_trtllm.py).
TENSORRT_LLM_MODEL = "tensorrt_llm"


def mpi_launch_args(plan: ServingPlan) -> list[str]:
    """mpirun's arguments: one app context per rank, `-n 1 tritonserver ...` each, joined by ':'.

    Built as NVIDIA's launcher builds them: `get_cmd` of triton_backend/scripts/launch_triton_server.py
    in NVIDIA/TensorRT-LLM, which the tensorrtllm_backend branches r25.12 to r26.07 (our images) pin as
    their tensorrt_llm submodule and whose README ("Serving with Triton", "Leader Mode") and
    docs/llmapi.md launch with it. Every rank gets the same ports: ranks > 0 never return from the
    tensorrt_llm model's initialization, so only rank 0 ever opens them. Each rank's python backend
    gets its own shared-memory region prefix, or the ranks' stubs would collide in /dev/shm.
    """
    args = ["--allow-run-as-root"]
    for rank in range(plan.launch.mpi_ranks):
        args += ["-n", "1", "tritonserver", *triton_args(plan)]
        if rank:
            args += ["--model-control-mode=explicit", f"--load-model={TENSORRT_LLM_MODEL}"]
        args += [f"--backend-config=python,shm-region-prefix-name=prefix{rank}_", ":"]
    return args


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period_s,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": TRITON_UID,
    }


def fetch_container(
    fetch: RepositoryFetch, settings: KubernetesSettings, triton_resources: Mapping[str, Mapping[str, str]]
) -> dict[str, Any]:
    """The init container copying the repository from S3 to `fetch.path` (fetch_repository.py).

    It takes tritonserver's CPU and memory (the pod's effective request is the larger of the two, so this
    changes neither scheduling nor the pod's QoS class) and requests the emptyDir's size of ephemeral
    storage, so the pod lands on a node with room for the copy instead of being evicted halfway through.
    """
    requests = {
        key: value for key, value in triton_resources.get("requests", {}).items() if key in ("cpu", "memory")
    }
    limits = {
        key: value for key, value in triton_resources.get("limits", {}).items() if key in ("cpu", "memory")
    }
    resources: dict[str, Any] = {"requests": {**requests, "ephemeral-storage": fetch.size_limit}}
    if limits:
        resources["limits"] = limits
    container: dict[str, Any] = {
        "name": FETCH_CONTAINER_NAME,
        "image": fetch.image,
        "command": ["python", "-m", FETCH_MODULE, fetch.source, fetch.path],
        "resources": resources,
        "volumeMounts": [{"name": MODELS_VOLUME, "mountPath": fetch.path}],
        "securityContext": _security_context(),
    }
    env = _s3_env(settings, endpoint_variable=True)
    if env:
        container["env"] = env
    return container


def pod_spec(plan: ServingPlan) -> dict[str, Any]:
    """The Triton pod: the tritonserver container (after the fetch init container, for a repository it
    copies from S3), with the profile applied."""
    startup_failures = math.ceil(plan.settings.model_load_timeout_s / STARTUP_PERIOD_S)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": plan.image,
        "command": ["mpirun"] if plan.launch.mpi_ranks else ["tritonserver"],
        "args": mpi_launch_args(plan) if plan.launch.mpi_ranks else triton_args(plan),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "startupProbe": _probe("/v2/health/ready", STARTUP_PERIOD_S, startup_failures),
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 6),
        "securityContext": _security_context(),
    }
    settings = plan.settings
    # Only a tritonserver that reads s3:// itself gets S3 access.
    env = [] if settings.pvc_claim or plan.fetch else _s3_env(settings, endpoint_variable=False)
    if env:
        container["env"] = env
    spec: dict[str, Any] = {
        "containers": [container],
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 90,
        "securityContext": {
            "seccompProfile": {"type": "RuntimeDefault"},
            # Volumes (a PVC written by another uid, the fetch emptyDir) are made group-readable by
            # TRITON_UID's group, so tritonserver can open every file; OnRootMismatch walks the
            # volume only when its root's group differs, not on every start of a large repository.
            "fsGroup": TRITON_UID,
            "fsGroupChangePolicy": "OnRootMismatch",
        },
    }
    if settings.pvc_claim:
        spec["volumes"] = [
            {
                "name": MODELS_VOLUME,
                "persistentVolumeClaim": {"claimName": settings.pvc_claim, "readOnly": True},
            }
        ]
        mount = {"name": MODELS_VOLUME, "mountPath": plan.repository_path or MODELS_MOUNT, "readOnly": True}
        if plan.repository_path and settings.pvc_path:
            # The repository itself, not the claim's root, must be at repository_path.
            mount["subPath"] = settings.pvc_path
        container["volumeMounts"] = [mount]
    elif plan.fetch:
        spec["volumes"] = [{"name": MODELS_VOLUME, "emptyDir": {"sizeLimit": plan.fetch.size_limit}}]
        container["volumeMounts"] = [{"name": MODELS_VOLUME, "mountPath": plan.fetch.path, "readOnly": True}]
    spec = apply_to_pod_spec(spec, plan.profile, containers=[CONTAINER_NAME])
    if plan.fetch:
        resources = spec["containers"][0].get("resources", {})
        spec["initContainers"] = [fetch_container(plan.fetch, settings, resources)]
    return spec


def build_deployment(plan: ServingPlan) -> dict[str, Any]:
    annotations = {
        # For Prometheus setups that discover scrape targets by annotation.
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
        **plan.settings.pod_annotations,
    }
    spec: dict[str, Any] = {
        "selector": {"matchLabels": dict(plan.selector)},
        "revisionHistoryLimit": 5,
        # The controller marks a rollout failed after this long; the step's own timeout also applies.
        "progressDeadlineSeconds": plan.settings.model_load_timeout_s + 600,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {"labels": dict(plan.labels), "annotations": annotations},
            "spec": pod_spec(plan),
        },
    }
    # With an HPA the replica count is the HPA's: writing it here would undo its scaling on every rollout.
    if not plan.settings.autoscale_max_replicas:
        spec = {"replicas": plan.settings.replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(plan, plan.name),
        "spec": spec,
    }


def build_service(plan: ServingPlan) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(plan, plan.name),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(plan.selector),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def build_hpa(plan: ServingPlan) -> dict[str, Any]:
    settings = plan.settings
    if settings.autoscale_pods_metric:
        metric: dict[str, Any] = {
            "type": "Pods",
            "pods": {
                "metric": {"name": settings.autoscale_pods_metric},
                "target": {"type": "AverageValue", "averageValue": settings.autoscale_pods_target},
            },
        }
    else:
        if not plan.profile.cpu_request:
            raise ManifestError(
                "autoscaling on CPU utilization needs a CPU request: set kubernetes.profile.cpu_request "
                "or kubernetes.autoscale_pods_metric"
            )
        metric = {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": settings.autoscale_cpu_utilization},
            },
        }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(plan, plan.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan.name},
            "minReplicas": settings.replicas,
            "maxReplicas": settings.autoscale_max_replicas,
            "metrics": [metric],
        },
    }


def build_manifests(plan: ServingPlan) -> list[dict[str, Any]]:
    """Every object of the rollout, in apply order: Service, Deployment, then the HPA if autoscaling."""
    objects = [build_service(plan), build_deployment(plan)]
    if plan.settings.autoscale_max_replicas:
        objects.append(build_hpa(plan))
    return objects


def revision_of(objects: list[dict[str, Any]]) -> str:
    """A short hash of the objects: the same settings and repository always give the same revision."""
    text = json.dumps(objects, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def manifests_yaml(objects: list[dict[str, Any]]) -> str:
    """The objects as one multi-document YAML text, keys sorted (the same plan always prints the same)."""
    return yaml.safe_dump_all(objects, sort_keys=True, default_flow_style=False, width=2**16)
