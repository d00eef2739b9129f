"""components/train/plan.py and `llmft train --dry-run`: every launcher prints the plan and
trains nothing (no output, no checkpoint, the train functions never called)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from components.curate.curate import CurateConfig, curate
from components.sample.dataset import SAMPLE_PATH
from components.train import launch, pytorchjob
from components.train import train as train_module
from components.train.memory import plan_checkpointing
from components.train.plan import (
    ModelShape,
    TrainError,
    checkpointed_layers,
    gpu_bytes_from_product,
    plan_steps,
    read_base_model_config,
)
from components.train.train import TrainConfig
from pipelines.cli import main

# The published Llama-3.1-8B config.json numbers (8.03 B parameters).
LLAMA_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> str:
    """The sample curated for real, so the plan reads curate's own stats.json."""
    output = tmp_path_factory.mktemp("plan") / "curated"
    curate(CurateConfig(inputs=[str(SAMPLE_PATH)], output=str(output)))
    return str(output)


@pytest.fixture
def no_training(monkeypatch):
    """Every way a launcher could start training fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run started training")

    monkeypatch.setattr(train_module, "train", refuse)
    monkeypatch.setattr(launch, "run_torchrun", refuse)
    monkeypatch.setattr(pytorchjob, "launch", refuse)
    monkeypatch.setattr(torch.optim.AdamW, "step", refuse)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def dry_run(base: str, data: str, output: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--base-model",
        base,
        "--data",
        data,
        "--output",
        str(output),
        "--mlflow-tracking-uri",
        "disabled",
        "--dry-run",
        *extra,
    ]


def expected_steps(data: str, world: int, **settings) -> int:
    stats = json.loads((Path(data) / "stats.json").read_text())
    config = TrainConfig(base_model="m", data=data, output="o", **settings)
    return plan_steps(config, stats["kept"]["train"], world).total_steps


@pytest.mark.parametrize(
    ("launcher", "world", "placement"),
    [
        ([], 1, "launcher: this process"),
        (["--launcher", "torchrun", "--gpus-per-node", "2"], 2, "launcher: torchrun, 2 processes"),
    ],
)
def test_dry_run_prints_the_plan_and_trains_nothing(
    launcher, world, placement, tiny_base_model, curated, tmp_path, no_training, capsys
):
    output = tmp_path / "out"
    exit_code = main(dry_run(tiny_base_model, curated, output, *launcher))
    out = capsys.readouterr().out
    assert exit_code == 0, out
    assert placement in out
    assert f"{expected_steps(curated, world)} optimizer steps" in out
    assert "llama: 2 layers, hidden 64" in out
    assert f"checkpoints: {output / 'checkpoints'}" in out
    assert "problems:\n  none found" in out
    assert not output.exists()


def test_pytorchjob_dry_run_puts_the_plan_above_the_job(
    tiny_base_model, curated, tmp_path, no_training, capsys
):
    output = tmp_path / "out"
    extra = ["--launcher", "pytorchjob", "--nodes", "2", "--global-batch-size", "64", "--preset", "p5"]
    exit_code = main(dry_run(tiny_base_model, curated, output, *extra))
    out = capsys.readouterr().out
    assert exit_code == 0, out
    plan = out.split("\napiVersion:", 1)[0]
    assert all(line.startswith("#") for line in plan.splitlines())
    # The p5 preset's GPUs (H100 80GB): the memory plan is computed, and 16 processes share a step.
    assert "PyTorchJob, 2 nodes x 8 processes" in plan and "activation checkpointing on 0 of 2 layers" in plan
    assert f"{expected_steps(curated, 16, global_batch_size=64)} optimizer steps" in plan
    job = yaml.safe_load(out)  # comments and all: the output can go to kubectl as it is
    assert job["kind"] == "PyTorchJob" and "apiVersion: " + job["apiVersion"] in out
    assert not output.exists()


def test_under_an_outer_torchrun_only_rank_zero_prints(
    tiny_base_model, curated, tmp_path, no_training, monkeypatch, capsys
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(dry_run(tiny_base_model, curated, tmp_path / "out")) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert main(dry_run(tiny_base_model, curated, tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "rank 0 of 2" in out and f"{expected_steps(curated, 2)} optimizer steps" in out


def test_a_plan_that_cannot_run_lists_the_problems_and_exits_1(curated, tmp_path, no_training, capsys):
    # The dataset given as the base model, and a step 3 processes cannot share.
    extra = ["--launcher", "torchrun", "--gpus-per-node", "3", "--global-batch-size", "16"]
    exit_code = main(dry_run(curated, curated, tmp_path / "out", *extra))
    out = capsys.readouterr().out
    assert exit_code == 1
    assert f"not a Hugging Face checkpoint: no config.json in {curated}" in out
    assert "cannot be shared evenly by 3 ranks" in out
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 is valid where a GPU is visible")
def test_bf16_on_a_cpu_is_a_problem(tiny_base_model, curated, tmp_path, no_training, capsys):
    exit_code = main(dry_run(tiny_base_model, curated, tmp_path / "out", "--precision", "bf16"))
    assert exit_code == 1
    assert "precision=bf16 needs a GPU" in capsys.readouterr().out


def test_plan_steps_is_the_train_loops_arithmetic():
    config = TrainConfig(base_model="m", data="d", output="o", micro_batch_size=4, global_batch_size=16)
    steps = plan_steps(config, 447, 1)
    assert (steps.micro_batches_per_epoch, steps.micro_batches_per_step, steps.accumulation) == (112, 4, 4)
    assert (steps.steps_per_epoch, steps.total_steps, steps.warmup_steps) == (28, 84, 2)
    assert plan_steps(config, 447, 2).accumulation == 2
    assert plan_steps(config.model_copy(update={"max_steps": 5}), 447, 1).total_steps == 5
    # Fewer examples than one global batch: still one step per epoch.
    assert plan_steps(config, 6, 1).micro_batches_per_step == 2
    with pytest.raises(TrainError, match="cannot be shared evenly by 3 ranks"):
        plan_steps(config, 447, 3)


def test_model_shape_counts_the_real_models_parameters(tiny_base_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = ModelShape.from_config(read_base_model_config(tiny_base_model))
    model = AutoModelForCausalLM.from_pretrained(tiny_base_model)
    assert shape.parameters() == sum(p.numel() for p in model.parameters())
    targets = TrainConfig(base_model="m", data="d", output="o").lora.target_modules
    trainable, _ = get_peft_model(
        model, LoraConfig(r=8, target_modules=targets)
    ).get_nb_trainable_parameters()
    assert shape.lora_parameters(8, targets) == trainable
    assert round(ModelShape.from_config(LLAMA_8B).parameters() / 1e9, 2) == 8.03


def test_checkpointed_layers_follow_the_memory_plan():
    config = TrainConfig(base_model="m", data="d", output="o", micro_batch_size=4, max_length=2048)
    shape = {"num_layers": 32, "hidden_size": 4096, "intermediate_size": 14336, "bytes_per_value": 2}
    gpu = gpu_bytes_from_product("NVIDIA-H100-80GB-HBM3")
    assert gpu == 80 * 2**30 and gpu_bytes_from_product("Tesla-T4") is None
    layers, memory = checkpointed_layers(config, **shape, on_gpu=True, weight_bytes=16 * 2**30, gpu_bytes=gpu)
    expected = plan_checkpointing(
        **shape,
        tokens_per_micro_batch=8192,
        weight_bytes=16 * 2**30,
        gpu_bytes=gpu,
    )
    assert memory == expected and layers == expected.checkpointed_layers
    assert checkpointed_layers(config, **shape, on_gpu=False, weight_bytes=0, gpu_bytes=0) == (0, None)
    everything = config.model_copy(update={"gradient_checkpointing": True})
    assert checkpointed_layers(everything, **shape, on_gpu=False, weight_bytes=0, gpu_bytes=0) == (32, None)
