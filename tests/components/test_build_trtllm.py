"""Build step, TensorRT-LLM modes: engine build by contract, generated Triton configs, python models.

TensorRT-LLM cannot be installed here (PyPI's tensorrt-llm is a stub), so the engine build
is tested by contract: a recording fake of the `tensorrt_llm` module namespace is put in
`sys.modules` for these tests only, and the exact calls and arguments are asserted. Every
generated config.pbtxt is parsed back with Triton's own ModelConfig protobuf, and the
ensemble is checked the way Triton checks one (every tensor produced before it is used,
with the same type and shape). The preprocessing and postprocessing models run in the real
tritonserver binary (nvidia-pytriton wheel, CPU); the llmapi model runs there too, against
a recording stand-in of the LLM API shaped after TRT-LLM 1.2.x class by class
(trtllm_llmapi_stand_in.py), put in the served version directory.
"""

from __future__ import annotations

import contextlib
import enum
import json
import shutil
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml
from google.protobuf import text_format
from pydantic import ValidationError
from transformers import AutoTokenizer
from tritonclient.grpc import model_config_pb2

from components import serving_compat, storage
from components.build import build as build_module
from components.build import triton_trtllm
from components.build.build import ENGINE_METADATA_NAME, BuildConfig, BuildError, build
from components.build.triton_llmapi import LlmapiSettings, llmapi_config, model_yaml
from components.build.triton_python_utils import executor_sampling, llmapi_sampling, prompt_ids
from components.build.triton_trtllm import EnsembleSettings, model_configs
from components.build.trtllm_settings import TritonTrtllmSettings, TrtllmSettings
from components.images import load_images
from components.prompt import PROMPT_TEMPLATE
from components.records import Record
from components.rollout import local_triton
from components.sample.tiny_model import TinyModelConfig, build_tiny_model
from components.serving_compat import ServingCompatError, check_serving_compat
from components.train.data import prompt_ids as training_prompt_ids
from pipelines.cli import main as cli_main

ModelConfig = model_config_pb2.ModelConfig
DataType = model_config_pb2.DataType
Kind = model_config_pb2.ModelInstanceGroup.Kind
H100 = "NVIDIA-H100-80GB-HBM3"


def parse_config(text: str):
    return text_format.Parse(text, ModelConfig())


def repository_configs(repository: Path) -> dict[str, Any]:
    """Every config.pbtxt of a repository, parsed with Triton's protobuf, by model directory."""
    return {
        path.parent.name: parse_config(path.read_text(encoding="utf-8"))
        for path in sorted(repository.glob("*/config.pbtxt"))
    }


def string_params(config) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    output = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(TinyModelConfig(output=str(output)))
    return str(output)


# --- a recording fake of the tensorrt_llm namespace -------------------------------------------


class FakeQuantAlgo(enum.Enum):
    FP8 = "FP8"
    W4A16_AWQ = "W4A16_AWQ"


