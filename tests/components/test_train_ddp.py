"""components/train data parallel: torchrun with 2 CPU processes (gloo) trains the very steps one
process trains (same global batch, same loss per response token), through the CLI and through
`run_torchrun`, which also resumes from a checkpoint, logs to the caller's MLflow run and reports
failures with the output's tail. With sharding=fsdp (FSDP2, the model sharded over the ranks)
the run trains the same steps as DDP, its adapter gives the same logits, and its checkpoints
resume under FSDP and in one process. GPU variants (pytest -m gpu) run on a CUDA machine.

This module needs no MLflow or S3 at import, so its GPU tests run on a bare CUDA machine.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from components import storage
from components.records import Record, write_records
from components.tracking import Tracker
from components.train import train as train_module
from components.train.distributed import choose_sharding
from components.train.launch import CONFIG_ENV, run_torchrun, stop_torchrun
from components.train.train import TRAINER_STATE, LoraSettings, TrainConfig, TrainError, train

REPO = Path(__file__).resolve().parents[2]
TORCHRUN_TIMEOUT_S = 120
STEPS = 8


def write_data(directory: Path) -> str:
    """40 training and 9 validation sentiment records, in a complete (manifested) directory.

    9, not 8: two ranks score 5 and 4 of them, in 3 and 2 micro batches of 2, so an FSDP run
    must even out its validation forwards (each one needs every rank).
    """
    rng = random.Random(3)
    words = {"positive": ["wonderful", "lovely", "great"], "negative": ["terrible", "rude", "boring"]}
    subjects = ["the soup", "the service", "the movie", "the hotel room"]

    def records(count: int, prefix: str) -> list[Record]:
        labels = ["positive" if index % 2 == 0 else "negative" for index in range(count)]
        return [
            Record(
                id=f"{prefix}{index}",
                prompt=f"Classify the sentiment of this review: {rng.choice(subjects)} was "
                f"{rng.choice(words[label])}.",
                response=label,
            )
            for index, label in enumerate(labels)
        ]

    directory.mkdir(parents=True)
    write_records(directory / "train.jsonl", records(40, "t"))
    write_records(directory / "val.jsonl", records(9, "v"))
    storage.publish_dir(directory, str(directory), producer="test")
    return str(directory)


def ddp_config(base: str, data: str, output: Path, **overrides) -> TrainConfig:
    # LoRA dropout off: every rank draws its own dropout masks, so only without dropout can two
    # ranks reproduce one process's numbers. 2 micro batches of 2 per rank make the global 8.
    settings = {
        "base_model": base,
        "data": data,
        "output": str(output),
        "max_steps": STEPS,
        "learning_rate": 3e-3,
        "micro_batch_size": 2,
        "global_batch_size": 8,
        "max_length": 128,
        "save_every_steps": 4,
        "log_every_steps": 5,
        "device": "cpu",
        "precision": "fp32",
        "lora": LoraSettings(r=8, alpha=16, dropout=0.0),
    }
    return TrainConfig(**{**settings, **overrides})


def metrics_of(output: Path) -> dict:
    return json.loads((output / "metrics.json").read_text())


def assert_same_training(output: Path, reference: Path, atol: float = 1e-4) -> None:
    curve, expected = metrics_of(output)["loss_curve"], metrics_of(reference)["loss_curve"]
    assert [step for step, _ in curve] == [step for step, _ in expected] == list(range(1, STEPS + 1))
    torch.testing.assert_close(
        torch.tensor([loss for _, loss in curve]),
        torch.tensor([loss for _, loss in expected]),
        atol=atol,
        rtol=0,
    )
    assert metrics_of(output)["val_loss"] == pytest.approx(metrics_of(reference)["val_loss"], abs=atol)
    assert metrics_of(output)["train_tokens"] == metrics_of(reference)["train_tokens"]
    weights = load_file(output / "adapter" / "adapter_model.safetensors")
    expected_weights = load_file(reference / "adapter" / "adapter_model.safetensors")
    assert weights.keys() == expected_weights.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, expected_weights[name], atol=atol, rtol=0, msg=name)


def torchrun_cli(config: TrainConfig, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N -m pipelines.cli train --config-env ...`.

    `python -m torch.distributed.run` is torchrun, run by this interpreter (no PATH lookup).
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "pipelines.cli",
        "train",
        "--config-env",
        CONFIG_ENV,
        "--mlflow-tracking-uri",
        "disabled",
    ]
    env = {**os.environ, CONFIG_ENV: config.model_dump_json(), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TORCHRUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_torchrun(process)  # torchrun stops its workers; nothing is left running
        raise
    return subprocess.CompletedProcess(command, process.returncode, output)


def adapter_logits(base: str, adapter: Path, text: str) -> torch.Tensor:
    """Logits of `text` from the base model with `adapter` loaded as evaluate loads it (CPU, fp32)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(adapter)(text, return_tensors="pt")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    with torch.no_grad():
        return model(**tokens).logits


