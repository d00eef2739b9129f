"""Request limits of the served model: hostile requests get a clear 400, and the server keeps serving.

The hf repository of the tiny model (context 256 tokens) runs in the real tritonserver of the
nvidia-pytriton wheel on 127.0.0.1. Before the limits, max_tokens of 10^8 was accepted, a 1 MB
prompt ran for minutes and a 10 MB one crashed the server. The TensorRT-LLM modes' python models
share the checks (llmft_triton_utils): they are tested here by contract, and the ensemble's
preprocessing model in a real server too.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from components.build import triton_python_utils as utils
from components.build.build import BuildConfig, BuildError, build
from components.build.triton_hf import ContextLengthError, context_length
from components.build.triton_llmapi import LlmapiSettings, llmapi_config
from components.build.triton_trtllm import EnsembleSettings, model_configs
from components.build.trtllm_settings import TritonTrtllmSettings, TrtllmSettings
from components.rollout import local_triton
from components.sample.tiny_model import TinyModelConfig, build_tiny_model

CONTEXT = TinyModelConfig(output="").max_positions  # 256
REQUEST_TIMEOUT_S = 60
STARTUP_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(TinyModelConfig(output=str(output)))
    return output


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    repository = tmp_path_factory.mktemp("build") / "repository"
    build(BuildConfig(model=str(tiny_model), output=str(repository), max_new_tokens=12, device="cpu"))
    started = local_triton.start_local_server(repository, tmp_path_factory.mktemp("server"))
    try:
        local_triton.wait_until_ready(started, "llm", STARTUP_TIMEOUT_S)
        yield started
    finally:
        local_triton.stop_local_server(started.info.pid)


def _generate(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/v2/models/llm/generate", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _parameters(config_pbtxt: Path) -> dict[str, str]:
    config = text_format.Parse(config_pbtxt.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    return {key: value.string_value for key, value in config.parameters.items()}


def _words(count: int) -> str:
    return " ".join(f"w{index}" for index in range(count))


# (request body, words the 400 error must contain)
HOSTILE_REQUESTS = {
    "max_tokens 10^8": ({"text_input": "hi", "max_tokens": 10**8}, "max_tokens_limit"),
    "max_tokens 10^10 (wraps in INT32)": ({"text_input": "hi", "max_tokens": 10**10}, "max_tokens"),
    "max_tokens above the context": ({"text_input": "hi", "max_tokens": CONTEXT}, "limit of 255"),
    "prompt longer than the context": ({"text_input": _words(400)}, "max_input_len"),
    "prompt + max_tokens over the context": (
        {"text_input": _words(20), "max_tokens": 250},
        "exceeds max_seq_len (256)",
    ),
    "2 MB prompt": ({"text_input": "ab " * 700_000}, "bytes"),
    "empty prompt": ({"text_input": ""}, "empty"),
    "whitespace prompt": ({"text_input": " \n\t "}, "empty"),
    "negative max_tokens": ({"text_input": "hi", "max_tokens": -5}, "at least 1"),
    "zero max_tokens": ({"text_input": "hi", "max_tokens": 0}, "at least 1"),
    "max_tokens as a list": ({"text_input": "hi", "max_tokens": [1, 2, 3]}, "batch size"),
    "temperature overflowing float32": ({"text_input": "hi", "temperature": 1e39}, "temperature"),
    "negative temperature": ({"text_input": "hi", "temperature": -1}, "temperature"),
}


@pytest.mark.parametrize("case", list(HOSTILE_REQUESTS))
def test_hostile_request_is_a_clear_400_and_the_server_goes_on(server, case):
    body, expected = HOSTILE_REQUESTS[case]
    status, answer = _generate(server.info.http_url, body)
    assert status == 400, answer
    assert expected in answer["error"], answer["error"]
    assert "Traceback" not in answer["error"]
    status, answer = _generate(server.info.http_url, {"text_input": "hello", "max_tokens": 4})
    assert status == 200 and isinstance(answer["text_output"], str)
    assert server.process.poll() is None


# The generate endpoint of tritonserver 2.51 (the pytriton wheel) parses JSON values into the
# declared types itself and answers a mismatch with HTTP 500 and a clear message, before any model
# code runs; newer servers answer 400. The infer API refuses a wrong datatype with 400.
WRONG_JSON_TYPES = {
    "max_tokens as text": ({"text_input": "hi", "max_tokens": "many"}, "signed-integer"),
    "text_input as a number": ({"text_input": 12345}, "non-string"),
}


@pytest.mark.parametrize("case", list(WRONG_JSON_TYPES))
def test_wrong_json_type_is_refused_by_triton_with_its_reason(server, case):
    body, expected = WRONG_JSON_TYPES[case]
    status, answer = _generate(server.info.http_url, body)
    assert status in (400, 500) and expected in answer["error"], answer
    status, answer = _generate(server.info.http_url, {"text_input": "hello", "max_tokens": 4})
    assert status == 200 and server.process.poll() is None


def test_wrong_datatype_is_a_400(server):
    client = httpclient.InferenceServerClient(
        url=server.info.http_url.removeprefix("http://"), network_timeout=REQUEST_TIMEOUT_S
    )
    try:
        text = httpclient.InferInput("text_input", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"hi"]], dtype=np.object_))
        tokens = httpclient.InferInput("max_tokens", [1, 1], "FP32")
        tokens.set_data_from_numpy(np.array([[4.5]], dtype=np.float32))
        with pytest.raises(InferenceServerException, match="max_tokens") as error:
            client.infer("llm", [text, tokens])
        assert error.value.status() == "400"
    finally:
        client.close()


def test_largest_allowed_request_is_served(server):
    status, answer = _generate(server.info.http_url, {"text_input": "hi", "max_tokens": 4})
    assert status == 200
    # A prompt just inside the byte limit is tokenized and then judged by its tokens.
    prompt = "a" * (utils.prompt_byte_limit(CONTEXT - 1) - 16)
    status, answer = _generate(server.info.http_url, {"text_input": prompt, "max_tokens": 1})
    assert status in (200, 400), answer
    if status == 400:
        assert "max_input_len" in answer["error"] or "max_seq_len" in answer["error"]


def test_invalid_utf8_and_batch_neighbours(server):
    client = httpclient.InferenceServerClient(
        url=server.info.http_url.removeprefix("http://"), network_timeout=REQUEST_TIMEOUT_S
    )
    try:
        text = httpclient.InferInput("text_input", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"\xff\xfe broken"]], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="not valid UTF-8") as error:
            client.infer("llm", [text])
        assert error.value.status() == "400"
        # One bad row refuses its request only; a good request right after is answered.
        rows = httpclient.InferInput("text_input", [2, 1], "BYTES")
        rows.set_data_from_numpy(np.array([[b"fine"], [b""]], dtype=np.object_))
        with pytest.raises(InferenceServerException, match="row 1 is empty"):
            client.infer("llm", [rows])
        good = httpclient.InferInput("text_input", [1, 1], "BYTES")
        good.set_data_from_numpy(np.array([[b"fine"]], dtype=np.object_))
        assert client.infer("llm", [good]).as_numpy("text_output").shape == (1, 1)
    finally:
        client.close()


def test_grpc_refusal_is_invalid_argument(server):
    client = grpcclient.InferenceServerClient(url=server.info.grpc_url)
    try:
        text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"hi"]], dtype=np.object_))
        tokens = grpcclient.InferInput("max_tokens", [1, 1], "INT32")
        tokens.set_data_from_numpy(np.array([[10**8]], dtype=np.int32))
        with pytest.raises(InferenceServerException, match="max_tokens_limit") as error:
            client.infer("llm", [text, tokens], client_timeout=REQUEST_TIMEOUT_S)
        assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        client.close()


# --- the limits written by build ------------------------------------------------------------------


def test_hf_build_writes_the_limits_from_the_context(server):
    parameters = _parameters(Path(server.info.repository) / "llm" / "config.pbtxt")
    assert (parameters["max_seq_len"], parameters["max_input_len"], parameters["max_tokens_limit"]) == (
        str(CONTEXT),
        str(CONTEXT - 1),
        str(CONTEXT - 1),
    )
    assert (Path(server.info.repository) / "llm" / "1" / "llmft_triton_utils.py").is_file()


def test_hf_build_refuses_limits_the_context_cannot_hold(tiny_model, tmp_path):
    with pytest.raises(BuildError, match=r"max_new_tokens \(256\) must be below the model's context length"):
        build(BuildConfig(model=str(tiny_model), output=str(tmp_path / "a"), max_new_tokens=256))
    with pytest.raises(BuildError, match=r"max_tokens_limit \(300\)"):
        build(BuildConfig(model=str(tiny_model), output=str(tmp_path / "b"), max_tokens_limit=300))
    with pytest.raises(BuildError, match=r"max_tokens_limit \(8\) must be at least max_new_tokens"):
        build(BuildConfig(model=str(tiny_model), output=str(tmp_path / "c"), max_tokens_limit=8))
    assert not any(tmp_path.iterdir())


def test_context_length_is_read_from_config_json(tmp_path):
    path = tmp_path / "config.json"
    for config, expected in (
        ({"max_position_embeddings": 4096}, 4096),
        ({"n_positions": 1024}, 1024),
        ({"text_config": {"max_position_embeddings": 8192}}, 8192),
    ):
        path.write_text(json.dumps(config))
        assert context_length(path) == expected
    for config in ({}, {"max_position_embeddings": True}, {"max_position_embeddings": "4096"}, [1]):
        path.write_text(json.dumps(config))
        with pytest.raises(ContextLengthError, match=r"config\.json"):
            context_length(path)
    path.write_text("{not json")
    with pytest.raises(ContextLengthError, match="cannot read"):
        context_length(path)


def test_configured_max_tokens_limit_reaches_the_served_model(tiny_model, tmp_path):
    output = tmp_path / "r"
    build(BuildConfig(model=str(tiny_model), output=str(output), max_new_tokens=12, max_tokens_limit=20))
    assert _parameters(output / "llm" / "config.pbtxt")["max_tokens_limit"] == "20"


# --- the TensorRT-LLM modes' models, by contract ------------------------------------------------


def test_trtllm_configs_carry_the_max_tokens_limit():
    trtllm = TrtllmSettings()
    llmapi = llmapi_config(
        LlmapiSettings(
            model_name="llm",
            max_batch_size=4,
            max_new_tokens=7,
            prompt_template="{prompt}",
            trtllm=trtllm,
            triton=TritonTrtllmSettings(),
        )
    )
    parameters = {entry["key"]: entry["value"]["string_value"] for entry in llmapi["parameters"]}
    assert parameters["max_tokens_limit"] == str(trtllm.max_seq_len - 1)
    ensemble = EnsembleSettings(
        model_name="llm",
        max_batch_size=4,
        max_new_tokens=7,
        max_input_len=100,
        max_seq_len=200,
        max_tokens_limit=50,
        prompt_template="{prompt}",
        triton=TritonTrtllmSettings(),
    )
    preprocessing = model_configs(ensemble)["preprocessing"]
    parameters = {entry["key"]: entry["value"]["string_value"] for entry in preprocessing["parameters"]}
    assert (parameters["max_tokens_limit"], parameters["max_input_len"]) == ("50", "100")


@pytest.mark.parametrize("mode", ["trtllm-engine", "trtllm-llmapi"])
def test_trtllm_max_tokens_limit_must_fit_max_seq_len(mode):
    with pytest.raises(ValueError, match=r"max_tokens_limit \(5000\).*below trtllm.max_seq_len"):
        BuildConfig(model="m", output="o", serving_mode=mode, max_tokens_limit=5000)


def test_request_limits_default_to_the_context():
    limits = utils.request_limits({"parameters": {"max_input_len": {"string_value": "100"}}}, max_seq_len=300)
    assert limits == utils.RequestLimits(max_input_len=100, max_seq_len=300, max_tokens_limit=299)
    assert limits.max_prompt_bytes == 1600


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([b"x" * 1601], "row 0 is 1601 bytes"),
        ([b"ok", b""], "row 1 is empty"),
        ([b"\xc3("], "not valid UTF-8"),
        ([], "no rows"),
    ],
)
def test_prompts_are_checked_before_tokenizing(rows, message):
    with pytest.raises(utils.RequestError, match=message):
        utils.prompts(np.array(rows, dtype=np.object_), max_bytes=1600)


def test_generation_args_and_lengths_name_the_limit():
    with pytest.raises(utils.RequestError, match=r"max_tokens 100000000 is above this model's limit of 99"):
        utils.check_generation_args([10**8], [0.0], max_tokens_limit=99)
    with pytest.raises(utils.RequestError, match="at least 1"):
        utils.check_generation_args([-1], [0.0], max_tokens_limit=99)
    with pytest.raises(utils.RequestError, match="temperature"):
        utils.check_generation_args([1], [float("nan")], max_tokens_limit=99)
    with pytest.raises(utils.RequestError, match=r"at most 10 \(max_input_len\)"):
        utils.check_lengths(11, 1, max_input_len=10, max_seq_len=20)
    with pytest.raises(utils.RequestError, match=r"exceeds max_seq_len \(20\)"):
        utils.check_lengths(10, 11, max_input_len=10, max_seq_len=20)


class _FakeTritonError:
    """pb_utils.TritonError's constructor and codes, as the python backend stub defines them."""

    INTERNAL, INVALID_ARG = 1, 3

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self.message, self.code = message, code


def test_client_mistakes_are_invalid_argument_and_the_rest_internal():
    pb_utils = type("pb_utils", (), {"TritonError": _FakeTritonError})
    refused = utils.triton_error(pb_utils, utils.RequestError("max_tokens must be at least 1"))
    assert (refused.code, refused.message) == (_FakeTritonError.INVALID_ARG, "max_tokens must be at least 1")
    assert utils.triton_error(pb_utils, ValueError("bad int")).code == _FakeTritonError.INVALID_ARG
    assert utils.triton_error(pb_utils, RuntimeError("CUDA OOM")).code == _FakeTritonError.INTERNAL
