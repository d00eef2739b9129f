"""Build step: the Triton model repository of serving mode hf, checked with Triton's own protobuf.

The TensorRT-LLM modes are tested in test_build_trtllm.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from pydantic import ValidationError
from tritonclient.grpc import model_config_pb2

from components import storage
from components.build.build import BuildConfig, BuildError, build
from components.build.pbtxt import Ident, map_entries, quote, to_pbtxt
from components.build.triton_hf import MODEL_FILE, HfModelSettings, render_model_config
from components.model_source import ModelSourceError
from components.prompt import PROMPT_TEMPLATE
from components.sample.tiny_model import TinyModelConfig, build_tiny_model

ModelConfig = model_config_pb2.ModelConfig
DataType = model_config_pb2.DataType
Kind = model_config_pb2.ModelInstanceGroup.Kind


def parse_config(text: str):
    return text_format.Parse(text, ModelConfig())


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    output = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(TinyModelConfig(output=str(output)))
    return str(output)


@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory):
    output = tmp_path_factory.mktemp("build") / "repository"
    return build(BuildConfig(model=tiny_model, output=str(output))), output


def test_config_pbtxt_parses_as_triton_model_config(built, tiny_model):
    _, output = built
    config = parse_config((output / "llm" / "config.pbtxt").read_text(encoding="utf-8"))

    assert config.name == "llm"
    assert config.backend == "python"
    assert config.max_batch_size == 8
    inputs = {tensor.name: tensor for tensor in config.input}
    assert list(inputs) == ["text_input", "max_tokens", "temperature"]
    assert inputs["text_input"].data_type == DataType.TYPE_STRING
    assert not inputs["text_input"].optional
    assert inputs["max_tokens"].data_type == DataType.TYPE_INT32
    assert inputs["max_tokens"].optional
    assert inputs["temperature"].data_type == DataType.TYPE_FP32
    assert inputs["temperature"].optional
    assert all(list(tensor.dims) == [1] for tensor in inputs.values())
    [output_tensor] = config.output
    assert (output_tensor.name, output_tensor.data_type, list(output_tensor.dims)) == (
        "text_output",
        DataType.TYPE_STRING,
        [1],
    )
    [group] = config.instance_group
    assert (group.count, group.kind) == (1, Kind.KIND_AUTO)
    assert config.HasField("dynamic_batching")
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["prompt_template"] == PROMPT_TEMPLATE
    assert parameters["max_new_tokens"] == "64"
    assert parameters["device"] == "auto"
    assert parameters["source_digest"] == storage.read_manifest(tiny_model).digest


def test_repository_layout_and_manifest(built, tiny_model):
    result, output = built
    version = output / "llm" / "1"
    assert (version / "model.py").read_bytes() == MODEL_FILE.read_bytes()
    checkpoint = {path.name for path in (version / "checkpoint").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= checkpoint
    assert storage.MANIFEST_NAME not in checkpoint  # only the repository's own manifest

    manifest = storage.require_complete(str(output))
    assert result.manifest_digest == manifest.digest
    assert manifest.producer == "llmft.build"
    assert manifest.metadata["serving_mode"] == "hf"
    assert manifest.metadata["source_digest"] == storage.read_manifest(tiny_model).digest
    assert result.metadata == manifest.metadata
    assert (result.repository, result.model_name, result.serving_mode) == (str(output), "llm", "hf")
    assert (result.dry_run, result.plan) == (False, "")
    assert str(output) in result.summary()
    assert not (output / "engine_metadata.json").exists()  # only the TensorRT-LLM modes have one


@pytest.mark.parametrize(
    ("device", "kind"), [("cpu", Kind.KIND_CPU), ("cuda", Kind.KIND_GPU), ("auto", Kind.KIND_AUTO)]
)
def test_settings_reach_config(device, kind):
    template = 'System says "hi" \\ tab\there\n{prompt}\n– ünïcode ✓\n'
    settings = HfModelSettings(
        model_name="chat-1",
        max_new_tokens=7,
        max_batch_size=0,
        instance_count=3,
        device=device,
        prompt_template=template,
        context_length=256,
    )
    config = parse_config(render_model_config(settings))
    assert config.name == "chat-1"
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")  # no batcher without batching
    assert (config.instance_group[0].count, config.instance_group[0].kind) == (3, kind)
    assert config.parameters["prompt_template"].string_value == template
    assert config.parameters["max_new_tokens"].string_value == "7"


def test_pbtxt_writer_round_trips_through_protobuf():
    text = to_pbtxt(
        {
            "name": "m",
            "max_batch_size": 4,
            "input": [{"name": "a", "data_type": Ident("TYPE_FP32"), "dims": [-1, 2], "optional": True}],
            "output": [],
            "optimization": None,
            "sequence_batching": {"max_sequence_idle_microseconds": 5},
            "parameters": map_entries({"b": {"string_value": "\x01\r"}, "a": {"string_value": ""}}),
        }
    )
    config = parse_config(text)
    assert list(config.input[0].dims) == [-1, 2]
    assert config.sequence_batching.max_sequence_idle_microseconds == 5
    assert config.parameters["b"].string_value == "\x01\r"
    assert text.index('key: "a"') < text.index('key: "b"')  # maps are written sorted
    with pytest.raises(TypeError):
        to_pbtxt({"name": object()})
    assert quote('a"b\\c\n') == '"a\\"b\\\\c\\n"'


def test_fp8_needs_the_engine_mode():
    BuildConfig(model="m", output="o", serving_mode="trtllm-engine", quantization="fp8")
    with pytest.raises(ValidationError, match="quantization='fp8' needs serving_mode='trtllm-engine'"):
        BuildConfig(model="m", output="o", quantization="fp8")
    with pytest.raises(ValidationError, match="PyTorch backend quantizes nothing"):
        BuildConfig(model="m", output="o", serving_mode="trtllm-llmapi", quantization="fp8")
    with pytest.raises(ValidationError, match="quantization"):
        BuildConfig(model="m", output="o", quantization="int3")


def test_incomplete_model_is_refused(tiny_model, tmp_path):
    # A plain checkpoint needs no manifest, but it must be whole: a truncated weights file is named.
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / storage.MANIFEST_NAME).unlink()
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(ModelSourceError, match=r"model\.safetensors is truncated"):
        build(BuildConfig(model=str(model), output=str(tmp_path / "repository")))
    assert not (tmp_path / "repository").exists()


def test_output_rules(tiny_model, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="not an llmft build"):
        build(BuildConfig(model=tiny_model, output=str(foreign)))
    assert (foreign / "notes.txt").read_text() == "mine"

    # A rebuild replaces an earlier build, renamed model included.
    output = tmp_path / "repository"
    build(BuildConfig(model=tiny_model, output=str(output), model_name="first"))
    result = build(BuildConfig(model=tiny_model, output=str(output), model_name="second", device="cpu"))
    assert sorted(path.name for path in output.iterdir() if path.is_dir()) == ["second"]
    assert storage.require_complete(str(output)).digest == result.manifest_digest


def test_config_validation(tiny_model):
    with pytest.raises(ValidationError, match="prompt"):
        BuildConfig(model=tiny_model, output="x", prompt_template="no placeholder")
    with pytest.raises(ValidationError, match="prompt_template"):
        BuildConfig(model=tiny_model, output="x", prompt_template="{prompt} {other}")
    with pytest.raises(ValidationError):
        BuildConfig(model=tiny_model, output="x", max_output_len=64)  # extra fields are forbidden
    with pytest.raises(ValidationError):
        BuildConfig(model=tiny_model, output="x", model_name="../escape")
    assert all(field.description for field in BuildConfig.model_fields.values())
    for group in (
        BuildConfig.model_fields["trtllm"].annotation,
        BuildConfig.model_fields["triton"].annotation,
    ):
        assert all(field.description for field in group.model_fields.values())


def test_model_file_is_shipped_with_the_package():
    assert MODEL_FILE.is_file()
    assert MODEL_FILE.parent == Path(__file__).resolve().parents[2] / "components" / "build"
    assert "class TritonPythonModel" in MODEL_FILE.read_text(encoding="utf-8")


def test_s3_model_to_s3_repository(tiny_model, s3_bucket):
    merged, repo = s3_bucket.uri("merged"), s3_bucket.uri("repo")
    storage.publish_dir(tiny_model, merged, producer="test")
    result = build(BuildConfig(model=merged, output=repo, model_name="a"))
    manifest = storage.require_complete(repo)
    assert manifest.digest == result.manifest_digest
    assert "a/1/checkpoint/model.safetensors" in {entry.path for entry in manifest.files}
    config = parse_config(storage.read_text(s3_bucket.uri("repo/a/config.pbtxt")))
    assert config.name == "a"
    # A rebuild under another name leaves no trace of the first model in the bucket.
    build(BuildConfig(model=merged, output=repo, model_name="b"))
    assert storage.list_dirs(repo) == ["b"]
