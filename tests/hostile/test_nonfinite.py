"""Non-finite numbers: a NaN model must not ship, and no output may hold a bare NaN (issue 13, item 5).

`--learning-rate inf` used to train "fine" (val loss nan), evaluate said PASSED, and metrics.json
held a bare NaN, which is not JSON. Now every float setting refuses inf and nan, training stops
with an error naming the step, the values and the likely cause, the gate fails closed on any
non-finite score, and every JSON output is valid JSON (non-finite values written as null).
"""

from __future__ import annotations

import json
import math
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import BaseModel, ValidationError

from components import jsonout, step_io, storage
from components.build.build import BuildConfig
from components.curate.curate import CurateConfig
from components.evaluate.evaluate import (
    EvaluateConfig,
    GateThresholds,
    ModelScores,
    decide_gate,
    decide_production_gate,
    evaluate,
)
from components.export.export import ExportConfig
from components.finalize.finalize import FinalizeConfig
from components.records import Record, write_records
from components.resources import ResourceProfile
from components.rollout.rollout import RolloutConfig
from components.tracking import NONFINITE_TAG_PREFIX, step_run
from components.train import nemo_backend
from components.train.pytorchjob import PyTorchJobSettings
from components.train.train import LoraSettings, TrainConfig, TrainError, TrainResult, train
from pipelines.cli import main

NON_FINITE = [math.inf, -math.inf, math.nan]
STEP_CONFIGS = [
    CurateConfig,
    TrainConfig,
    EvaluateConfig,
    ExportConfig,
    BuildConfig,
    RolloutConfig,
    FinalizeConfig,
    PyTorchJobSettings,
    ResourceProfile,
]


def strict_loads(text: str) -> Any:
    """json.loads that refuses NaN, Infinity and -Infinity, as every other JSON parser does."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: bare {constant}")

    return json.loads(text, parse_constant=refuse)


# --- every float setting refuses inf and nan ----------------------------------------------


def _takes_float(annotation: Any) -> bool:
    return annotation is float or float in typing.get_args(annotation)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *typing.get_args(annotation)]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)


def float_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Locations of every float field of `model`, nested settings models included."""
    found: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        if _takes_float(info.annotation):
            found.append((*prefix, name))
        elif (nested := _nested_model(info.annotation)) is not None:
            found += float_fields(nested, (*prefix, name))
    return found


def _settings_at(location: tuple[str, ...], value: float) -> dict[str, Any]:
    settings: Any = value
    for name in reversed(location):
        settings = {name: settings}
    return settings


CASES = [(model, location) for model in STEP_CONFIGS for location in float_fields(model)]


def test_the_float_settings_are_found() -> None:
    found = {f"{model.__name__}.{'.'.join(location)}" for model, location in CASES}
    for expected in (
        "TrainConfig.learning_rate",
        "TrainConfig.epochs",
        "TrainConfig.lora.dropout",
        "EvaluateConfig.gate.max_val_loss",
        "CurateConfig.val_fraction",
        "BuildConfig.triton.kv_cache_free_gpu_mem_fraction",
        "RolloutConfig.smoke_timeout_s",
        "RolloutConfig.kubernetes.timeout_s",
    ):
        assert expected in found, sorted(found)


