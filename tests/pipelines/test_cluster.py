"""apply_profile: what a compiled pipeline's YAML carries for a task with a resource profile."""

# No `from __future__ import annotations` here: KFP reads the component's annotations as real types.
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import compiler, dsl

from components.images import image_for_step, load_images
from components.resources import (
    EFA_LABEL,
    GPU_PRODUCT_LABEL,
    INSTANCE_TYPE_LABEL,
    PRIORITY_CLASS_LABEL,
    PipelineProfiles,
    ResourceProfile,
    SecretEnv,
    merge_profiles,
    preset_profiles,
)
from pipelines.cluster import apply_profile, apply_step_profile, run_service_account


@dsl.component(base_image=image_for_step("train"), install_kfp_package=False)
def echo(text: str) -> str:
    return text


def compile_one_task(tmp_path: Path, profile: ResourceProfile) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compile a one-task pipeline with `profile` applied; returns (executor container, k8s executor)."""

    @dsl.pipeline(name="profile-test")
    def one_task() -> None:
        apply_profile(echo(text="hi"), profile)

    path = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(one_task, str(path))
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    container = docs[0]["deploymentSpec"]["executors"]["exec-echo"]["container"]
    platform: dict[str, Any] = {}
    if len(docs) > 1:
        platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-echo"]
    return container, platform


def test_gpu_profile_in_compiled_yaml(tmp_path: Path) -> None:
    profile = preset_profiles("p5").train.model_copy(
        update={"image_pull_secrets": ["ecr-pull"], "priority_class": "training-high"}
    )
    container, platform = compile_one_task(tmp_path, profile)

    resources = container["resources"]
    # The accelerator type is the resource name KFP's driver puts in the limits of the "main" container.
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "8"
    assert resources["resourceCpuRequest"] == "160"
    assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"] == "1600Gi"
    assert "resourceCpuLimit" not in resources
    assert {"name": "FI_PROVIDER", "value": "efa"} in container["env"]
    assert container["image"] == load_images().train

    assert platform["emptyDirMounts"] == [
        {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "256Gi", "volumeName": "dshm"}
    ]
    assert platform["nodeSelector"]["labels"] == {
        INSTANCE_TYPE_LABEL: "p5.48xlarge",
        GPU_PRODUCT_LABEL: "NVIDIA-H100-80GB-HBM3",
    }
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in platform["tolerations"]
    assert {"key": "vpc.amazonaws.com/efa", "operator": "Exists", "effect": "NoSchedule"} in platform[
        "tolerations"
    ]
    # One extended resource per KFP task: EFA and the priority class travel as labels for Kyverno.
    assert platform["podMetadata"]["labels"] == {EFA_LABEL: "32", PRIORITY_CLASS_LABEL: "training-high"}
    assert [secret["secretName"] for secret in platform["imagePullSecret"]] == ["ecr-pull"]


def test_cpu_profile_sets_no_gpu_and_no_kubernetes_platform(tmp_path: Path) -> None:
    container, platform = compile_one_task(tmp_path, preset_profiles("cpu").curate)
    resources = container["resources"]
    assert "accelerator" not in resources
    assert resources["resourceCpuRequest"] == "1" and resources["resourceCpuLimit"] == "2"
    assert resources["resourceMemoryLimit"] == "4Gi"
    assert "env" not in container
    assert platform == {}


def test_toleration_fields_pass_through(tmp_path: Path) -> None:
    profile = ResourceProfile(
        tolerations=[
            {
                "key": "dedicated",
                "operator": "Equal",
                "value": "ml",
                "effect": "NoExecute",
                "toleration_seconds": 60,
            }
        ]
    )
    _, platform = compile_one_task(tmp_path, profile)
    assert platform["tolerations"] == [
        {
            "key": "dedicated",
            "operator": "Equal",
            "value": "ml",
            "effect": "NoExecute",
            "tolerationSeconds": "60",
        }
    ]


def test_apply_step_profile_uses_that_step(tmp_path: Path) -> None:
    profiles = preset_profiles("p4d")

    @dsl.pipeline(name="step-profile-test")
    def one_task() -> None:
        apply_step_profile(echo(text="hi"), profiles, "evaluate")

    path = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(one_task, str(path))
    first = next(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    accelerator = first["deploymentSpec"]["executors"]["exec-echo"]["container"]["resources"]["accelerator"]
    assert accelerator["resourceCount"] == "1"


def test_run_service_account() -> None:
    assert run_service_account(PipelineProfiles()) is None
    same = merge_profiles({"all": {"service_account": "llmft-runner"}})
    assert run_service_account(same) == "llmft-runner"
    partial = merge_profiles({"rollout": {"service_account": "llmft-runner"}})
    assert run_service_account(partial) == "llmft-runner"
    split = merge_profiles({"train": {"service_account": "a"}, "rollout": {"service_account": "b"}})
    with pytest.raises(ValueError, match="one service account per run"):
        run_service_account(split)


def test_secret_env_is_a_secret_reference_on_the_task_pod(tmp_path: Path) -> None:
    profile = preset_profiles("p5").evaluate.model_copy(
        update={"secret_env": [SecretEnv(name="HF_TOKEN", secret="hf-token", key="token")]}
    )
    container, platform = compile_one_task(tmp_path, profile)
    assert platform["secretAsEnv"] == [
        {
            "secretName": "hf-token",
            "secretNameParameter": {"runtimeValue": {"constant": "hf-token"}},
            "keyToEnv": [{"secretKey": "token", "envVar": "HF_TOKEN"}],
            "optional": False,
        }
    ]
    assert all(item["name"] != "HF_TOKEN" for item in container.get("env", []))
