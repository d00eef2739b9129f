"""Per-step cluster resource profiles: GPUs, EFA, /dev/shm, CPU/memory, scheduling and pull secrets.

One typed `ResourceProfile` per pipeline step, grouped in `PipelineProfiles`. Presets hold defaults for
AWS p5 / p4d / p4de nodes and a `cpu` preset for laptops and tests; one YAML file overrides any step and
any field without code changes (`load_profiles`).

The same profile is applied in two places, and both read it from here:
- KFP task pods, at compile time: `pipelines/cluster.py::apply_profile` (the only KFP-aware code);
- pods that steps launch themselves (PyTorchJob workers, Triton Deployments), at run time:
  `pod_spec_overrides` / `apply_to_pod_spec` below, which return plain Kubernetes pod-spec dicts.

This module never imports KFP: step logic imports it at run time inside the images.

Why EFA and the priority class are pod *labels* on KFP task pods: a KFP v2 task can request only one
extended resource (kubeflow/pipelines#10996), which is the GPU, and KFP has no per-task priority class.
The Kyverno policy in deploy/kyverno-efa-policy.yaml turns `llmft.io/efa` into the
`vpc.amazonaws.com/efa` limit and `llmft.io/priority-class` into `spec.priorityClassName`. Pods whose spec
we build ourselves get both directly in their spec.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.yaml_errors import describe_yaml_error

logger = logging.getLogger(__name__)

# Step names, in pipeline order; `finalize` is the exit-handler task.
STEPS: tuple[str, ...] = ("curate", "train", "evaluate", "export", "build", "rollout", "finalize")
# Profiles: one per step, plus the CPU pods that stand in for a GPU step where its GPUs would idle.
# `train_launcher` runs train when num_nodes > 1 (it only creates and watches the PyTorchJob, whose
# pods get the `train` profile); `build_repository` runs build in the serving modes that compile no
# engine. KFP fixes a task's resources at compile time, so the pipeline holds both tasks and picks
# one at run time (dsl.If / dsl.Else, joined with dsl.OneOf).
PROFILES: tuple[str, ...] = (*STEPS, "train_launcher", "build_repository")

# Kubernetes names this module writes into pod specs and labels.
GPU_RESOURCE = "nvidia.com/gpu"  # NVIDIA device plugin's extended resource; KFP's accelerator "type"
EFA_RESOURCE = "vpc.amazonaws.com/efa"  # AWS EFA device plugin's extended resource
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # node label set by NVIDIA GPU feature discovery
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"  # well-known label, always set on EKS nodes
EFA_LABEL = "llmft.io/efa"  # pod label: EFA interface count, read by the Kyverno policy
PRIORITY_CLASS_LABEL = "llmft.io/priority-class"  # pod label: PriorityClass name, read by the policy
SHM_VOLUME_NAME = "dshm"
SHM_MOUNT_PATH = "/dev/shm"

# Environment that libfabric / aws-ofi-nccl need to put NCCL traffic on EFA (p4d and p5 support RDMA).
EFA_ENV: dict[str, str] = {"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1"}

PRESETS: tuple[str, ...] = ("p5", "p4d", "p4de", "cpu")
DEFAULT_PRESET = "p5"
# Top-level key of a profiles file whose fields apply to every step before the step's own section.
ALL_STEPS_KEY = "all"

# Quantities accepted both by Kubernetes and by the KFP SDK's validators (KFP accepts "K", Kubernetes
# only "k"; neither accepts the other, so kilo is spelled "Ki" here). Decimal memory is rejected by KFP.
_CPU_RE = re.compile(r"^([0-9]*[.])?[0-9]+m?$")
_MEMORY_RE = re.compile(r"^[0-9]+(E|P|T|G|M|Ei|Pi|Ti|Gi|Mi|Ki)?$")
_MEMORY_FACTORS: dict[str, int] = {
    "": 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
# Label values: at most 63 characters, alphanumerics at both ends, '-', '_' and '.' inside.
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# DNS-1123 subdomain, the form of PriorityClass, ServiceAccount and Secret names.
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")
# Kubernetes quantities are int64 underneath (bytes, millicores): larger values cannot be represented.
_MAX_QUANTITY = 2**63 - 1


class ProfileConfigError(ValueError):
    """A profiles file is unreadable, names an unknown step or field, or sets an invalid value."""


def _describe(value: Any) -> str:
    """What a YAML value is, in words: the type a user wrote (true, "4", 4.0), never a long value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return "a string" if len(value) > 40 else f"the string {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _whole_number(value: Any) -> Any:
    """Refuse what pydantic's lax mode turns into an int: true -> 1, "4" -> 4, 4.0 -> 4.

    A YAML `gpus: true` or `gpus: "8"` is a typo or a misunderstanding, not a count.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number, e.g. 8; got {_describe(value)}")
    return value


def memory_bytes(quantity: str) -> int:
    """Bytes in a memory quantity such as "64Gi" or "500M" (the forms `ResourceProfile` accepts)."""
    match = re.fullmatch(r"([0-9]+)([A-Za-z]*)", quantity)
    if match is None or match.group(2) not in _MEMORY_FACTORS:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return int(match.group(1)) * _MEMORY_FACTORS[match.group(2)]


def cpu_cores(quantity: str) -> Decimal:
    """Cores in a CPU quantity such as "8", "0.5" or "500m"."""
    if not _CPU_RE.match(quantity):
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    if quantity.endswith("m"):
        return Decimal(quantity[:-1]) / 1000
    return Decimal(quantity)


class Toleration(BaseModel):
    """A pod toleration, as in the Kubernetes PodSpec (snake_case here, camelCase in pod specs)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    key: str | None = Field(default=None, description="Taint key; empty with operator Exists matches all.")
    operator: Literal["Equal", "Exists"] = Field(
        default="Equal", description="Equal compares `value`; Exists matches any value of `key`."
    )
    value: str | None = Field(default=None, description="Taint value; must be empty with operator Exists.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="For NoExecute: seconds the pod stays bound after the taint appears."
    )

    @field_validator("toleration_seconds", mode="before")
    @classmethod
    def _check_whole_seconds(cls, value: Any) -> Any:
        return None if value is None else _whole_number(value)

    @model_validator(mode="after")
    def _check_operator(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists must not set a value")
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without a key must use operator Exists")
        return self

    def to_k8s(self) -> dict[str, Any]:
        """The toleration as a Kubernetes PodSpec entry (camelCase, unset fields omitted)."""
        out: dict[str, Any] = {"operator": self.operator}
        if self.key:
            out["key"] = self.key
        if self.value:
            out["value"] = self.value
        if self.effect:
            out["effect"] = self.effect
        if self.toleration_seconds is not None:
            out["tolerationSeconds"] = self.toleration_seconds
        return out


class SecretEnv(BaseModel):
    """An environment variable read from a key of a Kubernetes Secret (never a literal value)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(description="Environment variable name in the container, e.g. HF_TOKEN.")
    secret: str = Field(description="Name of the Secret in the pod's namespace.")
    key: str = Field(description="Key inside the Secret.")
    optional: bool = Field(
        default=False, strict=True, description="Start the pod even if the Secret or key is missing."
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _ENV_NAME_RE.match(value):
            raise ValueError(f"invalid environment variable name {value!r}")
        return value

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, value: str) -> str:
        if len(value) > 253 or not _DNS_SUBDOMAIN_RE.match(value):
            raise ValueError(f"invalid Secret name {value!r}: lowercase alphanumerics, '-' and '.'")
        return value

    @field_validator("key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        if len(value) > 253 or not _SECRET_KEY_RE.match(value):
            raise ValueError(f"invalid Secret key {value!r}: alphanumerics, '-', '_' and '.'")
        return value

    def to_env(self) -> dict[str, Any]:
        """The container env entry: valueFrom.secretKeyRef."""
        ref: dict[str, Any] = {"name": self.secret, "key": self.key}
        if self.optional:
            ref["optional"] = True
        return {"name": self.name, "valueFrom": {"secretKeyRef": ref}}


class ResourceProfile(BaseModel):
    """What one step's pods request from the cluster and where they may be scheduled."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    gpus: int = Field(default=0, ge=0, description=f"GPUs per pod ({GPU_RESOURCE} limit); 0 for CPU steps.")
    gpu_product: str | None = Field(
        default=None,
        description=(
            "GPU model the pod must land on, e.g. NVIDIA-H100-80GB-HBM3; added to the node selector under "
            "`gpu_product_label`. Needs GPU feature discovery (GPU Operator) labels on the nodes; set null "
            "where nodes lack them and select by instance type instead."
        ),
    )
    gpu_product_label: str = Field(
        default=GPU_PRODUCT_LABEL, description="Node label that carries the GPU model name."
    )
    efa: int = Field(
        default=0,
        ge=0,
        description=(
            f"EFA interfaces ({EFA_RESOURCE} limit). On KFP task pods carried as the `{EFA_LABEL}` pod label "
            "(see deploy/README.md); on pods llmft launches itself, set in the resource limits."
        ),
    )
    shm_size: str | None = Field(
        default=None,
        description=(
            "Size limit of the memory-backed emptyDir mounted at /dev/shm (the container default of 64Mi "
            "breaks NCCL and DataLoader workers). Counts against the pod's memory; null for no mount."
        ),
    )
    cpu_request: str | None = Field(default=None, description='CPU request, e.g. "8" or "500m".')
    cpu_limit: str | None = Field(
        default=None, description="CPU limit; GPU presets leave it unset so CFS throttling cannot stall NCCL."
    )
    memory_request: str | None = Field(default=None, description='Memory request, e.g. "64Gi".')
    memory_limit: str | None = Field(default=None, description='Memory limit, e.g. "64Gi".')
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pod requires, besides the GPU product."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        description="Taints the pod tolerates, e.g. the nvidia.com/gpu taint of GPU nodes.",
    )
    service_account: str | None = Field(
        default=None,
        description=(
            "Service account. Pods llmft launches itself use it directly. KFP task pods cannot have one per "
            "task (KFP 2.17 has no per-task setting): it is run-level, passed at submit; see "
            "pipelines.cluster.run_service_account."
        ),
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Names of docker-registry Secrets used to pull the step's image."
    )
    priority_class: str | None = Field(
        default=None,
        description=(
            f"PriorityClass name. On KFP task pods carried as the `{PRIORITY_CLASS_LABEL}` pod label and "
            "set by the Kyverno policy; on pods llmft launches itself, spec.priorityClassName."
        ),
    )
    secret_env: list[SecretEnv] = Field(
        default_factory=list,
        description=(
            "Environment variables read from Kubernetes Secret keys, on the KFP task pod and the pods the "
            "step launches: HF_TOKEN for a gated Hugging Face model, say. Credentials never travel as "
            "pipeline parameters."
        ),
    )

    @field_validator("gpus", "efa", mode="before")
    @classmethod
    def _check_whole_number(cls, value: Any) -> Any:
        return _whole_number(value)

    @field_validator("cpu_request", "cpu_limit", mode="before")
    @classmethod
    def _cpu_from_number(cls, value: Any) -> Any:
        # Kubernetes reads `cpu: 8` and `cpu: 0.5` as cores; a YAML number means the same here.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("cpu_request", "cpu_limit")
    @classmethod
    def _check_cpu(cls, value: str | None) -> str | None:
        if value is not None and not _CPU_RE.match(value):
            raise ValueError(
                f"invalid CPU quantity {value!r}: use a number of cores or millicores, e.g. 8, 0.5, 500m"
            )
        if value is not None and cpu_cores(value) * 1000 > _MAX_QUANTITY:
            raise ValueError(f"CPU quantity {value!r} is larger than Kubernetes can represent")
        return value

    @field_validator("memory_request", "memory_limit", "shm_size", mode="before")
    @classmethod
    def _memory_needs_a_unit(cls, value: Any) -> Any:
        # A bare YAML number would be bytes: `memory_limit: 64` is almost surely not 64 bytes.
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(f"memory needs a unit, e.g. {value}Gi; got {_describe(value)}")
        return value

    @field_validator("memory_request", "memory_limit", "shm_size")
    @classmethod
    def _check_memory(cls, value: str | None) -> str | None:
        if value is not None and not _MEMORY_RE.match(value):
            raise ValueError(
                f"invalid memory quantity {value!r}: use an integer with an optional suffix "
                "Ki, Mi, Gi, Ti, Pi, Ei, M, G, T, P or E, e.g. 64Gi"
            )
        if value is not None and memory_bytes(value) > _MAX_QUANTITY:
            raise ValueError(f"memory quantity {value!r} is larger than Kubernetes can represent")
        return value

    @field_validator("node_selector")
    @classmethod
    def _check_node_selector(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not key or len(key) > 317:
                raise ValueError(f"invalid node selector key {key!r}")
            if not isinstance(label, str) or len(label) > 63 or not _LABEL_VALUE_RE.match(label):
                raise ValueError(f"invalid node selector value {label!r} for {key!r}: not a label value")
        return value

    @field_validator("gpu_product")
    @classmethod
    def _check_gpu_product(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 63 or not _LABEL_VALUE_RE.match(value)):
            raise ValueError(f"invalid gpu_product {value!r}: it is matched as a node label value")
        return value

    @field_validator("service_account")
    @classmethod
    def _check_service_account(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 253 or not _DNS_SUBDOMAIN_RE.match(value)):
            raise ValueError(f"invalid service account name {value!r}: lowercase alphanumerics, '-' and '.'")
        return value

    @field_validator("priority_class")
    @classmethod
    def _check_priority_class(cls, value: str | None) -> str | None:
        # The priority class also travels as a pod label value, so it must fit in 63 characters.
        if value is not None and (len(value) > 63 or not _DNS_SUBDOMAIN_RE.match(value)):
            raise ValueError(
                f"invalid priority class {value!r}: "
                "lowercase alphanumerics, '-' and '.', at most 63 characters"
            )
        return value

    @field_validator("image_pull_secrets")
    @classmethod
    def _check_secret_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if len(name) > 253 or not _DNS_SUBDOMAIN_RE.match(name):
                raise ValueError(f"invalid image pull secret name {name!r}")
        return value

    @field_validator("secret_env")
    @classmethod
    def _check_secret_env(cls, value: list[SecretEnv]) -> list[SecretEnv]:
        names = [item.name for item in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"secret_env sets {', '.join(duplicates)} more than once")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> ResourceProfile:
        # A zero limit is never what anyone wants: the container could not start or /dev/shm holds nothing.
        for name in ("memory_limit", "shm_size"):
            quantity = getattr(self, name)
            if quantity is not None and memory_bytes(quantity) == 0:
                raise ValueError(f"{name} is 0: set a size, or null for none")
        if self.cpu_limit is not None and cpu_cores(self.cpu_limit) == 0:
            raise ValueError("cpu_limit is 0: set a number of cores, or null for no limit")
        if self.gpu_product and self.gpus == 0:
            raise ValueError(
                f"gpu_product is {self.gpu_product!r} but gpus is 0: set gpu_product to null for a CPU step"
            )
        if self.cpu_request and self.cpu_limit and cpu_cores(self.cpu_request) > cpu_cores(self.cpu_limit):
            raise ValueError(f"cpu_request {self.cpu_request} exceeds cpu_limit {self.cpu_limit}")
        if self.memory_limit:
            limit = memory_bytes(self.memory_limit)
            if self.memory_request and memory_bytes(self.memory_request) > limit:
                raise ValueError(
                    f"memory_request {self.memory_request} exceeds memory_limit {self.memory_limit}"
                )
            # A memory-backed emptyDir is charged to the pod's memory: a larger shm could never be filled.
            if self.shm_size and memory_bytes(self.shm_size) > limit:
                raise ValueError(f"shm_size {self.shm_size} exceeds memory_limit {self.memory_limit}")
        return self

    def effective_node_selector(self) -> dict[str, str]:
        """The node selector including the GPU product label, sorted by key for stable output."""
        selector = dict(self.node_selector)
        if self.gpu_product:
            selector[self.gpu_product_label] = self.gpu_product
        return dict(sorted(selector.items()))

    def pod_labels(self) -> dict[str, str]:
        """Labels that carry, on KFP task pods, what KFP cannot express (EFA count, priority class)."""
        labels: dict[str, str] = {}
        if self.efa > 0:
            labels[EFA_LABEL] = str(self.efa)
        if self.priority_class:
            labels[PRIORITY_CLASS_LABEL] = self.priority_class
        return labels

    def environment(self) -> dict[str, str]:
        """Environment variables the step's main container needs for this profile (EFA's libfabric)."""
        return dict(EFA_ENV) if self.efa > 0 else {}


class PipelineProfiles(BaseModel):
    """One `ResourceProfile` per pipeline step; the defaults are the p5.48xlarge preset."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    curate: ResourceProfile = Field(
        default_factory=lambda: _preset_step("p5", "curate"), description="Data curation (CPU, base image)."
    )
    train: ResourceProfile = Field(
        default_factory=lambda: _preset_step("p5", "train"), description="LoRA SFT (GPU, train image)."
    )
    evaluate: ResourceProfile = Field(
        default_factory=lambda: _preset_step("p5", "evaluate"), description="Base vs tuned eval (GPU)."
    )
    export: ResourceProfile = Field(
        default_factory=lambda: _preset_step("p5", "export"), description="Adapter merge + HF export."
    )
    build: ResourceProfile = Field(
        default_factory=lambda: _preset_step("p5", "build"), description="TRT-LLM build (GPU, trtllm image)."
    )
    train_launcher: ResourceProfile = Field(
        default_factory=lambda: _preset_step("p5", "train_launcher"),
        description="Multi-node train: the CPU pod that launches and watches the PyTorchJob.",
    )
    build_repository: ResourceProfile = Field(
        default_factory=lambda: _preset_step("p5", "build_repository"),
        description="Build in the modes without an engine (hf, trtllm-llmapi): CPU, trtllm image.",
    )
    rollout: ResourceProfile = Field(
        default_factory=lambda: _preset_step("p5", "rollout"), description="Triton rollout (CPU, base image)."
    )
    finalize: ResourceProfile = Field(
        default_factory=lambda: _preset_step("p5", "finalize"), description="Exit handler (CPU, base image)."
    )

    def for_step(self, step: str) -> ResourceProfile:
        """The profile of `step` (one of `PROFILES`)."""
        if step not in PROFILES:
            raise KeyError(f"unknown profile {step!r}; profiles are {', '.join(PROFILES)}")
        profile: ResourceProfile = getattr(self, step)
        return profile


# ---------------------------------------------------------------------------------------------------------
# Presets. Sizes leave headroom below each node's capacity for kubelet, system reserve and daemonsets.
# p5.48xlarge:   8x H100 80GB HBM3,  32 EFA interfaces, 192 vCPU, 2048 GiB.
# p4d.24xlarge:  8x A100 40GB SXM4,   4 EFA interfaces,  96 vCPU, 1152 GiB.
# p4de.24xlarge: 8x A100 80GB SXM4,   4 EFA interfaces,  96 vCPU, 1152 GiB.
# CPU limits are left unset on GPU steps: CFS throttling stalls data loaders and NCCL progress threads.
# Memory limit = request: a pod that never exceeds its request is the last one node-pressure eviction picks.
# ---------------------------------------------------------------------------------------------------------

_GPU_TOLERATION: dict[str, Any] = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
# EKS node groups with EFA are often tainted too (e.g. by EKS blueprints); tolerating a taint that is
# not there is harmless, so every EFA-using profile carries this.
_EFA_TOLERATION: dict[str, Any] = {"key": EFA_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

_GPU_NODES: dict[str, dict[str, Any]] = {
    "p5": {"instance_type": "p5.48xlarge", "gpu_product": "NVIDIA-H100-80GB-HBM3", "gpus": 8, "efa": 32},
    "p4d": {"instance_type": "p4d.24xlarge", "gpu_product": "NVIDIA-A100-SXM4-40GB", "gpus": 8, "efa": 4},
    "p4de": {"instance_type": "p4de.24xlarge", "gpu_product": "NVIDIA-A100-SXM4-80GB", "gpus": 8, "efa": 4},
}


@dataclass(frozen=True)
class NodeCapacity:
    """What one node offers a single pod: the ceiling of a profile's `gpus` and `efa`."""

    node: str  # in words, for messages: "a p5.48xlarge node"
    gpus: int
    efa: int


def node_capacity(profile: ResourceProfile, preset: str) -> NodeCapacity | None:
    """The node `profile` can land on: the instance type its node selector names, else the preset's node.

    None when the selector names an instance type without figures here: nothing to check against.
    """
    instance_type = profile.node_selector.get(INSTANCE_TYPE_LABEL)
    if instance_type is None:
        if preset == "cpu":
            return NodeCapacity("a node of the cpu preset (no GPU, no EFA)", 0, 0)
        instance_type = _GPU_NODES[preset]["instance_type"]
    for node in _GPU_NODES.values():
        if node["instance_type"] == instance_type:
            return NodeCapacity(f"a {instance_type} node", node["gpus"], node["efa"])
    return None


# Per node size: (gpus, cpu_request, memory, shm). Each GPU step asks for the GPUs its code uses with the
# default parameters (tests/components/test_gpu_use.py checks it): train the whole node (gpus_per_node 0
# = every GPU of the pod), evaluate one GPU (it loads the model on one; given more, it spreads the model
# over them), build one GPU (a TensorRT-LLM engine of tensor_parallel_size x pipeline_parallel_size = 1).
_GPU_STEP_SIZES: dict[str, dict[str, tuple[int, str, str, str]]] = {
    "p5": {
        "train": (8, "160", "1600Gi", "256Gi"),
        "evaluate": (1, "20", "240Gi", "32Gi"),
        "build": (1, "20", "240Gi", "32Gi"),
    },
    "p4d": {
        "train": (8, "80", "960Gi", "192Gi"),
        "evaluate": (1, "10", "136Gi", "16Gi"),
        "build": (1, "10", "136Gi", "16Gi"),
    },
}
_GPU_STEP_SIZES["p4de"] = _GPU_STEP_SIZES["p4d"]

# CPU steps are the same under every GPU preset: they run on general-purpose nodes.
_CPU_STEPS: dict[str, dict[str, Any]] = {
    "curate": {"cpu_request": "4", "cpu_limit": "8", "memory_request": "16Gi", "memory_limit": "16Gi"},
    # Merging on the CPU needs the base model's weights in host memory (twice the parameter count
    # in bytes at bf16): 240Gi holds a 70B model with room for the adapter and the save.
    "export": {"cpu_request": "16", "memory_request": "240Gi", "memory_limit": "240Gi"},
    "rollout": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "2Gi", "memory_limit": "2Gi"},
    "finalize": {"cpu_request": "500m", "cpu_limit": "1", "memory_request": "1Gi", "memory_limit": "1Gi"},
    "train_launcher": {
        "cpu_request": "500m",
        "cpu_limit": "1",
        "memory_request": "1Gi",
        "memory_limit": "2Gi",
    },
    "build_repository": {
        "cpu_request": "2",
        "cpu_limit": "4",
        "memory_request": "8Gi",
        "memory_limit": "8Gi",
    },
}

