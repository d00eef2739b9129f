"""One default per setting: a pipeline parameter, its step config field and its CLI flag agree."""

from __future__ import annotations

import argparse

import pytest
import yaml

from components.build.build import BuildConfig
from components.curate.curate import CurateConfig
from components.defaults import DEFAULT_EXPERIMENT, DEFAULT_NAMESPACE
from components.evaluate.evaluate import EvaluateConfig
from components.export.export import ExportConfig
from components.rollout.rollout import RolloutConfig
from components.train.train import TrainConfig
from pipelines import train_launcher
from pipelines.cli import build_parser
from pipelines.compile_pipeline import compile_pipeline
from pipelines.llm_finetune import config_default

# Pipeline parameter -> (step config, field) it becomes.
CONFIG_FIELDS = {
    "val_fraction": (CurateConfig, "val_fraction"),
    "decontamination_ngram": (CurateConfig, "decontamination_ngram"),
    "lora_r": (TrainConfig, "lora.r"),
    "lora_alpha": (TrainConfig, "lora.alpha"),
    "lora_dropout": (TrainConfig, "lora.dropout"),
    "lora_target_modules": (TrainConfig, "lora.target_modules"),
    "train_backend": (TrainConfig, "backend"),
    "epochs": (TrainConfig, "epochs"),
    "max_steps": (TrainConfig, "max_steps"),
    "learning_rate": (TrainConfig, "learning_rate"),
    "micro_batch_size": (TrainConfig, "micro_batch_size"),
    "global_batch_size": (TrainConfig, "global_batch_size"),
    "max_length": (TrainConfig, "max_length"),
    "precision": (TrainConfig, "precision"),
    "save_every_steps": (TrainConfig, "save_every_steps"),
    "sharding": (TrainConfig, "sharding"),
    "max_eval_records": (EvaluateConfig, "max_eval_records"),
    "max_new_tokens": (EvaluateConfig, "max_new_tokens"),
    "gate_min_exact_match_gain": (EvaluateConfig, "gate.min_exact_match_gain"),
    "gate_max_val_loss": (EvaluateConfig, "gate.max_val_loss"),
    "gate_max_regression": (EvaluateConfig, "gate.max_regression"),
    "registered_model_name": (ExportConfig, "registered_model_name"),
    "serving_mode": (BuildConfig, "serving_mode"),
    "quantization": (BuildConfig, "quantization"),
    "serving_max_batch_size": (BuildConfig, "max_batch_size"),
    "tensor_parallel_size": (BuildConfig, "trtllm.tensor_parallel_size"),
    "pipeline_parallel_size": (BuildConfig, "trtllm.pipeline_parallel_size"),
    "max_input_len": (BuildConfig, "trtllm.max_input_len"),
    "max_seq_len": (BuildConfig, "trtllm.max_seq_len"),
    "max_num_tokens": (BuildConfig, "trtllm.max_num_tokens"),
    "fp8_kv_cache": (BuildConfig, "trtllm.fp8_kv_cache"),
    "calib_dataset": (BuildConfig, "trtllm.calib_dataset"),
    "kv_cache_free_gpu_mem_fraction": (BuildConfig, "triton.kv_cache_free_gpu_mem_fraction"),
    "streaming": (BuildConfig, "triton.decoupled"),
    "triton_image": (BuildConfig, "triton_image"),
    "served_model_name": (BuildConfig, "model_name"),
    "triton_replicas": (RolloutConfig, "kubernetes.replicas"),
    "namespace": (RolloutConfig, "kubernetes.namespace"),
    "smoke_prompt": (RolloutConfig, "smoke_prompt"),
    "smoke_expect": (RolloutConfig, "smoke_expect"),
}
# A parameter that feeds two configs: both must agree with it.
ALSO_FIELDS = {"max_new_tokens": (BuildConfig, "max_new_tokens")}
# Pipeline parameter -> (CLI command, flag destination).
CLI_FLAGS = {
    "gpus_per_node": ("train", "gpus_per_node"),
    "namespace": ("train", "namespace"),
    "mlflow_experiment": ("train", "mlflow_experiment"),
    "mlflow_tracking_uri": ("train", "mlflow_tracking_uri"),  # unset: the pod's MLFLOW_TRACKING_URI
}
# Settings whose defaults differ on purpose, with the reason.
DIFFERENT_ON_PURPOSE = {
    # The compiled pipeline runs on a cluster; `llmft rollout` by hand runs on a workstation.
    "rollout_target": (RolloutConfig, "target"),
    # `llmft train --launcher pytorchjob` exists to span nodes; the pipeline trains in one pod unless told.
    "num_nodes": ("train", "nodes"),
}