@dataclass(frozen=True)
class TorchrunRun:
    output: Path
    log: str  # torchrun's output, every rank's


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    return write_data(tmp_path_factory.mktemp("ddp-data") / "curated")


@pytest.fixture(scope="module")
def single(tiny_base_model, dataset, tmp_path_factory) -> Path:
    """The one-process run every data parallel run must reproduce."""
    output = tmp_path_factory.mktemp("single") / "run"
    train(ddp_config(tiny_base_model, dataset, output))
    return output


def torchrun_cli_run(config: TrainConfig) -> TorchrunRun:
    completed = torchrun_cli(config)
    assert completed.returncode == 0, completed.stdout[-4000:]
    return TorchrunRun(Path(config.output), completed.stdout)


@pytest.fixture(scope="module")
def ddp_run(tiny_base_model, dataset, tmp_path_factory) -> TorchrunRun:
    """Two CPU ranks with DDP, through the CLI."""
    output = tmp_path_factory.mktemp("ddp") / "run"
    return torchrun_cli_run(ddp_config(tiny_base_model, dataset, output, sharding="ddp"))


@pytest.fixture(scope="module")
def fsdp_run(tiny_base_model, dataset, tmp_path_factory) -> TorchrunRun:
    """Two CPU ranks with FSDP2 (gloo), through the CLI."""
    output = tmp_path_factory.mktemp("fsdp") / "run"
    return torchrun_cli_run(ddp_config(tiny_base_model, dataset, output, sharding="fsdp"))


# --- CPU, 2 processes (gloo) ---------------------------------------------------------------


def test_torchrun_cli_trains_the_same_steps_as_one_process(ddp_run, single) -> None:
    output = ddp_run.output
    assert "rank 0 of 2" in ddp_run.log and "rank 1 of 2" in ddp_run.log
    assert "micro batch 2 x 2 accumulation x 2 ranks" in ddp_run.log
    assert metrics_of(output)["world_size"] == 2
    assert_same_training(output, single)
    # Rank 0 alone wrote the checkpoints, each complete and marked with the world size.
    assert storage.list_dirs(str(output / "checkpoints")) == ["step-00000004", "step-00000008"]
    manifest = storage.require_complete(str(output / "checkpoints" / "step-00000008"))
    assert manifest.metadata["world_size"] == 2
    state = torch.load(output / "checkpoints" / "step-00000008" / "trainer_state.pt", weights_only=True)
    assert len(state["rng"]) == 2  # each rank's RNG, so each resumes its own dropout stream


def test_run_torchrun_resumes_and_logs_to_the_callers_mlflow_run(
    tiny_base_model, dataset, single, mlflow_server, tmp_path, caplog
) -> None:
    """Two ranks continue from a one-process checkpoint (step 4) and end where one process ended."""
    from mlflow import MlflowClient

    from components.tracking import run_step

    output = tmp_path / "run"
    shutil.copytree(single / "checkpoints" / "step-00000004", output / "checkpoints" / "step-00000004")
    config = ddp_config(tiny_base_model, dataset, output)
    step = functools.partial(run_torchrun, nproc_per_node=2, timeout_s=TORCHRUN_TIMEOUT_S)
    with caplog.at_level(logging.INFO, logger="components.train.launch"):
        result, run_id = run_step("train", step, config, mlflow_server, experiment="test-train-ddp")
    assert result.steps == STEPS and result.adapter == str(output / "adapter")
    assert metrics_of(output)["resumed_from"] == str(output / "checkpoints" / "step-00000004")
    assert "written by 1 ranks and this run has 2" in caplog.text  # streamed from the workers
    assert "trained 8 steps" in caplog.text
    assert_same_training(output, single)

    client = MlflowClient(mlflow_server)
    curve = dict(metrics_of(output)["loss_curve"])
    # Logged once per step by rank 0 alone, into the caller's run: steps 5 (log_every_steps) and 8.
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train_loss"))
    assert [step for step, _ in history] == [5, 8]
    for logged_step, value in history:
        assert value == pytest.approx(curve[logged_step], rel=1e-6)
    # Per logging window at steps 5 and 8; the result's whole-run figure lands at step 0 (run_step).
    throughput = client.get_metric_history(run_id, "tokens_per_second")
    assert sorted(m.step for m in throughput) == [0, 5, 8] and all(m.value > 0 for m in throughput)
    assert [m.step for m in client.get_metric_history(run_id, "learning_rate")] == [5, 8]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["steps"] == STEPS
    assert "gpu_memory_gib" not in run.data.metrics  # CPU