# The `cpu` preset: no GPU, no EFA, no taints, small enough for kind/minikube on a laptop.
_LAPTOP_STEPS: dict[str, dict[str, Any]] = {
    **_CPU_STEPS,
    "curate": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "2Gi", "memory_limit": "4Gi"},
    **{
        step: {
            "cpu_request": "1",
            "cpu_limit": "4",
            "memory_request": "2Gi",
            "memory_limit": "8Gi",
            "shm_size": "1Gi",
        }
        for step in ("train", "evaluate", "export", "build")
    },
}


def _preset_step(preset: str, step: str) -> ResourceProfile:
    return ResourceProfile.model_validate(_preset_data(preset)[step])


def _preset_data(preset: str) -> dict[str, dict[str, Any]]:
    """Plain-data profiles of a preset (what a profiles file is merged onto)."""
    if preset == "cpu":
        return copy.deepcopy(_LAPTOP_STEPS)
    if preset not in _GPU_NODES:
        raise ValueError(f"unknown resource preset {preset!r}; presets are {', '.join(PRESETS)}")
    node = _GPU_NODES[preset]
    data: dict[str, dict[str, Any]] = copy.deepcopy(_CPU_STEPS)
    for step, (gpus, cpu, memory, shm) in _GPU_STEP_SIZES[preset].items():
        # Only train talks across nodes (PyTorchJob workers); single-pod steps gain nothing from EFA.
        efa = node["efa"] if step == "train" else 0
        tolerations = [_GPU_TOLERATION, _EFA_TOLERATION] if efa else [_GPU_TOLERATION]
        data[step] = {
            "gpus": gpus,
            "gpu_product": node["gpu_product"],
            "efa": efa,
            "shm_size": shm,
            "cpu_request": cpu,
            "memory_request": memory,
            "memory_limit": memory,
            "node_selector": {INSTANCE_TYPE_LABEL: node["instance_type"]},
            "tolerations": copy.deepcopy(tolerations),
        }
    return data