@pytest.fixture(scope="module")
def pipeline_defaults(tmp_path_factory) -> dict:
    path = compile_pipeline(tmp_path_factory.mktemp("dist") / "llm_finetune.yaml")
    spec = next(yaml.safe_load_all(path.read_text()))
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    return {name: definition.get("defaultValue") for name, definition in parameters.items()}


def _as_parameter(value):
    """A config default as the pipeline spells it: lists comma-joined, None as "" or 0."""
    if isinstance(value, list):
        return ",".join(value)
    return value


def _same(pipeline_value, config_value) -> bool:
    if config_value is None:
        return pipeline_value in ("", 0, 0.0)
    if isinstance(config_value, float | int) and not isinstance(config_value, bool):
        return float(pipeline_value) == pytest.approx(float(config_value))
    return pipeline_value == _as_parameter(config_value)


def _cli_default(command: str, dest: str):
    parser = build_parser(command)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command].get_default(dest)


@pytest.mark.parametrize("parameter", sorted(CONFIG_FIELDS))
def test_pipeline_default_is_the_config_default(pipeline_defaults, parameter):
    for fields in (CONFIG_FIELDS, ALSO_FIELDS):
        if parameter in fields:
            config_type, field = fields[parameter]
            expected = config_default(config_type, field)
            assert _same(pipeline_defaults[parameter], expected), (parameter, config_type.__name__, field)


@pytest.mark.parametrize("parameter", sorted(CLI_FLAGS))
def test_pipeline_default_is_the_cli_default(pipeline_defaults, parameter):
    command, dest = CLI_FLAGS[parameter]
    assert _same(pipeline_defaults[parameter], _cli_default(command, dest)), parameter


def test_the_issue_s_settings_have_one_default(pipeline_defaults):
    assert pipeline_defaults["global_batch_size"] == config_default(TrainConfig, "global_batch_size") == 64
    assert pipeline_defaults["max_length"] == config_default(TrainConfig, "max_length") == 2048
    assert pipeline_defaults["save_every_steps"] == config_default(TrainConfig, "save_every_steps") == 200
    assert pipeline_defaults["gate_min_exact_match_gain"] == 0.0
    assert config_default(EvaluateConfig, "gate.min_exact_match_gain") == 0.0
    assert (
        pipeline_defaults["namespace"] == DEFAULT_NAMESPACE == _cli_default("train", "namespace") == "llmft"
    )
    assert pipeline_defaults["mlflow_experiment"] == DEFAULT_EXPERIMENT


def test_every_parameter_with_a_config_field_or_flag_is_compared(pipeline_defaults):
    """A new parameter must be mapped above (or be one of the run's inputs, which have no default)."""
    run_inputs = {"base_model_uri", "train_data_uri", "storage_root", "eval_data_uri"}
    # Settings of the pipeline alone: no step config field or CLI flag holds them.
    pipeline_only = {"train_env_from_secrets", "train_job_cleanup"}
    mapped = set(CONFIG_FIELDS) | set(CLI_FLAGS) | set(DIFFERENT_ON_PURPOSE) | run_inputs | pipeline_only
    assert set(pipeline_defaults) <= mapped, sorted(set(pipeline_defaults) - mapped)
    assert {"gpus_per_node", "namespace", "nodes"} <= train_launcher.LAUNCHER_OPTIONS
