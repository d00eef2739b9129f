"""GPUs asked = GPUs used: for every preset and every GPU step, the compiled pipeline requests exactly
the GPUs the step's code uses with the pipeline's default parameters (derived from that code)."""

from __future__ import annotations

import pytest
import yaml

from components.evaluate.evaluate import gpus_used as evaluate_gpus_used
from components.resources import PRESETS, load_profiles
from components.train.launch import gpus_used as train_gpus_used
from components.train.launch import processes_per_node
from pipelines.compile_pipeline import compile_pipeline


@pytest.fixture(scope="module", params=PRESETS)
def compiled(request, tmp_path_factory):
    preset = request.param
    path = compile_pipeline(tmp_path_factory.mktemp(preset) / "llm_finetune.yaml", preset=preset)
    spec, _ = yaml.safe_load_all(path.read_text())
    return preset, load_profiles(None, preset=preset), spec


def _defaults(spec: dict) -> dict:
    return {
        name: definition.get("defaultValue")
        for name, definition in spec["root"]["inputDefinitions"]["parameters"].items()
    }


def _requested(spec: dict) -> dict[str, int]:
    """GPUs each task asks for, by its display name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    executors = spec["deploymentSpec"]["executors"]
    requested = {}
    for task in tasks.values():
        component = spec["components"][task["componentRef"]["name"]]
        if "executorLabel" not in component:
            continue
        resources = executors[component["executorLabel"]]["container"].get("resources", {})
        requested[task["taskInfo"]["name"]] = int(resources.get("accelerator", {}).get("resourceCount", 0))
    return requested


def _device(gpus: int) -> str:
    return "cuda" if gpus else "cpu"


def test_train_uses_every_gpu_its_pod_asks_for(compiled):
    _, profiles, spec = compiled
    defaults = _defaults(spec)
    requested = _requested(spec)
    used = train_gpus_used(profiles.train, int(defaults["gpus_per_node"]))
    assert requested["LoRA fine-tune"] == used == profiles.train.gpus
    # In the pod, the default starts one process per visible GPU: all that were asked for.
    assert processes_per_node(int(defaults["gpus_per_node"]), requested["LoRA fine-tune"]) == max(used, 1)


def test_the_multi_node_launcher_holds_no_gpu(compiled):
    _, profiles, spec = compiled
    requested = _requested(spec)
    if profiles.train.gpus == 0:
        assert "LoRA fine-tune (PyTorchJob)" not in requested  # one task where there is no GPU to idle
        return
    assert requested["LoRA fine-tune (PyTorchJob)"] == 0
    # The job's pods, not the launcher, hold the GPUs, and use them all.
    assert train_gpus_used(profiles.train, int(_defaults(spec)["gpus_per_node"])) == profiles.train.gpus


def test_evaluate_uses_every_gpu_it_asks_for(compiled):
    _, _, spec = compiled
    asked = _requested(spec)["Evaluate base vs tuned"]
    assert evaluate_gpus_used(_device(asked), asked) == asked


def test_export_merges_on_the_cpu(compiled):
    _, _, spec = compiled
    # export.py loads the model without a device map: it merges in host memory.
    assert _requested(spec)["Export HF checkpoint"] == 0


def test_build_asks_for_gpus_only_where_an_engine_is_built(compiled):
    _, profiles, spec = compiled
    defaults = _defaults(spec)
    requested = _requested(spec)
    engine_gpus = int(defaults["tensor_parallel_size"]) * int(defaults["pipeline_parallel_size"])
    if profiles.build.gpus == 0:
        assert requested["Build model repository"] == 0
        return
    assert requested["Build TensorRT-LLM engine"] == engine_gpus
    # hf (the default mode) and trtllm-llmapi write configuration files only.
    assert defaults["serving_mode"] != "trtllm-engine"
    assert requested["Build model repository"] == 0


def test_processes_per_node():
    assert processes_per_node(0, 8) == 8
    assert processes_per_node(0, 0) == 1  # a CPU-only pod trains in one process
    assert processes_per_node(2, 8) == 2
    assert processes_per_node(1, 0) == 1
    with pytest.raises(ValueError, match="sees 2 GPU"):
        processes_per_node(4, 2)
