"""Apply resource profiles to KFP tasks at compile time: the only place that does so.

`apply_profile(task, profile)` turns a `components.resources.ResourceProfile` into KFP task settings:
- GPUs: `set_accelerator_type("nvidia.com/gpu")` + `set_accelerator_limit(n)`. KFP's backend driver
  writes `limits[<accelerator type>] = <count>` on the pod's "main" container, so the accelerator type
  is the Kubernetes resource name; the GPU *model* goes in the node selector (`nvidia.com/gpu.product`).
- CPU/memory requests and limits;
- node selector (including the GPU product) and tolerations through kfp-kubernetes;
- /dev/shm as a memory-backed emptyDir with a size limit (`kfp.kubernetes.empty_dir_mount`);
- EFA count and priority class as pod labels (`llmft.io/efa`, `llmft.io/priority-class`): a KFP task
  takes only one extended resource (kubeflow/pipelines#10996) and has no priority class setting, so the
  Kyverno policy in deploy/ turns the labels into the EFA limit and spec.priorityClassName;
- the libfabric environment for EFA, and image pull secrets.

`expose_run_id(task)` gives the task's step the run id through the environment (see below).

The service account is not set here: KFP 2.17 (kfp-kubernetes included) has no per-task service
account, only the run's (`kfp.Client.create_run_from_pipeline_package(..., service_account=...)`).
`run_service_account(profiles)` gives the value the submit client passes.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from kfp import kubernetes
from kfp.dsl import PipelineTask

from components.resources import (
    GPU_RESOURCE,
    PROFILES,
    SHM_MOUNT_PATH,
    SHM_VOLUME_NAME,
    PipelineProfiles,
    ResourceProfile,
)
from components.step_io import PIPELINE_RUN_ENV

logger = logging.getLogger(__name__)

# The KFP API server labels every pod of a run with the run's id.
RUN_ID_FIELD_PATH = "metadata.labels['pipeline/runid']"

TaskT = TypeVar("TaskT", bound=PipelineTask)


def apply_profile(task: TaskT, profile: ResourceProfile) -> TaskT:
    """Set `profile`'s resources, scheduling, /dev/shm, labels and pull secrets on `task`; returns it."""
    if profile.gpus > 0:
        task.set_accelerator_type(GPU_RESOURCE)
        task.set_accelerator_limit(profile.gpus)
    if profile.cpu_request:
        task.set_cpu_request(profile.cpu_request)
    if profile.cpu_limit:
        task.set_cpu_limit(profile.cpu_limit)
    if profile.memory_request:
        task.set_memory_request(profile.memory_request)
    if profile.memory_limit:
        task.set_memory_limit(profile.memory_limit)

    for key, value in profile.effective_node_selector().items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in profile.tolerations:
        kubernetes.add_toleration(
            task,
            key=toleration.key,
            operator=toleration.operator,
            value=toleration.value,
            effect=toleration.effect,
            toleration_seconds=toleration.toleration_seconds,
        )
    if profile.shm_size:
        kubernetes.empty_dir_mount(
            task,
            volume_name=SHM_VOLUME_NAME,
            mount_path=SHM_MOUNT_PATH,
            medium="Memory",
            size_limit=profile.shm_size,
        )
    for key, value in profile.pod_labels().items():
        kubernetes.add_pod_label(task, label_key=key, label_value=value)
    for name, value in profile.environment().items():
        task.set_env_variable(name, value)
    for item in profile.secret_env:
        kubernetes.use_secret_as_env(
            task, secret_name=item.secret, secret_key_to_env={item.key: item.name}, optional=item.optional
        )
    if profile.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(profile.image_pull_secrets))

    logger.debug(
        "profile on task %s: gpus=%d efa=%d shm=%s", task.name, profile.gpus, profile.efa, profile.shm_size
    )
    return task


def expose_run_id(task: TaskT) -> TaskT:
    """Give the task's step the KFP run id in $LLMFT_PIPELINE_RUN, from its pod's label (downward API).

    Not a task input: KFP's cache key covers the inputs, so a run id there would make every run a
    cache miss. The platform spec's environment is not part of the key.
    """
    kubernetes.use_field_path_as_env(task, env_name=PIPELINE_RUN_ENV, field_path=RUN_ID_FIELD_PATH)
    return task


def apply_step_profile(task: TaskT, profiles: PipelineProfiles, step: str) -> TaskT:
    """`apply_profile` with the profile of `step` (one of `components.resources.PROFILES`)."""
    return apply_profile(task, profiles.for_step(step))


def run_service_account(profiles: PipelineProfiles) -> str | None:
    """The service account to pass when submitting a run, or None for the namespace's default.

    KFP runs every task pod of a run under one service account, so the steps must agree; a profile
    without one defers to the others. Pods that steps launch themselves use their own profile's value.
    """
    accounts = {step: profiles.for_step(step).service_account for step in PROFILES}
    distinct = sorted({account for account in accounts.values() if account})
    if len(distinct) > 1:
        per_step = ", ".join(f"{step}={account}" for step, account in accounts.items() if account)
        raise ValueError(
            "KFP sets one service account per run, not per task; the profiles name several "
            f"({per_step}). Give every step the same service_account (e.g. in the file's `all` section)."
        )
    return distinct[0] if distinct else None