@pytest.mark.parametrize("value", NON_FINITE, ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize(
    ("model", "location"), CASES, ids=[f"{m.__name__}.{'.'.join(loc)}" for m, loc in CASES]
)
def test_every_float_setting_refuses_non_finite_values(
    model: type[BaseModel], location: tuple[str, ...], value: float
) -> None:
    with pytest.raises(ValidationError) as error:
        model.model_validate(_settings_at(location, value))
    refused = [e for e in error.value.errors(include_input=False) if e["loc"] == location]
    assert refused and refused[0]["type"] == "finite_number", error.value.errors(include_input=False)


@pytest.mark.parametrize(
    ("flag", "value"), [("--learning-rate", "inf"), ("--learning-rate", "nan"), ("--epochs", "inf")]
)
def test_cli_refuses_a_non_finite_flag_in_one_line(flag: str, value: str, tmp_path: Path) -> None:
    output = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--base-model", "m", "--data", "d", "--output", str(output), flag, value])
    message = str(exit_.value.code)
    assert message == f"llmft: invalid settings: {flag}: Input should be a finite number"
    assert not output.exists()


def test_config_file_nan_is_named_by_its_key(tmp_path: Path) -> None:
    config = tmp_path / "evaluate.yaml"
    config.write_text("gate:\n  max_val_loss: .nan\n")
    argv = ["evaluate", "--config", str(config), "--base-model", "m", "--adapter", "a", "--data", "d"]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--output", str(tmp_path / "out")])
    assert f"gate.max_val_loss in --config {config}: Input should be a finite number" in str(exit_.value.code)


# --- training stops at a non-finite loss or gradient norm ---------------------------------

SUBJECTS = ["the soup", "the service", "the movie", "the hotel room", "the concert", "the book"]


def _records(count: int, offset: int = 0) -> list[Record]:
    records = []
    for index in range(offset, offset + count):
        label = "positive" if index % 2 == 0 else "negative"
        word = "wonderful" if label == "positive" else "dreadful"
        prompt = f"Classify the sentiment of this review: {SUBJECTS[index % len(SUBJECTS)]} was {word}."
        records.append(Record(id=f"r{index}", prompt=prompt, response=label))
    return records


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("nonfinite") / "curated"
    directory.mkdir()
    write_records(directory / "train.jsonl", _records(24))
    write_records(directory / "val.jsonl", _records(8, offset=100))
    storage.publish_dir(directory, str(directory), producer="test")
    return str(directory)


@pytest.fixture(scope="module")
def nan_base_model(tiny_base_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny base model with one weight tensor made NaN, saved as a plain HF checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_base_model)
    with torch.no_grad():
        model.model.norm.weight.fill_(math.nan)
    output = tmp_path_factory.mktemp("nan-base") / "model"
    model.save_pretrained(output)
    AutoTokenizer.from_pretrained(tiny_base_model).save_pretrained(output)
    return str(output)


def _train_config(base: str, data: str, output: Path, **overrides: Any) -> TrainConfig:
    settings = {
        "base_model": base,
        "data": data,
        "output": str(output),
        "max_steps": 8,
        "learning_rate": 3e-3,
        "micro_batch_size": 4,
        "global_batch_size": 8,
        "max_length": 128,
        "save_every_steps": 0,
        "device": "cpu",
        "lora": LoraSettings(r=4, alpha=8),
    }
    return TrainConfig(**{**settings, **overrides})


def test_learning_rate_inf_is_refused_before_any_work(tiny_base_model: str, dataset: str) -> None:
    with pytest.raises(ValidationError, match="finite number"):
        TrainConfig(base_model=tiny_base_model, data=dataset, output="out", learning_rate=math.inf)


def test_nan_weights_stop_training_at_the_first_step(
    nan_base_model: str, dataset: str, tmp_path: Path
) -> None:
    output = tmp_path / "run"
    with pytest.raises(TrainError) as error:
        train(_train_config(nan_base_model, dataset, output))
    message = str(error.value)
    assert message.startswith("step 1: the loss is nan and the gradient norm is nan")
    assert f"before any update of this run, so --base-model {nan_base_model} already computes" in message
    assert "check its weights for nan or inf" in message
    assert not (output / "adapter").exists() and not (output / "metrics.json").exists()


def test_skipped_steps_are_bounded(nan_base_model: str, dataset: str, tmp_path: Path) -> None:
    with pytest.raises(TrainError) as error:
        train(_train_config(nan_base_model, dataset, tmp_path / "run", max_nonfinite_steps=2))
    assert str(error.value).startswith(
        "step 3: the loss is nan and the gradient norm is nan (3 such steps: 1, 2, 3; max_nonfinite_steps 2)"
    )


def test_every_step_skipped_is_an_error_not_an_adapter(
    nan_base_model: str, dataset: str, tmp_path: Path
) -> None:
    output = tmp_path / "run"
    with pytest.raises(TrainError, match="all 3 steps of this run had a non-finite loss"):
        train(_train_config(nan_base_model, dataset, output, max_steps=3, max_nonfinite_steps=5))
    assert not (output / "adapter").exists()


def test_a_diverging_learning_rate_is_named(tiny_base_model: str, dataset: str, tmp_path: Path) -> None:
    with pytest.raises(TrainError) as error:
        train(_train_config(tiny_base_model, dataset, tmp_path / "run", learning_rate=1e30))
    message = str(error.value)
    assert message.startswith("step 2: the loss is nan")
    assert "after 1 update: training diverged" in message and "learning_rate 1e+30" in message


def _inf_norm_at(monkeypatch: pytest.MonkeyPatch, bad_call: int) -> None:
    """clip_grad_norm_ reports an infinite norm at its `bad_call`-th call (the loss stays finite)."""
    real = torch.nn.utils.clip_grad_norm_
    calls = []

    def clip(*args: Any, **kwargs: Any) -> torch.Tensor:
        norm = real(*args, **kwargs)
        calls.append(1)
        return torch.tensor(math.inf) if len(calls) == bad_call else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)