def preset_profiles(preset: str = DEFAULT_PRESET) -> PipelineProfiles:
    """The profiles of a named preset: "p5" (default), "p4d", "p4de" or "cpu"."""
    return PipelineProfiles.model_validate(_preset_data(preset))


# ---------------------------------------------------------------------------------------------------------
# Loading a profiles file
# ---------------------------------------------------------------------------------------------------------


def _merge_step(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Field-wise merge of one step's override onto its base data.

    Scalars and lists replace (a list of tolerations is one decision, not items to append to);
    `node_selector` merges per key, and a key set to null removes that key.
    """
    merged = copy.deepcopy(base)
    for field, value in override.items():
        if field == "node_selector" and isinstance(value, Mapping):
            selector = dict(merged.get("node_selector") or {})
            for key, label in value.items():
                if label is None:
                    selector.pop(key, None)
                else:
                    selector[key] = label
            merged["node_selector"] = selector
        elif field in ("node_selector", "tolerations", "image_pull_secrets") and value is None:
            merged[field] = {} if field == "node_selector" else []
        else:
            merged[field] = copy.deepcopy(value)
    return merged


def _check_section(source: str, step: str, section: Any) -> Mapping[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise ProfileConfigError(f"{source}: {step}: must be a mapping of fields, got {_describe(section)}")
    fields = ResourceProfile.model_fields
    for field in section:
        if field not in fields:
            raise ProfileConfigError(
                f"{source}: unknown field {step}.{field}; fields are {', '.join(sorted(fields))}"
            )
    return section


def _field_origin(overrides: Mapping[str, Any], step: str, field: str, preset: str) -> str:
    """Where a step's field got its value: its own section, the `all` section, or the preset."""
    if field in (overrides.get(step) or {}):
        return f"{step}.{field}"
    if field in (overrides.get(ALL_STEPS_KEY) or {}):
        return f"{ALL_STEPS_KEY}.{field}"
    return f"{step}.{field} (preset {preset})"


def _validation_problems(err: ValidationError, overrides: Mapping[str, Any], preset: str) -> list[str]:
    """One line per problem, each naming the step and field (and where the value came from)."""
    problems: list[str] = []
    for error in err.errors():
        loc = [str(part) for part in error["loc"]]
        where = loc[0] if len(loc) == 1 else _field_origin(overrides, loc[0], loc[1], preset)
        rest = "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in loc[2:])
        # pydantic prefixes our own ValueErrors with "Value error, ": noise for a user.
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}{rest}: {message}")
    return problems