def test_fsdp_trains_the_same_steps_as_ddp(fsdp_run, ddp_run) -> None:
    assert "sharding: fsdp (as configured)" in fsdp_run.log
    assert "fsdp: 2 decoder layers and the root sharded over 2 ranks" in fsdp_run.log
    assert metrics_of(fsdp_run.output)["sharding"] == "fsdp"
    assert metrics_of(ddp_run.output)["sharding"] == "ddp"
    # Loss curve, validation loss (its forwards evened out over the ranks) and adapter weights.
    assert_same_training(fsdp_run.output, ddp_run.output)
    checkpoint = storage.require_complete(str(fsdp_run.output / "checkpoints" / "step-00000008"))
    assert checkpoint.metadata["sharding"] == "fsdp" and checkpoint.metadata["world_size"] == 2


def test_fsdp_adapter_loads_with_peft_and_gives_the_ddp_logits(tiny_base_model, fsdp_run, ddp_run) -> None:
    text = "Classify the sentiment of this review: the hotel room was lovely."
    fsdp = adapter_logits(tiny_base_model, fsdp_run.output / "adapter", text)
    ddp = adapter_logits(tiny_base_model, ddp_run.output / "adapter", text)
    torch.testing.assert_close(fsdp, ddp, atol=1e-4, rtol=0)
    # The LoRA weights were gathered whole, not one rank's shard: the adapter changes the logits.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(tiny_base_model)(text, return_tensors="pt")
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_base_model, dtype=torch.float32)(**tokens).logits
    assert (fsdp - base).abs().max() > 0.1


def test_run_torchrun_fsdp_resumes_its_checkpoint(tiny_base_model, dataset, fsdp_run, tmp_path) -> None:
    """Two FSDP ranks continue from an FSDP checkpoint (step 4) and end where the whole run ended."""
    output, step_4 = tmp_path / "run", Path("checkpoints", "step-00000004")
    shutil.copytree(fsdp_run.output / step_4, output / step_4)
    config = ddp_config(tiny_base_model, dataset, output, sharding="fsdp")
    run_torchrun(config, nproc_per_node=2, timeout_s=TORCHRUN_TIMEOUT_S)
    assert metrics_of(output)["resumed_from"] == str(output / step_4)
    assert_same_training(output, fsdp_run.output, atol=1e-5)


def test_one_process_resumes_an_fsdp_checkpoint(tiny_base_model, dataset, single, fsdp_run, tmp_path) -> None:
    """Checkpoints hold whole tensors keyed by name, so a sharded run's checkpoint needs no FSDP."""
    output, step_4 = tmp_path / "run", Path("checkpoints", "step-00000004")
    shutil.copytree(fsdp_run.output / step_4, output / step_4)
    train(ddp_config(tiny_base_model, dataset, output))
    assert metrics_of(output)["resumed_from"] == str(output / step_4)
    assert metrics_of(output)["sharding"] == "none"
    assert_same_training(output, single)