class FakeTrtllm:
    """Records every call the engine build makes; `save` writes engine-like files."""

    def __init__(self, version: str, legacy: bool, fail_save: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.version, self.legacy, self.fail_save = version, legacy, fail_save

    def modules(self) -> dict[str, types.ModuleType]:
        fake = self

        class PluginConfig:
            def __setattr__(self, name: str, value: Any) -> None:
                fake.calls.append(("plugin_config", (name, value)))
                object.__setattr__(self, name, value)

        class BuildConfig:
            def __init__(self, **kwargs: Any) -> None:
                fake.calls.append(("BuildConfig", kwargs))
                self.plugin_config = PluginConfig()

        class QuantConfig:
            def __init__(self, **kwargs: Any) -> None:
                fake.calls.append(("QuantConfig", kwargs))

        class CalibConfig:
            def __init__(self, **kwargs: Any) -> None:
                fake.calls.append(("CalibConfig", kwargs))

        class EngineLLM:
            def __init__(self, **kwargs: Any) -> None:
                fake.calls.append(("LLM", kwargs))

            def save(self, engine_dir: str) -> None:
                fake.calls.append(("save", engine_dir))
                if fake.fail_save:
                    raise RuntimeError("disk full")
                Path(engine_dir, "rank0.engine").write_bytes(b"\x00engine")
                Path(engine_dir, "config.json").write_text(json.dumps({"version": fake.version}))

            def shutdown(self) -> None:
                fake.calls.append(("shutdown", None))

        class TorchLLM:
            def __init__(self, **kwargs: Any) -> None:
                raise AssertionError("TRT-LLM >= 1.0: tensorrt_llm.LLM is the PyTorch backend, no engines")

        package = types.ModuleType("tensorrt_llm")
        package.__version__ = self.version
        package.LLM = EngineLLM if self.legacy else TorchLLM
        llmapi = types.ModuleType("tensorrt_llm.llmapi")
        llmapi.BuildConfig, llmapi.QuantConfig, llmapi.CalibConfig = BuildConfig, QuantConfig, CalibConfig
        llmapi.QuantAlgo = FakeQuantAlgo
        modules = {"tensorrt_llm": package, "tensorrt_llm.llmapi": llmapi}
        if not self.legacy:
            engine = types.ModuleType("tensorrt_llm._tensorrt_engine")
            engine.LLM = EngineLLM
            modules["tensorrt_llm._tensorrt_engine"] = engine
        return modules


@pytest.fixture
def fake_trtllm(monkeypatch):
    """Install the fake (TRT-LLM 1.2.1 by default) and an H100 as the build GPU."""

    def install(version: str = "1.2.1", legacy: bool = False, fail_save: bool = False) -> FakeTrtllm:
        fake = FakeTrtllm(version, legacy, fail_save)
        for name in ("tensorrt_llm", "tensorrt_llm.llmapi", "tensorrt_llm._tensorrt_engine"):
            monkeypatch.delitem(sys.modules, name, raising=False)
        for name, module in fake.modules().items():
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(build_module, "detect_gpu_arch", lambda: "sm90")
        return fake

    return install


def engine_config(model: str, output: Path | str, **overrides: Any) -> BuildConfig:
    settings: dict[str, Any] = {"model": model, "output": str(output), "serving_mode": "trtllm-engine"}
    return BuildConfig(**{**settings, **overrides})


# --- engine build: the exact TensorRT-LLM calls ------------------------------------------------


def test_fp8_engine_build_makes_exactly_these_calls(tiny_model, tmp_path, fake_trtllm):
    fake = fake_trtllm()
    output = tmp_path / "repository"
    config = engine_config(
        tiny_model,
        output,
        quantization="fp8",
        max_batch_size=16,
        trtllm=TrtllmSettings(
            tensor_parallel_size=2,
            max_input_len=512,
            max_seq_len=1024,
            max_num_tokens=4096,
            fp8_kv_cache=True,
            calib_dataset="/data/calib",
            calib_batches=64,
            calib_max_seq_length=256,
            gemm_plugin="fp8",
        ),
    )
    result = build(config)

    names = [name for name, _ in fake.calls]
    assert names == [
        "BuildConfig",
        *["plugin_config"] * 4,
        "QuantConfig",
        "CalibConfig",
        "LLM",
        "save",
        "shutdown",
    ]
    calls = dict((name, args) for name, args in fake.calls if name != "plugin_config")
    assert calls["BuildConfig"] == {
        "max_batch_size": 16,
        "max_input_len": 512,
        "max_seq_len": 1024,
        "max_num_tokens": 4096,
        "max_beam_width": 1,
    }
    assert [args for name, args in fake.calls if name == "plugin_config"] == [
        ("gemm_plugin", "fp8"),
        ("gpt_attention_plugin", "auto"),
        ("paged_kv_cache", True),
        ("use_paged_context_fmha", True),
    ]
    assert calls["QuantConfig"] == {"quant_algo": FakeQuantAlgo.FP8, "kv_cache_quant_algo": FakeQuantAlgo.FP8}
    assert calls["CalibConfig"] == {
        "calib_dataset": "/data/calib",
        "calib_batches": 64,
        "calib_batch_size": 1,
        "calib_max_seq_length": 256,
    }
    llm_args = calls["LLM"]
    assert set(llm_args) == {
        "model",
        "build_config",
        "quant_config",
        "calib_config",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "dtype",
    }
    assert llm_args["model"] == tiny_model  # a local checkpoint is used in place
    assert type(llm_args["build_config"]).__name__ == "BuildConfig"
    assert type(llm_args["quant_config"]).__name__ == "QuantConfig"
    assert type(llm_args["calib_config"]).__name__ == "CalibConfig"
    assert (llm_args["tensor_parallel_size"], llm_args["pipeline_parallel_size"], llm_args["dtype"]) == (
        2,
        1,
        "auto",
    )
    assert Path(calls["save"]).as_posix().endswith("/tensorrt_llm/1/engine")

    # The engine llm.save wrote is part of the published repository.
    manifest = storage.require_complete(str(output))
    paths = {entry.path for entry in manifest.files}
    assert {"tensorrt_llm/1/engine/rank0.engine", "tensorrt_llm/1/engine/config.json"} <= paths
    assert result.manifest_digest == manifest.digest and not result.dry_run
    assert "tensorrt_llm._tensorrt_engine.LLM" in result.plan and "QuantAlgo.FP8" in result.plan


def test_engine_metadata_is_recorded_in_manifest_file_and_result(tiny_model, tmp_path, fake_trtllm):
    fake_trtllm()
    output = tmp_path / "repository"
    result = build(engine_config(tiny_model, output, quantization="fp8"))
    metadata = storage.read_manifest(str(output)).metadata
    assert json.loads((output / ENGINE_METADATA_NAME).read_text()) == metadata == result.metadata
    assert set(serving_compat.METADATA_KEYS) <= set(metadata)
    assert metadata["serving_mode"] == "trtllm-engine"
    assert metadata["trtllm_version"] == "1.2.1"
    assert metadata["gpu_arch"] == "sm90"
    assert (metadata["tensor_parallel"], metadata["pipeline_parallel"]) == (1, 1)
    assert (metadata["max_batch_size"], metadata["max_input_len"]) == (8, 1024)
    assert (metadata["max_seq_len"], metadata["max_num_tokens"]) == (2048, 8192)
    assert (metadata["quantization"], metadata["kv_cache_quantization"]) == ("fp8", "none")
    # The newest image carrying the TRT-LLM that built the engine.
    assert metadata["triton_image"] == "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"
    assert metadata["engine_path"] == "/models/tensorrt_llm/1/engine"
    assert metadata["source_digest"] == storage.read_manifest(tiny_model).digest
    assert "TRT-LLM 1.2.1 on sm90" in result.summary()

    # What rollout will do with it.
    check_serving_compat(metadata, metadata["triton_image"], H100)
    with pytest.raises(ServingCompatError, match="built on sm90"):
        check_serving_compat(metadata, metadata["triton_image"], "NVIDIA-A100-SXM4-80GB")
    with pytest.raises(ServingCompatError, match=r"built with TRT-LLM 1\.2\.1"):
        check_serving_compat(metadata, "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3", H100)


def test_unquantized_build_passes_no_quantization(tiny_model, tmp_path, fake_trtllm):
    fake = fake_trtllm()
    build(engine_config(tiny_model, tmp_path / "repository"))
    names = [name for name, _ in fake.calls]
    assert "QuantConfig" not in names and "CalibConfig" not in names
    llm_args = dict(fake.calls)["LLM"]
    assert "quant_config" not in llm_args and "calib_config" not in llm_args


def test_fp8_kv_cache_alone_is_calibrated_too(tiny_model, tmp_path, fake_trtllm):
    fake = fake_trtllm()
    build(engine_config(tiny_model, tmp_path / "repository", trtllm=TrtllmSettings(fp8_kv_cache=True)))
    calls = dict(fake.calls)
    assert calls["QuantConfig"] == {"quant_algo": None, "kv_cache_quant_algo": FakeQuantAlgo.FP8}
    assert "CalibConfig" in calls


def test_trtllm_before_1_0_builds_with_tensorrt_llm_LLM(tiny_model, tmp_path, fake_trtllm):
    fake = fake_trtllm(version="0.16.0", legacy=True)
    result = build(engine_config(tiny_model, tmp_path / "repository"))
    assert [name for name, _ in fake.calls][-3:] == ["LLM", "save", "shutdown"]
    assert result.metadata["triton_image"] == "nvcr.io/nvidia/tritonserver:24.12-trtllm-python-py3"


def test_explicit_triton_image_must_carry_the_building_trtllm(tiny_model, tmp_path, fake_trtllm):
    fake = fake_trtllm()
    output = tmp_path / "repository"
    image = "nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3"
    assert build(engine_config(tiny_model, output, triton_image=image)).metadata["triton_image"] == image
    fake.calls.clear()
    missing_model = str(tmp_path / "no-model")
    other = "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"
    with pytest.raises(BuildError, match=r"carries TRT-LLM 1\.1\.0, but this build runs TRT-LLM 1\.2\.1"):
        build(engine_config(missing_model, output, triton_image=other))  # refused before reading the model
    assert fake.calls == []
    with pytest.raises(ValidationError, match="not a tritonserver TensorRT-LLM image"):
        engine_config(tiny_model, output, triton_image="nvcr.io/nvidia/tritonserver:25.12-py3")


def test_failed_save_shuts_down_and_publishes_nothing(tiny_model, tmp_path, fake_trtllm):
    fake = fake_trtllm(fail_save=True)
    output = tmp_path / "repository"
    with pytest.raises(RuntimeError, match="disk full"):
        build(engine_config(tiny_model, output))
    assert [name for name, _ in fake.calls][-2:] == ["save", "shutdown"]
    assert not output.exists()


def test_no_gpu_is_a_build_error(tiny_model, tmp_path, fake_trtllm, monkeypatch):
    fake_trtllm()

    def no_gpu() -> str:
        raise RuntimeError("no CUDA GPU is visible")

    monkeypatch.setattr(build_module, "detect_gpu_arch", no_gpu)
    with pytest.raises(BuildError, match="no CUDA GPU"):
        build(engine_config(tiny_model, tmp_path / "repository"))


def test_engine_repository_from_and_to_s3(tiny_model, s3_bucket, fake_trtllm):
    fake = fake_trtllm()
    merged, repo = s3_bucket.uri("merged"), s3_bucket.uri("repo")
    storage.publish_dir(tiny_model, merged, producer="test")
    result = build(engine_config(merged, repo))
    paths = {entry.path for entry in storage.require_complete(repo).files}
    assert {
        "tensorrt_llm/1/engine/rank0.engine",
        "llm/1/.llmft-ensemble",  # the ensemble's version directory survives the object store
        "preprocessing/1/tokenizer/tokenizer.json",
        "postprocessing/1/model.py",
        ENGINE_METADATA_NAME,
    } <= paths
    assert dict(fake.calls)["LLM"]["model"] != merged  # the engine is built from a local copy
    assert result.metadata["source_model"] == merged


def test_engine_build_outside_the_trtllm_image_names_the_image(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import fails, as on a laptop or in CI
    output = tmp_path / "repository"
    config = engine_config(str(tmp_path / "no-model"), output)
    with pytest.raises(BuildError) as error:
        build(config)  # refused before the (missing) model is read
    message = str(error.value)
    assert "TensorRT-LLM is not installed here" in message
    assert load_images().trtllm in message
    assert serving_compat.DEFAULT_TRITON_IMAGE in message
    assert "--dry-run" in message
    assert not output.exists()


# --- dry run and the CLI -----------------------------------------------------------------------


def test_dry_run_writes_the_repository_and_the_plan_without_trtllm(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    output = tmp_path / "repository"
    result = build(engine_config(tiny_model, output, dry_run=True, quantization="fp8"))
    assert result.dry_run
    calls = yaml.safe_load(result.plan)
    assert [next(iter(call)) for call in calls] == [
        "tensorrt_llm.llmapi.BuildConfig",
        "build_config.plugin_config (attributes)",
        "tensorrt_llm.llmapi.QuantConfig",
        "tensorrt_llm.llmapi.CalibConfig",
        "tensorrt_llm._tensorrt_engine.LLM",
        "llm.save",
        "llm.shutdown",
    ]
    assert calls[2]["tensorrt_llm.llmapi.QuantConfig"] == {
        "quant_algo": "QuantAlgo.FP8",
        "kv_cache_quant_algo": None,
    }
    assert calls[4]["tensorrt_llm._tensorrt_engine.LLM"]["model"] == tiny_model
    assert calls[5] == {"llm.save": {"engine_dir": "<repository>/tensorrt_llm/1/engine"}}
    assert set(repository_configs(output)) == {"llm", "preprocessing", "tensorrt_llm", "postprocessing"}
    assert not (output / "tensorrt_llm" / "1" / "engine").exists()
    metadata = storage.require_complete(str(output)).metadata
    assert (metadata["dry_run"], metadata["gpu_arch"], metadata["trtllm_version"]) == (
        True,
        "unknown",
        "1.2.1",
    )
    with pytest.raises(ServingCompatError, match="dry-run"):
        check_serving_compat(metadata, metadata["triton_image"], H100)
    assert "no engine was built" in result.summary()


def test_cli_dry_run_prints_the_plan(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    output = tmp_path / "repository"
    code = cli_main(
        [
            "build",
            "--model",
            tiny_model,
            "--output",
            str(output),
            "--serving-mode",
            "trtllm-engine",
            "--quantization",
            "fp8",
            "--trtllm-tensor-parallel-size",
            "2",
            "--triton-decoupled",
            "--dry-run",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "Dry run" in printed and "tensorrt_llm.llmapi.BuildConfig" in printed
    assert "tensor_parallel_size: 2" in printed
    assert repository_configs(output)["tensorrt_llm"].model_transaction_policy.decoupled


def test_cli_engine_build_outside_the_image_fails_with_the_message(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)
    code = cli_main(
        ["build", "--model", tiny_model, "--output", str(tmp_path / "r"), "--serving-mode", "trtllm-engine"]
    )
    assert code == 1
    assert "TensorRT-LLM is not installed here" in capsys.readouterr().err


# --- the ensemble's configs, parsed with Triton's protobuf ---------------------------------------


def ensemble_settings(**triton: Any) -> EnsembleSettings:
    return EnsembleSettings(
        model_name="llm",
        max_batch_size=16,
        max_new_tokens=32,
        max_input_len=512,
        max_seq_len=1024,
        prompt_template=PROMPT_TEMPLATE,
        triton=TritonTrtllmSettings(**triton),
        source_digest="abc",
    )


def parsed(settings: EnsembleSettings) -> dict[str, Any]:
    from components.build.pbtxt import to_pbtxt

    return {name: parse_config(to_pbtxt(fields)) for name, fields in model_configs(settings).items()}


def check_ensemble(configs: dict[str, Any], ensemble_name: str) -> None:
    """What Triton checks when it loads an ensemble: names, types, shapes, required inputs."""
    ensemble = configs[ensemble_name]
    available = {tensor.name: tensor for tensor in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        model_inputs = {tensor.name: tensor for tensor in model.input}
        model_outputs = {tensor.name: tensor for tensor in model.output}
        for key, value in step.input_map.items():
            assert key in model_inputs, f"{step.model_name} has no input {key}"
            assert value in available, f"{value} is used by {step.model_name} before anything produces it"
            assert available[value].data_type == model_inputs[key].data_type, (step.model_name, key)
            assert list(available[value].dims) == list(model_inputs[key].dims), (step.model_name, key)
            if not model_inputs[key].optional and value in {t.name for t in ensemble.input}:
                assert not available[value].optional, (
                    f"required {step.model_name}.{key} fed by an optional input"
                )
        required = {name for name, tensor in model_inputs.items() if not tensor.optional}
        assert required <= set(step.input_map), f"{step.model_name} misses {required - set(step.input_map)}"
        for key, value in step.output_map.items():
            assert key in model_outputs, f"{step.model_name} has no output {key}"
            available[value] = model_outputs[key]
    for tensor in ensemble.output:
        assert tensor.name in available and available[tensor.name].data_type == tensor.data_type


@pytest.mark.parametrize("decoupled", [False, True])
def test_ensemble_configs_parse_and_fit_together(decoupled):
    configs = parsed(ensemble_settings(decoupled=decoupled))
    assert set(configs) == {"llm", "preprocessing", "tensorrt_llm", "postprocessing"}
    check_ensemble(configs, "llm")

    ensemble = configs["llm"]
    # One prompt per request (see test_batched_requests_stop_at_the_ensemble); 16 in flight.
    assert (ensemble.platform, ensemble.max_batch_size) == ("ensemble", 1)
    assert [step.model_name for step in ensemble.ensemble_scheduling.step] == [
        "preprocessing",
        "tensorrt_llm",
        "postprocessing",
    ]
    client_inputs = {tensor.name: tensor for tensor in ensemble.input}
    # The hf mode's client contract (+ stream when responses can stream).
    assert list(client_inputs) == [
        "text_input",
        "max_tokens",
        "temperature",
        *(["stream"] if decoupled else []),
    ]
    assert not client_inputs["text_input"].optional and client_inputs["max_tokens"].optional
    assert [tensor.name for tensor in ensemble.output] == ["text_output"]

    trtllm = configs["tensorrt_llm"]
    assert (trtllm.backend, trtllm.max_batch_size) == ("tensorrtllm", 16)
    assert trtllm.model_transaction_policy.decoupled is decoupled
    assert list(trtllm.dynamic_batching.preferred_batch_size) == [16]
    assert (trtllm.instance_group[0].count, trtllm.instance_group[0].kind) == (1, Kind.KIND_CPU)
    inputs = {tensor.name: tensor for tensor in trtllm.input}
    assert inputs["input_ids"].allow_ragged_batch
    assert inputs["input_lengths"].HasField("reshape") and list(inputs["input_lengths"].reshape.shape) == []
    assert ("streaming" in inputs) is decoupled
    params = string_params(trtllm)
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["gpt_model_path"] == "/models/tensorrt_llm/1/engine"
    assert params["batch_scheduler_policy"] == "guaranteed_no_evict"
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.9"
    assert params["exclude_input_in_output"] == "true"
    assert params["enable_kv_cache_reuse"] == params["enable_chunked_context"] == "false"
    assert "max_tokens_in_paged_kv_cache" not in params
    # Read by the backend without a default: they must be present (empty turns guided decoding off).
    assert params["tokenizer_dir"] == params["guided_decoding_backend"] == ""
    assert params["xgrammar_tokenizer_info_path"] == ""

    for name in ("preprocessing", "postprocessing"):
        config = configs[name]
        assert (config.backend, config.max_batch_size) == ("python", 16)
        assert string_params(config)["tokenizer_dir"] == "tokenizer"
        assert config.instance_group[0].kind == Kind.KIND_CPU
    pre = string_params(configs["preprocessing"])
    assert (pre["prompt_template"], pre["max_new_tokens"]) == (PROMPT_TEMPLATE, "32")
    assert (pre["max_input_len"], pre["max_seq_len"]) == ("512", "1024")


@pytest.mark.parametrize("decoupled", [False, True])
def test_batched_requests_stop_at_the_ensemble(decoupled):
    """A request of more than one row must be refused by Triton at the ensemble, not by the backend.

    Upstream's tensorrtllm backend throws "Batch size > 1 requires the tensorrt_llm backend to be
    using decoupled transaction policy" for such a request (createRequestsFromInputTensors,
    TensorRT-LLM triton_backend/inflight_batcher_llm/src/utils.cc) and, decoupled, answers each row
    in a response of its own: neither is the hf mode's one answer per request. In-flight batching of
    concurrent single-row requests needs only the composing models' and the engine's batch size.
    """
    configs = parsed(ensemble_settings(decoupled=decoupled))
    ensemble = configs["llm"]
    # max_batch_size 1 is Triton's own limit on rows per request: [1, 1] passes, [2, 1] is refused.
    assert ensemble.max_batch_size == 1
    for name in ("preprocessing", "tensorrt_llm", "postprocessing"):
        # Triton loads an ensemble only if no composing model takes fewer rows than it does.
        assert configs[name].max_batch_size == 16 >= ensemble.max_batch_size, name
    trtllm = configs["tensorrt_llm"]
    assert list(trtllm.dynamic_batching.preferred_batch_size) == [16]
    # Every tensor a client sends carries the batch dimension the ensemble declares.
    assert all(list(tensor.dims) == [1] for tensor in ensemble.input)


def test_engine_build_serves_one_prompt_per_request_over_a_batching_engine(tiny_model, tmp_path, fake_trtllm):
    fake = fake_trtllm()
    output = tmp_path / "repository"
    build(engine_config(tiny_model, output, max_batch_size=16))
    ensemble = parse_config((output / "llm" / "config.pbtxt").read_text(encoding="utf-8"))
    trtllm = parse_config((output / "tensorrt_llm" / "config.pbtxt").read_text(encoding="utf-8"))
    assert (ensemble.max_batch_size, trtllm.max_batch_size) == (1, 16)
    assert trtllm.model_transaction_policy.decoupled is False
    assert dict(fake.calls)["BuildConfig"]["max_batch_size"] == 16


def test_ensemble_settings_reach_the_configs():
    configs = parsed(
        ensemble_settings(
            batching_strategy="v1",
            batch_scheduler_policy="max_utilization",
            kv_cache_free_gpu_mem_fraction=0.5,
            max_tokens_in_paged_kv_cache=65536,
            enable_kv_cache_reuse=True,
            enable_chunked_context=True,
            max_queue_delay_microseconds=100,
            max_queue_size=64,
            preprocessing_instance_count=4,
            postprocessing_instance_count=3,
            model_repository_path="/mnt/repo",
        )
    )
    trtllm = configs["tensorrt_llm"]
    params = string_params(trtllm)
    assert params["gpt_model_type"] == "v1"
    assert params["batch_scheduler_policy"] == "max_utilization"
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.5"
    assert params["max_tokens_in_paged_kv_cache"] == "65536"
    assert params["enable_kv_cache_reuse"] == params["enable_chunked_context"] == "true"
    assert params["gpt_model_path"] == "/mnt/repo/tensorrt_llm/1/engine"
    assert trtllm.dynamic_batching.max_queue_delay_microseconds == 100
    assert trtllm.dynamic_batching.default_queue_policy.max_queue_size == 64
    assert configs["preprocessing"].instance_group[0].count == 4
    assert configs["postprocessing"].instance_group[0].count == 3


def test_trtllm_settings_are_validated_with_field_and_value():
    base = {"model": "m", "output": "o", "serving_mode": "trtllm-engine"}
    with pytest.raises(ValidationError, match=r"max_input_len \(2048\) must be below max_seq_len \(2048\)"):
        TrtllmSettings(max_input_len=2048, max_seq_len=2048)
    with pytest.raises(ValidationError, match="max_batch_size must be at least 1"):
        BuildConfig(**base, max_batch_size=0)
    with pytest.raises(ValidationError, match=r"max_new_tokens \(4096\) must be below trtllm.max_seq_len"):
        BuildConfig(**base, max_new_tokens=4096)
    with pytest.raises(ValidationError, match=r"needs trtllm\.paged_kv_cache=true"):
        BuildConfig(**base, trtllm={"paged_kv_cache": False})
    BuildConfig(**base, trtllm={"paged_kv_cache": False}, triton={"batching_strategy": "v1"})
    with pytest.raises(ValidationError, match="gpt_attention_plugin cannot be 'disable'"):
        BuildConfig(**base, trtllm={"gpt_attention_plugin": "disable"})
    with pytest.raises(ValidationError, match="enable_kv_cache_reuse=true needs"):
        BuildConfig(**base, trtllm={"use_paged_context_fmha": False}, triton={"enable_kv_cache_reuse": True})
    with pytest.raises(ValidationError, match="'preprocessing' is taken"):
        BuildConfig(**base, model_name="preprocessing")
    with pytest.raises(ValidationError, match="fp8_kv_cache needs serving_mode='trtllm-engine'"):
        BuildConfig(model="m", output="o", serving_mode="trtllm-llmapi", trtllm={"fp8_kv_cache": True})
    with pytest.raises(ValidationError, match=r"trtllm-llmapi needs TRT-LLM >= 1\.0"):
        BuildConfig(
            model="m",
            output="o",
            serving_mode="trtllm-llmapi",
            triton_image="nvcr.io/nvidia/tritonserver:25.08-trtllm-python-py3",
        )
    with pytest.raises(ValidationError, match="model_repository_path"):
        TritonTrtllmSettings(model_repository_path="models")


# --- trtllm-llmapi ---------------------------------------------------------------------------------


def test_llmapi_repository_layout_model_yaml_and_config(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # writing it needs no TensorRT-LLM
    output = tmp_path / "repository"
    result = build(
        BuildConfig(
            model=tiny_model,
            output=str(output),
            serving_mode="trtllm-llmapi",
            max_batch_size=32,
            trtllm={"tensor_parallel_size": 2, "max_seq_len": 4096, "max_input_len": 3000},
            triton={"kv_cache_free_gpu_mem_fraction": 0.8, "decoupled": True},
        )
    )
    version = output / "llm" / "1"
    assert {"model.py", "llmft_triton_utils.py", "model.yaml", "checkpoint"} <= {
        p.name for p in version.iterdir()
    }
    assert (version / "checkpoint" / "model.safetensors").is_file()
    assert not (version / "checkpoint" / storage.MANIFEST_NAME).exists()
    args = yaml.safe_load((version / "model.yaml").read_text())
    assert args == {
        "model": "checkpoint",
        "backend": "pytorch",
        "dtype": "auto",
        "tensor_parallel_size": 2,
        "pipeline_parallel_size": 1,
        "max_batch_size": 32,
        "max_num_tokens": 8192,
        "max_seq_len": 4096,
        "enable_chunked_prefill": False,
        "kv_cache_config": {"free_gpu_memory_fraction": 0.8, "enable_block_reuse": False},
        "triton_config": {"max_batch_size": 0, "decoupled": True},
    }
    [config] = repository_configs(output).values()
    assert (config.name, config.backend, config.max_batch_size) == ("llm", "python", 0)
    assert config.model_transaction_policy.decoupled
    assert [tensor.name for tensor in config.input] == ["text_input", "max_tokens", "temperature", "stream"]
    assert [tensor.name for tensor in config.output] == ["text_output"]
    assert (config.instance_group[0].count, config.instance_group[0].kind) == (1, Kind.KIND_CPU)
    assert string_params(config)["prompt_template"] == PROMPT_TEMPLATE
    assert string_params(config)["max_input_len"] == "3000"

    metadata = storage.require_complete(str(output)).metadata
    assert json.loads((output / ENGINE_METADATA_NAME).read_text()) == metadata == result.metadata
    assert set(serving_compat.METADATA_KEYS) <= set(metadata)
    assert (metadata["gpu_arch"], metadata["trtllm_version"]) == ("any", "1.2.1")
    assert metadata["triton_image"] == serving_compat.DEFAULT_TRITON_IMAGE
    assert metadata["tensor_parallel"] == 2 and metadata["max_batch_size"] == 32
    check_serving_compat(metadata, "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3", "NVIDIA-A10G")
    assert "tensorrt_llm.LLM" in result.plan


def test_llmapi_config_without_streaming():
    settings = LlmapiSettings(
        model_name="chat",
        max_batch_size=4,
        max_new_tokens=16,
        prompt_template=PROMPT_TEMPLATE,
        trtllm=TrtllmSettings(),
        triton=TritonTrtllmSettings(max_tokens_in_paged_kv_cache=1000, enable_kv_cache_reuse=True),
    )
    from components.build.pbtxt import to_pbtxt

    config = parse_config(to_pbtxt(llmapi_config(settings)))
    assert not config.model_transaction_policy.decoupled
    assert [tensor.name for tensor in config.input] == ["text_input", "max_tokens", "temperature"]
    assert model_yaml(settings)["kv_cache_config"] == {
        "free_gpu_memory_fraction": 0.9,
        "enable_block_reuse": True,
        "max_tokens": 1000,
    }


# --- the model files' shared helpers ------------------------------------------------------------


def test_prompt_ids_match_training(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for prompt in ("Classify the sentiment: the soup was cold", "ünïcode ✓ {braces}"):
        expected = training_prompt_ids(tokenizer, Record(id="r", prompt=prompt, response="x"))
        assert prompt_ids(tokenizer, PROMPT_TEMPLATE, prompt) == expected


def test_sampling_gives_temperature_the_hf_meaning():
    assert executor_sampling(0.0) == (1.0, 1, 1.0)  # top_k 1: greedy
    assert executor_sampling(0.7) == (0.7, 0, 1.0)  # no top-k cut, full top-p: sampling
    assert llmapi_sampling(0.0, 5) == {"max_tokens": 5, "top_k": 1}
    assert llmapi_sampling(0.7, 5) == {"max_tokens": 5, "temperature": 0.7, "top_p": 1.0}


# --- the python models in a real tritonserver ------------------------------------------------------


@pytest.fixture(scope="module")
def ensemble_repository(tiny_model, tmp_path_factory) -> Path:
    """A dry-run trtllm-engine repository (everything but the engine)."""
    output = tmp_path_factory.mktemp("ensemble") / "repository"
    saved = sys.modules.get("tensorrt_llm")
    sys.modules["tensorrt_llm"] = None  # type: ignore[assignment]
    try:
        build(BuildConfig(model=tiny_model, output=str(output), serving_mode="trtllm-engine", dry_run=True))
    finally:
        if saved is None:
            del sys.modules["tensorrt_llm"]
        else:
            sys.modules["tensorrt_llm"] = saved
    return output


@pytest.fixture(scope="module")
def pre_post_server(ensemble_repository, tmp_path_factory):
    """tritonserver serving the ensemble's preprocessing and postprocessing models (no engine here)."""
    repository = tmp_path_factory.mktemp("prepost") / "repository"
    for name in (triton_trtllm.PREPROCESSING, triton_trtllm.POSTPROCESSING):
        shutil.copytree(ensemble_repository / name, repository / name)
    workdir = tmp_path_factory.mktemp("prepost-server")
    server = local_triton.start_local_server(repository, workdir)
    try:
        # /v2/health/ready, polled too, is ready only once every model is.
        local_triton.wait_until_ready(server, triton_trtllm.PREPROCESSING, 180)
        yield httpclient.InferenceServerClient(url=server.info.http_url[len("http://") :])
    finally:
        local_triton.stop_local_server(server.info.pid)


def _infer(client, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
    dtypes = {np.object_: "BYTES", np.int32: "INT32", np.float32: "FP32"}
    infer_inputs = []
    for name, array in inputs.items():
        tensor = httpclient.InferInput(name, list(array.shape), dtypes[array.dtype.type])
        tensor.set_data_from_numpy(array)
        infer_inputs.append(tensor)
    result = client.infer(
        model, infer_inputs, outputs=[httpclient.InferRequestedOutput(name) for name in outputs]
    )
    return {name: result.as_numpy(name) for name in outputs}


PRE_OUTPUTS = [
    "INPUT_ID",
    "REQUEST_INPUT_LEN",
    "REQUEST_OUTPUT_LEN",
    "OUT_END_ID",
    "OUT_PAD_ID",
    "OUT_TEMPERATURE",
    "OUT_RUNTIME_TOP_K",
    "OUT_RUNTIME_TOP_P",
]


def test_preprocessing_tokenizes_like_training(pre_post_server, tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompts = ["Classify the sentiment: the soup was cold", "hi"]
    out = _infer(
        pre_post_server,
        "preprocessing",
        {
            "QUERY": np.array([[p.encode()] for p in prompts], dtype=np.object_),
            "TEMPERATURE": np.array([[0.0], [0.5]], dtype=np.float32),
        },
        PRE_OUTPUTS,
    )
    expected = [training_prompt_ids(tokenizer, Record(id="r", prompt=p, response="x")) for p in prompts]
    lengths = out["REQUEST_INPUT_LEN"].ravel().tolist()
    assert lengths == [len(ids) for ids in expected]
    assert [row[:length].tolist() for row, length in zip(out["INPUT_ID"], lengths, strict=True)] == expected
    assert out["REQUEST_OUTPUT_LEN"].ravel().tolist() == [64, 64]  # max_new_tokens by default
    assert out["OUT_END_ID"].ravel().tolist() == [tokenizer.eos_token_id] * 2
    assert out["OUT_RUNTIME_TOP_K"].ravel().tolist() == [1, 0]  # greedy, then sampling
    assert out["OUT_TEMPERATURE"].ravel().tolist() == [1.0, 0.5]


def test_preprocessing_refuses_bad_requests_with_the_reason(pre_post_server):
    query = np.array([[b"hello"]], dtype=np.object_)
    with pytest.raises(Exception, match="max_tokens must be at least 1"):
        _infer(
            pre_post_server,
            "preprocessing",
            {"QUERY": query, "REQUEST_OUTPUT_LEN": np.array([[0]], dtype=np.int32)},
            PRE_OUTPUTS,
        )
    with pytest.raises(Exception, match=r"exceeds max_seq_len \(2048\)"):
        _infer(
            pre_post_server,
            "preprocessing",
            {"QUERY": query, "REQUEST_OUTPUT_LEN": np.array([[2040]], dtype=np.int32)},
            PRE_OUTPUTS,
        )


def test_postprocessing_decodes_up_to_eos(pre_post_server, tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    generated = tokenizer("positive", add_special_tokens=False)["input_ids"]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    tokens = np.array([[[*generated, eos, pad, pad]]], dtype=np.int32)  # [rows, beams, ids]
    out = _infer(
        pre_post_server,
        "postprocessing",
        {"TOKENS_BATCH": tokens, "SEQUENCE_LENGTH": np.array([[len(generated) + 1]], dtype=np.int32)},
        ["OUTPUT"],
    )
    assert out["OUTPUT"].tolist() == [[b"positive"]]


# A stand-in for the tensorrtllm backend (tests only): the generated tensorrt_llm config with
# backend python, answering from what the ensemble fed it: greedy requests get the prompt's
# ids back (after BOS, cut to request_output_len), sampling requests get them reversed.
ENGINE_STAND_IN = """
import numpy as np
import triton_python_backend_utils as pb_utils


def value(request, name):
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            length = int(value(request, "input_lengths").ravel()[0])
            wanted = int(value(request, "request_output_len").ravel()[0])
            ids = value(request, "input_ids").ravel()[1:length].tolist()[:wanted]
            greedy = int(value(request, "runtime_top_k").ravel()[0]) == 1
            out = (ids if greedy else ids[::-1]) + [int(value(request, "end_id").ravel()[0])]
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("output_ids", np.array([[out]], dtype=np.int32)),
                pb_utils.Tensor("sequence_length", np.array([[len(out)]], dtype=np.int32)),
            ]))
        return responses
"""


@pytest.fixture(scope="module")
def ensemble_server(ensemble_repository, tmp_path_factory):
    """The whole generated ensemble in tritonserver, the engine model replaced by the stand-in."""
    repository = tmp_path_factory.mktemp("ensemble-served") / "repository"
    shutil.copytree(ensemble_repository, repository)
    config_path = repository / "tensorrt_llm" / "config.pbtxt"
    config = parse_config(config_path.read_text(encoding="utf-8"))
    config.backend = "python"
    config.ClearField("dynamic_batching")  # one request per execute(): no ragged batches to split
    config.ClearField("parameters")
    config_path.write_text(text_format.MessageToString(config), encoding="utf-8")
    (repository / "tensorrt_llm" / "1").mkdir()  # a dry run leaves it without files, so unpublished
    (repository / "tensorrt_llm" / "1" / "model.py").write_text(textwrap.dedent(ENGINE_STAND_IN))
    workdir = tmp_path_factory.mktemp("ensemble-server")
    server = local_triton.start_local_server(repository, workdir)
    try:
        local_triton.wait_until_ready(server, "llm", 180)
        yield server
    finally:
        local_triton.stop_local_server(server.info.pid)


def test_ensemble_serves_generate_requests_end_to_end(ensemble_server, tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = "Classify the sentiment: the soup was cold"
    ids = training_prompt_ids(tokenizer, Record(id="r", prompt=prompt, response="x"))[1:]
    url = ensemble_server.info.http_url

    status, body = _generate(url, {"text_input": prompt, "max_tokens": 5})
    assert status == 200, body
    assert body["text_output"] == tokenizer.decode(ids[:5], skip_special_tokens=True)

    status, body = _generate(url, {"text_input": prompt, "max_tokens": 5, "temperature": 0.8})
    assert body["text_output"] == tokenizer.decode(ids[:5][::-1], skip_special_tokens=True)

    status, body = _generate(url, {"text_input": prompt})  # max_new_tokens (64) covers the whole prompt
    assert body["text_output"] == tokenizer.decode(ids, skip_special_tokens=True)

    status, body = _generate(url, {"text_input": prompt, "max_tokens": 0})
    assert status == 400 and "max_tokens must be at least 1" in body["error"]


# --- the llmapi model in a real tritonserver, against a strict stand-in of the LLM API ---------------

# The LLM API stand-in, shaped after TRT-LLM 1.2.x class by class (see its docstring).
LLM_API_STAND_IN = Path(__file__).with_name("trtllm_llmapi_stand_in.py")

# After update_llm_args_with_extra_dict in tensorrt_llm/llmapi/llm_args.py, imported by
# tensorrt_llm/llmapi/llm_utils.py (TRT-LLM 1.2.x): nested sections become config objects.
FAKE_LLM_UTILS = """
def update_llm_args_with_extra_dict(llm_args, llm_args_dict, extra_llm_api_options=None):
    merged = {**llm_args, **llm_args_dict}
    merged["kv_cache_config"] = ("KvCacheConfig", llm_args_dict["kv_cache_config"])
    return merged
"""


@contextlib.contextmanager
def serve_llmapi(model: str, root: Path, decoupled: bool) -> Iterator[tuple[Any, Path, Path]]:
    """Build an llmapi repository and serve a copy of it against the LLM API stand-in."""
    output = root / "repository"
    config = BuildConfig(
        model=model,
        output=str(output),
        serving_mode="trtllm-llmapi",
        max_new_tokens=7,
        triton={"decoupled": decoupled},
    )
    build(config)
    # The fake goes into the served copy's version directory, which the python stub puts on
    # sys.path (the stub does not take extra PYTHONPATH entries).
    served = root / "served"
    shutil.copytree(output, served)
    fake = served / "llm" / "1" / "tensorrt_llm"
    (fake / "llmapi").mkdir(parents=True)
    shutil.copyfile(LLM_API_STAND_IN, fake / "__init__.py")
    (fake / "llmapi" / "__init__.py").write_text("")
    (fake / "llmapi" / "llm_utils.py").write_text(textwrap.dedent(FAKE_LLM_UTILS))
    record = root / "llm_args.json"
    patch = pytest.MonkeyPatch()
    patch.setenv("FAKE_LLM_RECORD", str(record))
    try:
        server = local_triton.start_local_server(served, root / "server")
    finally:
        patch.undo()
    try:
        local_triton.wait_until_ready(server, "llm", 180)
        yield server, record, served
    finally:
        local_triton.stop_local_server(server.info.pid)


@pytest.fixture(scope="module")
def llmapi_server(tiny_model, tmp_path_factory):
    with serve_llmapi(tiny_model, tmp_path_factory.mktemp("llmapi"), decoupled=False) as served:
        yield served


@pytest.fixture(scope="module")
def llmapi_streaming_server(tiny_model, tmp_path_factory):
    with serve_llmapi(tiny_model, tmp_path_factory.mktemp("llmapi-stream"), decoupled=True) as served:
        yield served


def _generate(url: str, body: dict, stream: bool = False) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    endpoint = "generate_stream" if stream else "generate"
    request = urllib.request.Request(
        f"{url}/v2/models/llm/{endpoint}", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read().decode())
    if stream:
        return status, [
            json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")
        ]
    return status, json.loads(text)


def test_llmapi_model_loads_model_yaml_and_calls_the_llm_api(llmapi_server, tiny_model):
    server, record, output = llmapi_server
    llm_args = json.loads(record.read_text())
    assert llm_args["model"] == str(output / "llm" / "1" / "checkpoint")  # resolved in the version dir
    assert "triton_config" not in llm_args
    assert llm_args["backend"] == "pytorch" and llm_args["max_seq_len"] == 2048
    assert "KvCacheConfig" in llm_args["kv_cache_config"]  # nested sections become config objects

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = "Classify the sentiment: the soup was cold"
    status, body = _generate(server.info.http_url, {"text_input": prompt})
    assert status == 200, body
    echoed = json.loads(body["text_output"])
    assert echoed["ids"] == training_prompt_ids(tokenizer, Record(id="r", prompt=prompt, response="x"))
    assert echoed["sampling"] == {"max_tokens": 7, "top_k": 1}  # max_new_tokens, greedy

    status, body = _generate(
        server.info.http_url, {"text_input": prompt, "max_tokens": 3, "temperature": 0.5}
    )
    assert json.loads(body["text_output"])["sampling"] == {"max_tokens": 3, "temperature": 0.5, "top_p": 1.0}


def test_llmapi_model_reports_bad_requests(llmapi_server):
    server, _, _ = llmapi_server
    status, body = _generate(server.info.http_url, {"text_input": "hi", "max_tokens": 0})
    assert status == 400 and "max_tokens must be at least 1" in body["error"]
    status, body = _generate(server.info.http_url, {"text_input": "hi", "temperature": -1.0})
    assert status == 400 and "temperature must be a finite number >= 0" in body["error"]


def test_llmapi_model_streams_in_decoupled_mode(llmapi_streaming_server):
    server, _, _ = llmapi_streaming_server
    status, events = _generate(server.info.http_url, {"text_input": "hi", "stream": True}, stream=True)
    assert status == 200
    chunks = [event["text_output"] for event in events if "text_output" in event]
    assert len(chunks) == 2 and json.loads("".join(chunks))["sampling"]["max_tokens"] == 7
    # Without stream, a decoupled model still answers once, with the whole text.
    status, events = _generate(server.info.http_url, {"text_input": "hi"}, stream=True)
    assert [json.loads(event["text_output"])["sampling"] for event in events] == [
        {"max_tokens": 7, "top_k": 1}
    ]


def test_llmapi_stand_in_is_as_strict_as_upstream(tiny_model):
    """Upstream's LLM.tokenizer wrapper has no bos_token_id; neither may the stand-in."""
    from tests.components import trtllm_llmapi_stand_in as stand_in

    wrapper = stand_in.TransformersTokenizer.from_pretrained(tiny_model)
    assert wrapper.eos_token_id == AutoTokenizer.from_pretrained(tiny_model).eos_token_id
    with pytest.raises(AttributeError):
        _ = wrapper.bos_token_id
    with pytest.raises(AttributeError):
        wrapper.bos_token_id = 1
    with pytest.raises(TypeError):
        stand_in.SamplingParams(greedy=True)  # not an upstream field
    output = stand_in.RequestOutput([1, 2], ["ab", "cd"])
    assert [step.outputs[0].text_diff for step in output] == ["ab", "cd"]
    assert output.outputs[0].text == "abcd" and output.finished
