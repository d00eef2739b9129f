"""Resource profiles: presets, the YAML override file, validation and pod-spec fragments."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
from pydantic import ValidationError

from components.resources import (
    EFA_LABEL,
    EFA_RESOURCE,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    INSTANCE_TYPE_LABEL,
    PRESETS,
    PRIORITY_CLASS_LABEL,
    PROFILES,
    STEPS,
    PipelineProfiles,
    ProfileConfigError,
    ResourceProfile,
    SecretEnv,
    Toleration,
    apply_to_pod_spec,
    load_profiles,
    memory_bytes,
    pod_spec_overrides,
    preset_profiles,
)

GPU_STEPS = ("train", "evaluate", "build")
CPU_STEPS = ("curate", "export", "rollout", "finalize", "train_launcher", "build_repository")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- presets ------------------------------------------------------------------------------------------


def test_default_profiles_are_the_p5_preset() -> None:
    assert PipelineProfiles() == preset_profiles("p5") == load_profiles(None)
    assert set(PipelineProfiles.model_fields) == set(PROFILES)


@pytest.mark.parametrize(
    ("preset", "instance", "product", "efa"),
    [
        ("p5", "p5.48xlarge", "NVIDIA-H100-80GB-HBM3", 32),
        # p4d carries the 40 GB A100; the 80 GB part is p4de.
        ("p4d", "p4d.24xlarge", "NVIDIA-A100-SXM4-40GB", 4),
        ("p4de", "p4de.24xlarge", "NVIDIA-A100-SXM4-80GB", 4),
    ],
)
def test_gpu_presets(preset: str, instance: str, product: str, efa: int) -> None:
    profiles = preset_profiles(preset)
    train = profiles.train
    assert (train.gpus, train.efa, train.gpu_product) == (8, efa, product)
    assert train.effective_node_selector() == {GPU_PRODUCT_LABEL: product, INSTANCE_TYPE_LABEL: instance}
    assert Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule") in train.tolerations
    assert memory_bytes(train.shm_size or "0") >= 64 * 2**30
    for step in ("evaluate", "build"):
        profile = profiles.for_step(step)
        # One GPU: what evaluate and a default (tp = pp = 1) engine build use (test_gpu_use.py).
        assert profile.gpus == 1 and profile.gpu_product == product
        assert profile.efa == 0  # single-pod steps never talk across nodes
    for step in CPU_STEPS:
        profile = profiles.for_step(step)
        assert profile.gpus == 0 and profile.efa == 0 and not profile.tolerations
        assert profile.shm_size is None and not profile.effective_node_selector()
        assert profile.cpu_request and profile.memory_limit


def test_cpu_preset_has_no_gpus_efa_or_taints() -> None:
    profiles = preset_profiles("cpu")
    for step in STEPS:
        profile = profiles.for_step(step)
        assert profile.gpus == 0 and profile.efa == 0 and profile.gpu_product is None
        assert not profile.tolerations and not profile.node_selector
        assert not profile.pod_labels() and not profile.environment()
        assert memory_bytes(profile.memory_limit or "0") <= 8 * 2**30  # fits a laptop's kind cluster


def test_every_preset_validates_and_unknown_preset_fails() -> None:
    for preset in PRESETS:
        preset_profiles(preset)
    with pytest.raises(ValueError, match="unknown resource preset 'p6'"):
        preset_profiles("p6")


# --- the override file ---------------------------------------------------------------------------------


def test_yaml_overrides_merge_per_step_and_per_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
train:
  gpus: 4
  node_selector:
    karpenter.sh/nodepool: gpu
    node.kubernetes.io/instance-type: null
evaluate:
  gpu_product: null
  tolerations: []
""",
    )
    profiles = load_profiles(path)
    base = preset_profiles("p5")
    # Overridden fields change ...
    assert profiles.train.gpus == 4
    assert profiles.train.node_selector == {"karpenter.sh/nodepool": "gpu"}
    assert profiles.evaluate.gpu_product is None and profiles.evaluate.tolerations == []
    # ... everything else keeps the preset's value.
    assert profiles.train.efa == base.train.efa and profiles.train.shm_size == base.train.shm_size
    assert profiles.train.tolerations == base.train.tolerations
    assert profiles.evaluate.gpus == base.evaluate.gpus
    for step in ("curate", "export", "build", "rollout", "finalize"):
        assert profiles.for_step(step) == base.for_step(step)