def test_one_process_resumes_a_checkpoint_with_position_keyed_optimizer_state(
    tiny_base_model, dataset, single, tmp_path
) -> None:
    """llmft before FSDP support saved AdamW's own state_dict (keyed by parameter position)."""
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000004"
    shutil.copytree(single / "checkpoints" / "step-00000004", checkpoint)
    state = torch.load(checkpoint / TRAINER_STATE, weights_only=True)
    (group,) = state["optimizer"]["param_groups"]
    names = group["params"]
    state["optimizer"] = {
        "state": {index: state["optimizer"]["state"][name] for index, name in enumerate(names)},
        "param_groups": [{**group, "params": list(range(len(names)))}],
    }
    torch.save(state, checkpoint / TRAINER_STATE)
    metadata = storage.read_manifest(str(checkpoint)).metadata
    storage.publish_dir(checkpoint, str(checkpoint), producer="earlier llmft", metadata=metadata)
    train(ddp_config(tiny_base_model, dataset, tmp_path / "run"))
    assert metrics_of(tmp_path / "run")["resumed_from"] == str(checkpoint)
    assert_same_training(tmp_path / "run", single)


def test_auto_sharding_takes_fsdp_when_the_base_model_crowds_one_gpu(monkeypatch, caplog) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    h100 = SimpleNamespace(total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: h100)
    gpu, cpu = torch.device("cuda", 0), torch.device("cpu")
    llama_8b, llama_70b = 8_000_000_000 * 2, 70_000_000_000 * 2  # bytes in bf16
    with caplog.at_level(logging.INFO, logger="components.train.distributed"):
        assert choose_sharding("auto", gpu, llama_8b) == "ddp"
        assert choose_sharding("auto", gpu, 40 * 2**30) == "fsdp"  # half the GPU: no room left
        assert choose_sharding("auto", gpu, llama_70b) == "fsdp"
    assert "auto: ddp (the base model's weights, 14.9 GiB, take 19% of one GPU's 80.0 GiB" in caplog.text
    assert "sharding=auto: fsdp (the base model's weights, 130.4 GiB, take 163%" in caplog.text
    # On CPUs (gloo) auto means DDP; an explicit choice is taken as it is.
    assert choose_sharding("auto", cpu, llama_70b) == "ddp"
    assert choose_sharding("ddp", gpu, llama_70b) == "ddp"
    assert choose_sharding("fsdp", cpu, 1) == "fsdp"
    # One process: nothing to share or shard.
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert choose_sharding("fsdp", gpu, llama_70b) == "none"


def test_sharding_setting() -> None:
    config = TrainConfig(base_model="m", data="d", output="o")
    assert config.sharding == "auto"
    assert "fsdp" in TrainConfig.model_fields["sharding"].description
    with pytest.raises(ValueError, match="sharding"):
        TrainConfig(base_model="m", data="d", output="o", sharding="zero3")


def test_run_torchrun_failure_reports_the_workers_error(tiny_base_model, dataset, tmp_path) -> None:
    # One micro batch per step cannot be shared by two ranks: every rank refuses, torchrun fails.
    config = ddp_config(tiny_base_model, dataset, tmp_path / "run", micro_batch_size=8)
    with pytest.raises(TrainError, match="torchrun \\(2 processes\\) failed with exit code") as error:
        run_torchrun(config, nproc_per_node=2, timeout_s=TORCHRUN_TIMEOUT_S)
    assert "cannot be shared evenly by 2 ranks" in str(error.value)
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_run_torchrun_timeout_stops_the_workers(tiny_base_model, dataset, tmp_path) -> None:
    config = ddp_config(tiny_base_model, dataset, tmp_path / "run")
    with pytest.raises(TrainError, match="did not finish within 1 s and was stopped"):
        run_torchrun(config, nproc_per_node=2, timeout_s=1)


def test_uneven_split_is_refused_in_process(tiny_base_model, dataset, tmp_path, monkeypatch) -> None:
    """The same check without processes: WORLD_SIZE alone decides the split (nothing is initialised)."""
    monkeypatch.setattr(train_module.distributed, "setup", lambda device: device)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(TrainError, match=r"4 micro batches per step .* cannot be shared evenly by 3 ranks"):
        train(ddp_config(tiny_base_model, dataset, tmp_path / "run"))


# --- GPUs (pytest -m gpu on a CUDA machine) -------------------------------------------------


class RecordingTracker(Tracker):
    """Keeps what train logs, without an MLflow server."""

    def __init__(self) -> None:
        super().__init__(run_id="recording")
        self.logged: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step: int = 0) -> None:
        self.logged.append((step, dict(metrics)))