def test_a_non_finite_gradient_norm_alone_stops_training(
    tiny_base_model: str, dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _inf_norm_at(monkeypatch, 2)
    with pytest.raises(
        TrainError, match=r"^step 2: the loss is [0-9.]+ and the gradient norm is inf, after 1"
    ):
        train(_train_config(tiny_base_model, dataset, tmp_path / "run"))


def test_an_allowed_skip_leaves_the_step_out_and_says_so(
    tiny_base_model: str, dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _inf_norm_at(monkeypatch, 2)
    output = tmp_path / "run"
    result = train(_train_config(tiny_base_model, dataset, output, max_steps=4, max_nonfinite_steps=1))
    document = strict_loads((output / "metrics.json").read_text())
    assert result.steps == 4 and math.isfinite(result.val_loss)
    assert document["skipped_steps"] == [2]
    assert [step for step, _ in document["loss_curve"]] == [1, 3, 4]
    storage.require_complete(str(output / "adapter"))


def test_nemo_losses_that_are_not_finite_fail_the_run(tmp_path: Path) -> None:
    rows = [{"step": 0, "loss": 2.5, "grad_norm": 1.0}, {"step": 1, "loss": math.nan, "grad_norm": math.nan}]
    (tmp_path / "training.jsonl").write_text("\n".join(json.dumps(row) for row in rows))  # AutoModel's NaN
    with pytest.raises(
        TrainError, match=r"NeMo AutoModel step 2: the loss is nan and the gradient norm is nan"
    ):
        nemo_backend.read_losses(tmp_path)
    rows[1] = {"step": 1, "loss": 2.0, "grad_norm": math.inf}
    (tmp_path / "training.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    with pytest.raises(TrainError, match="gradient norm is inf"):
        nemo_backend.read_losses(tmp_path)


# --- the gate fails closed --------------------------------------------------------------


def _scores(**changes: float) -> ModelScores:
    values = {"val_loss": 1.0, "perplexity": math.e, "exact_match": 0.5, "token_f1": 0.6, "rouge_l": 0.6}
    return ModelScores(**{**values, **changes}, samples=8)


@pytest.mark.parametrize("side", ["base", "tuned"])
@pytest.mark.parametrize("name", ["val_loss", "perplexity", "exact_match", "token_f1", "rouge_l"])
@pytest.mark.parametrize("value", NON_FINITE, ids=["inf", "-inf", "nan"])
def test_gate_fails_on_any_non_finite_score(side: str, name: str, value: float) -> None:
    scores = {"base": _scores(), "tuned": _scores(exact_match=0.7)}
    scores[side] = _scores(**{name: value})
    passed, reasons = decide_gate(scores["base"], scores["tuned"], GateThresholds())
    assert passed is False
    assert f"{side} {name} is {value} (required: a finite number" in "; ".join(reasons)


@pytest.mark.parametrize("name", ["exact_match", "val_loss"])
def test_production_gate_fails_on_a_non_finite_production_score(name: str) -> None:
    passed, reason = decide_production_gate(_scores(), _scores(**{name: math.nan}), GateThresholds())
    assert passed is False and f"production {name} is nan" in reason


@pytest.fixture(scope="module")
def nan_adapter(tiny_base_model: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A LoRA adapter of the tiny base model whose weights are NaN, published as train would."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_base_model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(math.nan)
    adapter = tmp_path_factory.mktemp("nan-adapter") / "adapter"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_base_model).save_pretrained(adapter)
    storage.publish_dir(adapter, str(adapter), producer="test", metadata={"base_model": tiny_base_model})
    return str(adapter)


def test_evaluate_fails_a_nan_adapter_with_the_default_gate(
    tiny_base_model: str, nan_adapter: str, dataset: str, tmp_path: Path
) -> None:
    output = tmp_path / "eval"
    config = EvaluateConfig(
        base_model=tiny_base_model, adapter=nan_adapter, data=dataset, output=str(output), max_new_tokens=2
    )
    result = evaluate(config)
    assert result.passed is False
    assert any(reason.startswith("tuned val_loss is nan") for reason in result.reasons), result.reasons
    document = strict_loads((output / "metrics.json").read_text())
    assert document["tuned"]["val_loss"] is None and document["gate"]["passed"] is False
    for line in (output / "generations.jsonl").read_text().splitlines():
        strict_loads(line)
    strict_loads((output / storage.MANIFEST_NAME).read_text())


# --- every JSON output stays JSON ---------------------------------------------------------


def test_jsonout_writes_non_finite_floats_as_null() -> None:
    document = {"a": math.nan, "b": [1.5, math.inf, (-math.inf, 2)], "c": {"d": math.nan}, "e": "NaN"}
    assert strict_loads(jsonout.dumps(document)) == {
        "a": None,
        "b": [1.5, None, [None, 2]],
        "c": {"d": None},
        "e": "NaN",
    }


def test_summary_artifact_and_manifest_are_strict_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(step_io.PIPELINE_RUN_ENV, "run-1")
    nan_result = TrainResult(
        adapter="a", output="o", steps=1, epochs=1.0, first_loss=math.nan, final_loss=math.inf,
        val_loss=math.nan, train_tokens=0, tokens_per_second=math.nan, runtime_s=1.0,
    )  # fmt: skip
    config = TrainConfig(base_model="m", data="d", output="o")
    step_io.run_component_step("train", lambda _config: nan_result, config, "disabled", "x", str(tmp_path))
    summary = strict_loads(Path(step_io.summary_uri(str(tmp_path), "run-1", "train")).read_text())
    assert summary["result"]["val_loss"] is None and summary["result"]["final_loss"] is None

    artifact = types.SimpleNamespace(path=str(tmp_path / "artifact" / "data"), metadata={})
    step_io.point_artifact(artifact, "s3://b/x", {"val_loss": math.nan})
    assert strict_loads(Path(artifact.path).read_text())["val_loss"] is None

    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "f.txt").write_text("x")
    storage.publish_dir(tmp_path / "dir", str(tmp_path / "dir"), producer="t", metadata={"loss": math.inf})
    assert strict_loads((tmp_path / "dir" / storage.MANIFEST_NAME).read_text())["metadata"]["loss"] is None


def test_mlflow_gets_a_tag_not_a_nan_metric(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with step_run("train", uri) as tracker:
        tracker.log_metrics({"val_loss": math.nan, "train_loss": 1.25, "rate": math.inf}, step=3)
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.data.metrics == {"train_loss": 1.25}
    assert run.data.tags[f"{NONFINITE_TAG_PREFIX}val_loss"] == "nan at step 3"
    assert run.data.tags[f"{NONFINITE_TAG_PREFIX}rate"] == "inf at step 3"


def test_a_train_result_with_nulls_reads_back_as_nan(tmp_path: Path) -> None:
    """torchrun's caller reads the result from metrics.json, where a NaN is now null."""
    from components.train.launch import read_result

    result = TrainResult(
        adapter="a", output=str(tmp_path), steps=2, epochs=1.0, first_loss=2.0, final_loss=1.0,
        val_loss=math.nan, train_tokens=10, tokens_per_second=math.inf, runtime_s=1.0,
    )  # fmt: skip
    (tmp_path / "metrics.json").write_text(jsonout.dumps(result.model_dump()))
    read = read_result(str(tmp_path))
    assert math.isnan(read.val_loss) and math.isnan(read.tokens_per_second) and read.final_loss == 1.0