def test_all_section_applies_to_every_step_before_its_own(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
all:
  image_pull_secrets: [ecr-pull]
  priority_class: batch-low
train:
  priority_class: training-high
""",
    )
    profiles = load_profiles(path, preset="p4d")
    for step in STEPS:
        assert profiles.for_step(step).image_pull_secrets == ["ecr-pull"]
    assert profiles.train.priority_class == "training-high"
    assert profiles.curate.priority_class == "batch-low"
    assert profiles.train.gpu_product == "NVIDIA-A100-SXM4-40GB"  # the preset argument still counts


def test_empty_file_is_the_preset(tmp_path: Path) -> None:
    assert load_profiles(write(tmp_path, "# nothing\n"), preset="cpu") == preset_profiles("cpu")


def test_unknown_step_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "trian:\n  gpus: 1\n")
    with pytest.raises(ProfileConfigError) as err:
        load_profiles(path)
    assert str(path) in str(err.value) and "'trian'" in str(err.value)


def test_unknown_field_names_file_and_step_field(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  gpu: 1\n")
    with pytest.raises(ProfileConfigError) as err:
        load_profiles(path)
    assert str(path) in str(err.value) and "train.gpu" in str(err.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("train:\n  memory_limit: 1.5Gi\n", "train.memory_limit"),
        ("train:\n  cpu_request: two\n", "train.cpu_request"),
        ("train:\n  gpus: -1\n", "train.gpus"),
        ("curate:\n  gpu_product: NVIDIA-H100-80GB-HBM3\n", "gpus is 0"),
        ("train:\n  shm_size: 4Ti\n", "exceeds memory_limit"),
        ("train:\n  tolerations: [{key: a, operator: Exists, value: b}]\n", "must not set a value"),
        ("train:\n  priority_class: Not_A_Name\n", "invalid priority class"),
        ("- train\n", "expected a mapping"),
        ("train: [1]\n", "must be a mapping"),
    ],
)
def test_invalid_values_name_the_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProfileConfigError) as err:
        load_profiles(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileConfigError, match="cannot read"):
        load_profiles(tmp_path / "absent.yaml")


# --- pod-spec fragments ---------------------------------------------------------------------------------


def test_pod_spec_overrides_for_a_gpu_step() -> None:
    profile = preset_profiles("p5").train.model_copy(
        update={"service_account": "trainer", "image_pull_secrets": ["ecr"], "priority_class": "high"}
    )
    overrides = pod_spec_overrides(profile)
    pod, container = overrides["pod"], overrides["container"]
    assert container["resources"] == {
        "requests": {"cpu": "160", "memory": "1600Gi"},
        "limits": {"memory": "1600Gi", GPU_RESOURCE: "8", EFA_RESOURCE: "32"},
    }
    assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    assert {"name": "FI_PROVIDER", "value": "efa"} in container["env"]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Gi"}}]
    assert pod["nodeSelector"] == {
        INSTANCE_TYPE_LABEL: "p5.48xlarge",
        GPU_PRODUCT_LABEL: "NVIDIA-H100-80GB-HBM3",
    }
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["serviceAccountName"] == "trainer"
    assert pod["imagePullSecrets"] == [{"name": "ecr"}]
    assert pod["priorityClassName"] == "high"
    # KFP task pods carry the same facts as labels (the Kyverno policy reads them).
    assert profile.pod_labels() == {EFA_LABEL: "32", PRIORITY_CLASS_LABEL: "high"}


def test_pod_spec_overrides_for_a_cpu_step_omit_unset_fields() -> None:
    overrides = pod_spec_overrides(ResourceProfile(cpu_request="1", memory_limit="2Gi"))
    assert overrides == {
        "pod": {},
        "container": {"resources": {"requests": {"cpu": "1"}, "limits": {"memory": "2Gi"}}},
    }
    assert pod_spec_overrides(ResourceProfile()) == {"pod": {}, "container": {}}


def test_apply_to_pod_spec_gives_a_valid_pod() -> None:
    """The fragments merged into a launched pod's spec pass the Kubernetes schema."""
    profile = preset_profiles("p5").train.model_copy(update={"image_pull_secrets": ["ecr"]})
    spec = {
        "containers": [
            {
                "name": "pytorch",
                "image": "example.com/llmft-train:1",
                "env": [{"name": "FI_PROVIDER", "value": "x"}],
            },
            {"name": "sidecar", "image": "example.com/sidecar:1"},
        ],
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        "volumes": [{"name": "data", "emptyDir": {}}],
    }
    merged = apply_to_pod_spec(spec, profile, containers=["pytorch"])
    assert spec["volumes"] == [{"name": "data", "emptyDir": {}}]  # input untouched
    main, sidecar = merged["containers"]
    assert main["resources"]["limits"][EFA_RESOURCE] == "32"
    assert [e for e in main["env"] if e["name"] == "FI_PROVIDER"] == [{"name": "FI_PROVIDER", "value": "efa"}]
    assert "resources" not in sidecar and "volumeMounts" not in sidecar
    assert [v["name"] for v in merged["volumes"]] == ["data", "dshm"]
    assert len(merged["tolerations"]) == 2  # the existing GPU toleration is not duplicated
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "worker"}, "spec": merged}
    kubernetes_validate.validate(pod, "1.30", strict=True)
    with pytest.raises(ValueError, match="no container named missing"):
        apply_to_pod_spec(spec, profile, containers=["missing"])


def test_secret_env_becomes_secret_key_refs_on_launched_pods() -> None:
    profile = preset_profiles("p5").evaluate.model_copy(
        update={"secret_env": [SecretEnv(name="HF_TOKEN", secret="hf-token", key="token")]}
    )
    env = pod_spec_overrides(profile)["container"]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in env
    assert all("value" not in item for item in env if item["name"] == "HF_TOKEN")


@pytest.mark.parametrize(
    ("secret_env", "message"),
    [
        (
            [
                {"name": "HF_TOKEN", "secret": "a", "key": "k"},
                {"name": "HF_TOKEN", "secret": "b", "key": "k"},
            ],
            "sets HF_TOKEN more than once",
        ),
        ([{"name": "HF TOKEN", "secret": "a", "key": "k"}], "invalid environment variable name"),
        ([{"name": "HF_TOKEN", "secret": "Not_A_Name", "key": "k"}], "invalid Secret name"),
        ([{"name": "HF_TOKEN", "secret": "a", "key": "k", "value": "hf_x"}], "Extra inputs"),
    ],
)
def test_secret_env_is_checked(secret_env: list, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ResourceProfile(secret_env=secret_env)