def _capacity_problems(profiles: PipelineProfiles, overrides: Mapping[str, Any], preset: str) -> list[str]:
    """Requests no node of the preset (or of the selected instance type) could ever satisfy."""
    problems: list[str] = []
    for step in PROFILES:
        profile = profiles.for_step(step)
        node = node_capacity(profile, preset)
        if node is None:
            continue
        for field, unit, most in (("gpus", "GPUs", node.gpus), ("efa", "EFA interfaces", node.efa)):
            asked = getattr(profile, field)
            if asked > most:
                hint = " (start from --preset p5, p4d or p4de for GPU nodes)" if most == 0 else ""
                problems.append(
                    f"{_field_origin(overrides, step, field, preset)}: {asked} {unit} per pod, but "
                    f"{node.node} has {most}{hint}"
                )
    return problems


def merge_profiles(
    overrides: Mapping[str, Any], preset: str = DEFAULT_PRESET, source: str = "<overrides>"
) -> PipelineProfiles:
    """Apply a mapping shaped like a profiles file onto a preset (see `load_profiles`).

    Every error is a `ProfileConfigError` that starts with `source` and names the step and field,
    e.g. "profiles.yaml: train.gpus: 64 GPUs per pod, but a p5.48xlarge node has 8".
    """
    if not isinstance(overrides, Mapping):
        raise ProfileConfigError(f"{source}: expected a mapping of step names, got {_describe(overrides)}")
    if preset not in PRESETS:
        raise ProfileConfigError(f"unknown resource preset {preset!r}; presets are {', '.join(PRESETS)}")
    for key in overrides:
        if key not in PROFILES and key != ALL_STEPS_KEY:
            raise ProfileConfigError(
                f"{source}: unknown step {key!r}; steps are {', '.join(PROFILES)} (or {ALL_STEPS_KEY!r})"
            )
    common = _check_section(source, ALL_STEPS_KEY, overrides.get(ALL_STEPS_KEY))
    data = _preset_data(preset)
    for step in PROFILES:
        section = _check_section(source, step, overrides.get(step))
        data[step] = _merge_step(_merge_step(data[step], common), section)
    try:
        profiles = PipelineProfiles.model_validate(data)
    except ValidationError as err:
        problems = _validation_problems(err, overrides, preset)
    else:
        problems = _capacity_problems(profiles, overrides, preset)
    if problems:
        # An `all` value applies to every step: say so once, not once per step.
        unique = list(dict.fromkeys(problems))
        raise ProfileConfigError(f"{source}: {'; '.join(unique)}")
    logger.info("resource profiles: preset %s, overrides from %s", preset, source)
    return profiles


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping.

    PyYAML keeps the last of two `train:` sections silently, so half of a file would be ignored.
    """


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: construct_mapping below reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"the key {key!r} is given twice",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def _yaml_error(source: str, err: yaml.YAMLError) -> ProfileConfigError:
    """A YAML error in one line: file, line, column, problem (PyYAML's own text spans several lines)."""
    return ProfileConfigError(f"{source}: {describe_yaml_error(err)}")


def load_profiles(path: str | Path | None = None, preset: str = DEFAULT_PRESET) -> PipelineProfiles:
    """Profiles of `preset`, overridden per step and per field by the YAML file at `path`, if given.

    The file maps step names (and optionally `all`, applied to every step first) to fields of
    `ResourceProfile`, e.g.::

        all:
          image_pull_secrets: [ecr-pull]
        train:
          gpus: 4
          node_selector: {karpenter.sh/nodepool: gpu}
        evaluate:
          gpu_product: null

    Every problem raises `ProfileConfigError` naming the file and the step and field: unknown steps or
    fields, wrong types (`gpus: true` is not 1), invalid quantities, GPUs or EFA interfaces beyond what
    the node has, a key given twice, YAML syntax.
    """
    if path is None:
        return preset_profiles(preset)
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        reason = "it is a directory" if isinstance(err, IsADirectoryError) else err.strerror or str(err)
        raise ProfileConfigError(f"{source}: cannot read resource profiles file: {reason}") from err
    except UnicodeDecodeError as err:
        raise ProfileConfigError(
            f"{source}: not a text file (byte {err.start} is not UTF-8): expected YAML"
        ) from err
    try:
        # _UniqueKeyLoader is a SafeLoader: no Python objects are ever constructed.
        overrides = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise _yaml_error(source, err) from err
    if overrides is None:
        logger.warning("%s holds no overrides: the %s preset is used as it is", source, preset)
    return merge_profiles(overrides or {}, preset=preset, source=source)


# ---------------------------------------------------------------------------------------------------------
# Pod-spec fragments for pods that steps launch themselves
# ---------------------------------------------------------------------------------------------------------


def pod_spec_overrides(profile: ResourceProfile) -> dict[str, dict[str, Any]]:
    """The Kubernetes pod-spec fragments of `profile`, for pods whose spec llmft builds itself.

    Returns ``{"pod": {...}, "container": {...}}``: "pod" holds PodSpec fields (nodeSelector,
    tolerations, volumes, serviceAccountName, imagePullSecrets, priorityClassName) and "container"
    holds the main container's fields (resources, volumeMounts, env). Unset fields are omitted.
    Unlike KFP task pods, these pods get EFA as a real resource limit and the priority class in the spec.
    """
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if profile.cpu_request:
        requests["cpu"] = profile.cpu_request
    if profile.memory_request:
        requests["memory"] = profile.memory_request
    if profile.cpu_limit:
        limits["cpu"] = profile.cpu_limit
    if profile.memory_limit:
        limits["memory"] = profile.memory_limit
    # Extended resources go in limits only: Kubernetes defaults their requests to the limits.
    if profile.gpus > 0:
        limits[GPU_RESOURCE] = str(profile.gpus)
    if profile.efa > 0:
        limits[EFA_RESOURCE] = str(profile.efa)

    container: dict[str, Any] = {}
    resources = {name: values for name, values in (("requests", requests), ("limits", limits)) if values}
    if resources:
        container["resources"] = resources
    env = [{"name": name, "value": value} for name, value in profile.environment().items()]
    env += [item.to_env() for item in profile.secret_env]
    if env:
        container["env"] = env

    pod: dict[str, Any] = {}
    selector = profile.effective_node_selector()
    if selector:
        pod["nodeSelector"] = selector
    if profile.tolerations:
        pod["tolerations"] = [toleration.to_k8s() for toleration in profile.tolerations]
    if profile.shm_size:
        pod["volumes"] = [
            {"name": SHM_VOLUME_NAME, "emptyDir": {"medium": "Memory", "sizeLimit": profile.shm_size}}
        ]
        container["volumeMounts"] = [{"name": SHM_VOLUME_NAME, "mountPath": SHM_MOUNT_PATH}]
    if profile.service_account:
        pod["serviceAccountName"] = profile.service_account
    if profile.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in profile.image_pull_secrets]
    if profile.priority_class:
        pod["priorityClassName"] = profile.priority_class
    return {"pod": pod, "container": container}