def gpu_config(base: str, data: str, output: Path, **overrides) -> TrainConfig:
    return ddp_config(base, data, output, device="cuda", **overrides)


@pytest.mark.gpu
def test_gpu_resume_matches_an_uninterrupted_run(tiny_base_model, dataset, tmp_path, monkeypatch) -> None:
    """One GPU, dropout on: the CUDA RNG state is restored with the CPU one."""
    assert torch.cuda.is_available(), "gpu tests run on a CUDA machine: pytest -m gpu"
    lora = LoraSettings(r=8, alpha=16, dropout=0.1)
    tracker = RecordingTracker()
    train(gpu_config(tiny_base_model, dataset, tmp_path / "a", lora=lora), tracker)
    logged = dict(tracker.logged)
    assert {"train_loss", "learning_rate", "tokens_per_second", "gpu_memory_gib"} <= set(logged[5])
    assert 0 < logged[5]["gpu_memory_gib"] < 80

    calls = 0

    def crash_in_step_7(original):
        def accumulate(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == 7:
                raise RuntimeError("injected crash")
            return original(*args, **kwargs)

        return accumulate

    # One of the two runs each step: packed (fused, the default) or padded micro batches.
    for name in ("_accumulate_packed", "_accumulate_gradients"):
        monkeypatch.setattr(train_module, name, crash_in_step_7(getattr(train_module, name)))
    with pytest.raises(RuntimeError, match="injected crash"):
        train(gpu_config(tiny_base_model, dataset, tmp_path / "b", lora=lora))
    monkeypatch.undo()
    train(gpu_config(tiny_base_model, dataset, tmp_path / "b", lora=lora))
    assert metrics_of(tmp_path / "b")["resumed_from"].endswith("step-00000004")
    assert_same_training(tmp_path / "b", tmp_path / "a", atol=1e-4)


@pytest.mark.gpu
def test_two_gpus_train_the_same_steps_as_one(tiny_base_model, dataset, tmp_path) -> None:
    """torchrun on 2 GPUs (NCCL) in fp32 reproduces one GPU; bf16 trains too."""
    assert torch.cuda.device_count() >= 2, "these gpu tests run on a 2-GPU machine: pytest -m gpu"
    train(gpu_config(tiny_base_model, dataset, tmp_path / "one"))
    result = run_torchrun(
        gpu_config(tiny_base_model, dataset, tmp_path / "two"), nproc_per_node=2, timeout_s=300
    )
    assert result.steps == STEPS and metrics_of(tmp_path / "two")["world_size"] == 2
    assert_same_training(tmp_path / "two", tmp_path / "one", atol=1e-3)
    bf16 = run_torchrun(
        gpu_config(tiny_base_model, dataset, tmp_path / "bf16", precision="bf16"),
        nproc_per_node=2,
        timeout_s=300,
    )
    assert bf16.final_loss < bf16.first_loss


@pytest.mark.gpu
def test_two_gpus_fsdp_trains_the_same_steps_as_ddp_and_resumes(tiny_base_model, dataset, tmp_path) -> None:
    """fp32 over NCCL: FSDP matches DDP (which sharding=auto picks for a tiny model), its adapter
    gives DDP's logits, and a run resumed from its step-4 checkpoint ends where it ended."""
    assert torch.cuda.device_count() >= 2, "these gpu tests run on a 2-GPU machine: pytest -m gpu"
    ddp, fsdp, resumed = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "resumed"
    run_torchrun(gpu_config(tiny_base_model, dataset, ddp), nproc_per_node=2, timeout_s=300)
    assert metrics_of(ddp)["sharding"] == "ddp"  # auto: the tiny model takes ~0% of a GPU
    run_torchrun(gpu_config(tiny_base_model, dataset, fsdp, sharding="fsdp"), nproc_per_node=2, timeout_s=300)
    assert metrics_of(fsdp)["sharding"] == "fsdp"
    assert_same_training(fsdp, ddp, atol=1e-3)
    text = "Classify the sentiment of this review: the soup was rude."
    torch.testing.assert_close(
        adapter_logits(tiny_base_model, fsdp / "adapter", text),
        adapter_logits(tiny_base_model, ddp / "adapter", text),
        atol=1e-3,
        rtol=0,
    )
    step_4 = Path("checkpoints", "step-00000004")
    shutil.copytree(fsdp / step_4, resumed / step_4)
    run_torchrun(
        gpu_config(tiny_base_model, dataset, resumed, sharding="fsdp"), nproc_per_node=2, timeout_s=300
    )
    assert metrics_of(resumed)["resumed_from"] == str(resumed / step_4)
    assert_same_training(resumed, fsdp, atol=1e-4)


@pytest.mark.gpu
def test_two_gpus_fsdp_trains_in_bf16_with_gradient_checkpointing(tiny_base_model, dataset, tmp_path) -> None:
    """bf16 compute with float32 gradient reduction and LoRA weights, activation checkpointing on:
    the curve stays within bf16 noise of DDP's, and the adapter is saved in float32."""
    assert torch.cuda.device_count() >= 2, "these gpu tests run on a 2-GPU machine: pytest -m gpu"
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    run_torchrun(
        gpu_config(tiny_base_model, dataset, ddp, precision="bf16", sharding="ddp"),
        nproc_per_node=2,
        timeout_s=300,
    )
    result = run_torchrun(
        gpu_config(
            tiny_base_model, dataset, fsdp, precision="bf16", sharding="fsdp", gradient_checkpointing=True
        ),
        nproc_per_node=2,
        timeout_s=300,
    )
    assert result.final_loss < result.first_loss
    curve, expected = metrics_of(fsdp)["loss_curve"], metrics_of(ddp)["loss_curve"]
    differences = [abs(loss - other) for (_, loss), (_, other) in zip(curve, expected, strict=True)]
    print(f"bf16 fsdp vs ddp loss curves: largest difference {max(differences):.4f}")
    assert max(differences) < 0.1, (curve, expected)
    weights = load_file(fsdp / "adapter" / "adapter_model.safetensors")
    assert {tensor.dtype for tensor in weights.values()} == {torch.float32}


@pytest.mark.gpu
def test_two_gpus_fsdp_holds_less_than_the_whole_model(dataset, tmp_path) -> None:
    """A 24-layer model (1.1 GiB in fp32): under DDP rank 0's peak exceeds the model's size, under
    FSDP it stays below it: each GPU holds half the weights and one or two whole layers at a time.
    Activations are recomputed (gradient_checkpointing): kept, the 24 layers' activations of a
    packed micro batch take about 0.4 GiB, which would blur what the weights take."""
    from components.sample.tiny_model import TinyModelConfig, build_tiny_model

    assert torch.cuda.device_count() >= 2, "these gpu tests run on a 2-GPU machine: pytest -m gpu"
    base = str(tmp_path / "base")
    shape = {"hidden_size": 1024, "intermediate_size": 2816, "num_layers": 24, "num_heads": 8}
    build_tiny_model(TinyModelConfig(output=base, **shape))
    weights_gib = Path(base, "model.safetensors").stat().st_size / 2**30  # float32 tensors
    peaks = {}
    for sharding in ("ddp", "fsdp"):
        config = gpu_config(
            base,
            dataset,
            tmp_path / sharding,
            sharding=sharding,
            max_steps=2,
            save_every_steps=0,
            gradient_checkpointing=True,
        )
        run_torchrun(config, nproc_per_node=2, timeout_s=300)
        peaks[sharding] = metrics_of(tmp_path / sharding)["gpu_memory_gib"]
    print(f"model {weights_gib:.2f} GiB; rank 0 peak: ddp {peaks['ddp']:.2f}, fsdp {peaks['fsdp']:.2f} GiB")
    assert peaks["fsdp"] < weights_gib < peaks["ddp"]


@pytest.mark.gpu
def test_auto_sharding_reads_this_gpus_memory(monkeypatch) -> None:
    assert torch.cuda.is_available(), "gpu tests run on a CUDA machine: pytest -m gpu"
    monkeypatch.setenv("WORLD_SIZE", "2")
    gpu = torch.device("cuda", 0)
    total = torch.cuda.get_device_properties(gpu).total_memory
    assert choose_sharding("auto", gpu, total // 4) == "ddp"
    assert choose_sharding("auto", gpu, total * 3 // 4) == "fsdp"
