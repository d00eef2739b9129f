"""The compiled llm_finetune YAML: what a user uploads in the Kubeflow UI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.images import load_images
from components.resources import EFA_LABEL, load_profiles
from pipelines.compile_pipeline import compile_pipeline

REPO = Path(__file__).resolve().parents[2]
# Under the default (p5) preset: the GPU tasks of train and build come first in their If; the CPU
# stand-ins (multi-node launcher, repository without an engine) are train-op and build-op-2.
STEP_TASKS = {
    "curate": "curate-op",
    "train": "train-op-2",
    "evaluate": "evaluate-op",
    "export": "export-op",
    "build": "build-op",
    "rollout": "rollout-op",
    "finalize": "finalize-op",
}
CPU_STAND_INS = {"train_launcher": "train-op", "build_repository": "build-op-2"}
REQUIRED_PARAMETERS = {"base_model_uri", "train_data_uri", "storage_root"}
# Placeholders KFP fills with values that differ per run.
RUN_SPECIFIC = (
    "{{$.pipeline_job_uuid}}",
    "{{$.pipeline_job_name}}",
    "{{$.pipeline_task_uuid}}",
    "{{$.pipeline_job_create_time",
)
EXPECTED_PARAMETERS = {
    "eval_data_uri": "",
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    "epochs": 3.0,
    "learning_rate": 2e-4,
    "micro_batch_size": 4,
    "global_batch_size": 64,
    "precision": "auto",
    "train_backend": "hf",
    "save_every_steps": 200,
    "num_nodes": 1,
    "gpus_per_node": 0,
    "sharding": "auto",
    "train_env_from_secrets": "",
    "train_job_cleanup": "keep",
    "gate_min_exact_match_gain": 0.0,
    "gate_max_val_loss": 0.0,
    "serving_mode": "hf",
    "quantization": "none",
    "triton_replicas": 1,
    "namespace": "llmft",
    "mlflow_tracking_uri": "",
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict, Path]:
    path = compile_pipeline(tmp_path_factory.mktemp("dist") / "llm_finetune.yaml")
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform, path


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the DAG, wherever it sits (root, exit handler, gate condition)."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def _executor(spec: dict, platform: dict, task: str) -> tuple[dict, dict]:
    executor = f"exec-{task}"
    container = spec["deploymentSpec"]["executors"][executor]["container"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].get(executor, {})
    return container, k8s


def test_compiling_twice_gives_identical_bytes(compiled, tmp_path):
    _, _, first = compiled
    second = compile_pipeline(tmp_path / "again.yaml")
    assert first.read_bytes() == second.read_bytes()


def test_compile_py_writes_dist_yaml(tmp_path):
    output = tmp_path / "dist" / "llm_finetune.yaml"
    subprocess.run([sys.executable, "compile.py", "--output", str(output)], cwd=REPO, check=True, timeout=120)
    assert yaml.safe_load_all(output.read_text())


def test_run_inputs_are_required_and_the_rest_have_a_default(compiled):
    spec, _, _ = compiled
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    for name, expected in EXPECTED_PARAMETERS.items():
        assert parameters[name]["defaultValue"] == pytest.approx(expected), name
    for name, definition in parameters.items():
        # The UI asks for a parameter without a default; the client refuses a run without it.
        required = name in REQUIRED_PARAMETERS
        assert ("defaultValue" not in definition and not definition.get("isOptional")) == required, name
        assert len(definition.get("description", "")) > 20, f"{name} has no useful description"


def test_no_cached_task_takes_a_run_specific_input(compiled):
    """KFP's cache key covers a task's inputs: one that changes every run would make caching never hit."""
    spec, _, _ = compiled
    cached = [task for task in _tasks(spec).values() if task.get("cachingOptions", {}).get("enableCache")]
    assert {task["taskInfo"]["name"] for task in cached} >= {
        "Curate data",
        "LoRA fine-tune",
        "Evaluate base vs tuned",
    }
    for task in cached:
        text = yaml.safe_dump(task.get("inputs", {}))
        assert not any(placeholder in text for placeholder in RUN_SPECIFIC), task["taskInfo"]["name"]
        assert "pipeline_run" not in task.get("inputs", {}).get("parameters", {}), task["taskInfo"]["name"]
        component = spec["components"][task["componentRef"]["name"]]
        assert "pipeline_run" not in component.get("inputDefinitions", {}).get("parameters", {})


def test_every_task_reads_the_run_id_from_its_pod(compiled):
    spec, platform, _ = compiled
    for executor in spec["deploymentSpec"]["executors"]:
        k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][executor]
        assert {"name": "LLMFT_PIPELINE_RUN", "fieldPath": "metadata.labels['pipeline/runid']"} in k8s[
            "fieldPathAsEnv"
        ], executor


def test_multi_node_train_and_engine_build_are_branches_joined_with_one_of(compiled):
    spec, _, _ = compiled
    tasks = _tasks(spec)
    conditions = {task["taskInfo"]["name"]: task for task in tasks.values() if "triggerPolicy" in task}
    assert conditions["Several nodes"]["triggerPolicy"]["condition"] == (
        "int(inputs.parameter_values['pipelinechannel--num_nodes']) > 1"
    )
    assert "trtllm-engine" in conditions["Engine build"]["triggerPolicy"]["condition"]
    # evaluate reads the adapter of whichever train task ran (dsl.OneOf: a condition-branches output).
    adapter = tasks["evaluate-op"]["inputs"]["artifacts"]["adapter"]["taskOutputArtifact"]
    assert adapter["producerTask"].startswith("condition-branches")


def test_dag_shape_gate_and_exit_handler(compiled):
    spec, _, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "finalize-op"}
    assert root["finalize-op"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    tasks = _tasks(spec)
    gate = next(task for task in tasks.values() if task["taskInfo"]["name"] == "Gate passed")
    assert gate["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--evaluate-op-Output'] == 'passed'"
    )
    gated = spec["components"][gate["componentRef"]["name"]]["dag"]["tasks"]
    assert {"export-op", "rollout-op"} <= set(gated)
    # The train tasks sit inside the num_nodes branches, which run after curate.
    assert set(tasks["condition-branches-2"]["dependentTasks"]) == {"curate-op"}


def test_display_names_retries_and_caching(compiled):
    spec, _, _ = compiled
    tasks = _tasks(spec)
    for task in STEP_TASKS.values():
        assert tasks[task]["taskInfo"]["name"] != task, f"{task} has no display name"
    for task in ("curate-op", "train-op", "train-op-2", "evaluate-op", "export-op", "build-op", "rollout-op"):
        retry = tasks[task]["retryPolicy"]
        assert retry["maxRetryCount"] == 3 and retry["backoffFactor"] == 2.0, task
    assert tasks["curate-op"]["cachingOptions"]["enableCache"] is True
    assert tasks["rollout-op"]["cachingOptions"].get("enableCache", False) is False
    assert tasks["finalize-op"]["cachingOptions"].get("enableCache", False) is False


def test_pipeline_ttl(compiled):
    _, platform, _ = compiled
    assert platform["platforms"]["kubernetes"]["pipelineConfig"]["resourceTtlOnCompletion"] == 7 * 24 * 3600


@pytest.mark.parametrize("step", ["train", "evaluate", "build"])
def test_gpu_steps_get_gpus_shm_tolerations_and_node_selector(compiled, step):
    spec, platform, _ = compiled
    profile = getattr(load_profiles(None, preset="p5"), step)
    container, k8s = _executor(spec, platform, STEP_TASKS[step])
    accelerator = container["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu"
    assert int(accelerator["resourceCount"]) == profile.gpus > 0
    assert k8s["emptyDirMounts"] == [
        {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": profile.shm_size, "volumeName": "dshm"}
    ]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in k8s["tolerations"]
    assert k8s["nodeSelector"]["labels"]["nvidia.com/gpu.product"] == profile.gpu_product


def test_train_carries_efa_as_a_pod_label_not_a_second_extended_resource(compiled):
    spec, platform, _ = compiled
    container, k8s = _executor(spec, platform, STEP_TASKS["train"])
    assert k8s["podMetadata"]["labels"][EFA_LABEL] == str(load_profiles(None, preset="p5").train.efa)
    assert "vpc.amazonaws.com/efa" not in str(container["resources"])


def test_cpu_steps_request_no_gpu(compiled):
    spec, platform, _ = compiled
    for task in ("curate-op", "export-op", "rollout-op", "finalize-op", *CPU_STAND_INS.values()):
        container, k8s = _executor(spec, platform, task)
        assert "accelerator" not in container.get("resources", {}), task
        assert EFA_LABEL not in k8s.get("podMetadata", {}).get("labels", {}), task


def test_images_come_from_the_images_file(compiled):
    spec, _, _ = compiled
    images = load_images()
    image_steps = {**STEP_TASKS, "train": "train-op", "build": "build-op-2"}
    for step, task in [*STEP_TASKS.items(), *image_steps.items()]:
        container = spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"]
        assert container["image"] == images.for_step(step), step


def test_profile_overrides_reach_the_yaml(tmp_path):
    overrides = tmp_path / "profiles.yaml"
    overrides.write_text(
        "train:\n  gpus: 4\n  shm_size: 32Gi\n  node_selector:\n    team: llm\nevaluate:\n  gpus: 1\n"
    )
    path = compile_pipeline(tmp_path / "custom.yaml", profiles_file=str(overrides))
    spec, platform = yaml.safe_load_all(path.read_text())
    container, k8s = _executor(spec, platform, STEP_TASKS["train"])
    assert container["resources"]["accelerator"]["resourceCount"] == "4"
    assert k8s["emptyDirMounts"][0]["sizeLimit"] == "32Gi"
    assert k8s["nodeSelector"]["labels"]["team"] == "llm"
    container, _ = _executor(spec, platform, "evaluate-op")
    assert container["resources"]["accelerator"]["resourceCount"] == "1"


def test_committed_package_matches_the_code(compiled):
    """dist/llm_finetune.yaml ships in the repository for upload without installing; it must be current."""
    _, _, fresh = compiled
    assert (REPO / "dist" / "llm_finetune.yaml").read_bytes() == fresh.read_bytes(), (
        "dist/llm_finetune.yaml is stale: run `python compile.py` and commit it"
    )