def _merge_named(
    existing: list[dict[str, Any]], extra: list[dict[str, Any]], key: str
) -> list[dict[str, Any]]:
    """`existing` with `extra` entries replacing same-`key` entries and the rest appended."""
    extra_keys = {item[key] for item in extra}
    return [item for item in existing if item.get(key) not in extra_keys] + copy.deepcopy(extra)


def apply_to_pod_spec(
    pod_spec: Mapping[str, Any], profile: ResourceProfile, containers: Iterable[str] | None = None
) -> dict[str, Any]:
    """A copy of `pod_spec` with `profile` applied; the profile wins where both set a field.

    `containers` names the containers that get resources, the /dev/shm mount and env (default: all
    regular containers). Lists merge by identity (volumes and mounts by name, env by name, pull secrets
    by name; tolerations are appended unless already present).
    """
    overrides = pod_spec_overrides(profile)
    spec = copy.deepcopy(dict(pod_spec))
    pod, container_fields = overrides["pod"], overrides["container"]

    if "nodeSelector" in pod:
        spec["nodeSelector"] = {**spec.get("nodeSelector", {}), **pod["nodeSelector"]}
    if "tolerations" in pod:
        current = spec.get("tolerations", [])
        spec["tolerations"] = current + [t for t in pod["tolerations"] if t not in current]
    if "volumes" in pod:
        spec["volumes"] = _merge_named(spec.get("volumes", []), pod["volumes"], "name")
    if "imagePullSecrets" in pod:
        spec["imagePullSecrets"] = _merge_named(
            spec.get("imagePullSecrets", []), pod["imagePullSecrets"], "name"
        )
    for field in ("serviceAccountName", "priorityClassName"):
        if field in pod:
            spec[field] = pod[field]

    wanted = None if containers is None else set(containers)
    found: set[str] = set()
    for container in spec.get("containers", []):
        if wanted is not None and container.get("name") not in wanted:
            continue
        found.add(container.get("name", ""))
        if "resources" in container_fields:
            resources = container.setdefault("resources", {})
            for kind, values in container_fields["resources"].items():
                resources[kind] = {**resources.get(kind, {}), **values}
        if "volumeMounts" in container_fields:
            container["volumeMounts"] = _merge_named(
                container.get("volumeMounts", []), container_fields["volumeMounts"], "name"
            )
        if "env" in container_fields:
            container["env"] = _merge_named(container.get("env", []), container_fields["env"], "name")
    if wanted is not None and wanted - found:
        raise ValueError(f"pod spec has no container named {', '.join(sorted(wanted - found))}")
    return spec
