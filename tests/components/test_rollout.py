"""Rollout step: a real tritonserver (nvidia-pytriton wheel) on 127.0.0.1 serving the hf repository.

The tiny random model's generations are gibberish, but they come from the real path:
build -> config.pbtxt + model.py -> python backend stub -> transformers -> generate extension.
The kubernetes target is tested in test_rollout_kubernetes.py (flows) and
test_rollout_manifests.py (manifests, dry run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sysconfig
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from components import storage
from components.build.build import BuildConfig, build
from components.prompt import render_prompt
from components.rollout import local_triton
from components.rollout.rollout import RolloutConfig, RolloutError, _local_repository, rollout
from components.rollout.smoke import (
    SmokeTestError,
    generate_http,
    infer_grpc,
    smoke_test,
    stream_grpc,
    traits_from_config,
)
from components.sample.tiny_model import TinyModelConfig, build_tiny_model

STARTUP_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(TinyModelConfig(output=str(output)))
    return output


@pytest.fixture(scope="module")
def repository(tiny_model, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("build") / "repository"
    build(BuildConfig(model=str(tiny_model), output=str(output), max_new_tokens=12, device="cpu"))
    return output


@pytest.fixture(scope="module")
def served(repository, tmp_path_factory):
    """One server for the request tests, left running by keep_running and stopped at the end."""
    workdir = tmp_path_factory.mktemp("served")
    result = rollout(
        RolloutConfig(
            repository=str(repository),
            keep_running=True,
            workdir=str(workdir),
            startup_timeout_s=STARTUP_TIMEOUT_S,
        )
    )
    yield result
    local_triton.stop_from_info(workdir)


def _alive(pid: int) -> bool:
    return local_triton._is_tritonserver(pid)


def _generate(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/v2/models/llm/generate", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --- refusals: nothing is started --------------------------------------------------------


def test_kubernetes_target_refuses_an_incomplete_repository_before_anything(tmp_path):
    config = RolloutConfig(
        repository=str(tmp_path / "missing"), target="kubernetes", workdir=str(tmp_path / "w")
    )
    with pytest.raises(storage.IncompleteDirectoryError):
        rollout(config)
    assert not (tmp_path / "w").exists()


def test_incomplete_repository_is_refused(repository, tmp_path):
    incomplete = tmp_path / "repository"
    shutil.copytree(repository, incomplete)
    (incomplete / storage.MANIFEST_NAME).unlink()
    with pytest.raises(storage.IncompleteDirectoryError):
        rollout(RolloutConfig(repository=str(incomplete), workdir=str(tmp_path / "w")))
    assert not (tmp_path / "w").exists()


def test_unknown_model_and_trtllm_repository_are_refused(repository, tmp_path):
    with pytest.raises(RolloutError, match="no model 'other'"):
        rollout(RolloutConfig(repository=str(repository), model_name="other", workdir=str(tmp_path / "w")))
    engine_repo = tmp_path / "engine"
    (engine_repo / "llm").mkdir(parents=True)
    (engine_repo / "llm" / "config.pbtxt").write_text('backend: "tensorrtllm"\n')
    storage.publish_dir(engine_repo, str(engine_repo), "llmft.build", {"serving_mode": "trtllm-engine"})
    with pytest.raises(RolloutError, match="trtllm"):
        rollout(RolloutConfig(repository=str(engine_repo), workdir=str(tmp_path / "w")))
    assert not (tmp_path / "w").exists()


def test_server_environment_and_command_stay_on_loopback(tmp_path):
    dist = local_triton.pytriton_dist_dir()
    env = local_triton.server_env(dist, base={"LD_LIBRARY_PATH": "/x", "PATH": "/bin"})
    libdirs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libdirs[0] == sysconfig.get_config_var("LIBDIR")  # before any system libpython
    assert str(local_triton.pytriton_libs_dir(dist)) in libdirs and libdirs[-1] == "/x"
    assert sysconfig.get_paths()["purelib"] in env["PYTHONPATH"].split(os.pathsep)
    command = local_triton.server_command(Path("/srv"), tmp_path, 1234, 1235)
    assert "--http-address=127.0.0.1" in command and "--grpc-address=127.0.0.1" in command
    assert "--allow-metrics=false" in command
    assert not any("0.0.0.0" in part for part in command)


def test_stop_refuses_a_pid_that_is_not_tritonserver():
    assert local_triton.stop_local_server(os.getpid()) is False  # and this test is still alive


def test_model_load_failure_reports_the_server_log(repository, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(repository, broken)
    model_py = broken / "llm" / "1" / "model.py"
    model_py.write_text(model_py.read_text() + "\nraise RuntimeError('deliberately broken model')\n")
    storage.publish_dir(broken, str(broken), "llmft.build", {"serving_mode": "hf"})
    with pytest.raises(RolloutError, match="deliberately broken model") as info:
        rollout(RolloutConfig(repository=str(broken), workdir=str(tmp_path / "w"), startup_timeout_s=60))
    assert "exited with code" in str(info.value)


# --- one real server, left running ------------------------------------------------------


def test_rollout_keeps_server_running_and_reports_it(served):
    assert served.healthy and served.target == "local"
    assert served.endpoint_http.startswith("http://127.0.0.1:")
    assert served.endpoint_grpc.startswith("127.0.0.1:")
    assert isinstance(served.sample_output, str) and served.sample_output
    assert _alive(served.server_pid)
    info = local_triton.read_server_info(served.server_info)
    assert (info.pid, info.http_url, info.grpc_url) == (
        served.server_pid,
        served.endpoint_http,
        served.endpoint_grpc,
    )
    assert served.endpoint_http in served.summary() and served.sample_output in served.summary()


def test_generate_over_http_matches_local_greedy_decoding(served, tiny_model):
    """The server applies the training template and decodes greedily: same text as in-process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prompt = "Is this review positive or negative? the staff was rude"
    served_text = generate_http(served.endpoint_http, "llm", prompt, max_tokens=10)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ids = [tokenizer.bos_token_id, *tokenizer(render_prompt(prompt), add_special_tokens=False)["input_ids"]]
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([ids]), max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    new = output[0, len(ids) :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    assert served_text == tokenizer.decode(new, skip_special_tokens=True)


def test_generate_defaults_sampling_and_errors(served):
    status, body = _generate(served.endpoint_http, {"text_input": "hello"})
    assert status == 200 and isinstance(body["text_output"], str)  # max_new_tokens from config.pbtxt
    status, body = _generate(
        served.endpoint_http, {"text_input": "hello", "max_tokens": 4, "temperature": 0.8}
    )
    assert status == 200 and isinstance(body["text_output"], str)
    status, body = _generate(served.endpoint_http, {"text_input": "hello", "max_tokens": 0})
    assert status == 400 and "max_tokens" in body["error"]


def test_grpc_infer_returns_text(served):
    text = infer_grpc(served.endpoint_grpc, "llm", "Classify: the room was dirty", max_tokens=8)
    assert isinstance(text, str) and text


def test_grpc_stream_of_a_model_that_is_not_decoupled_is_one_final_response(served):
    prompt = "Classify: the room was dirty"
    text, pieces = stream_grpc(served.endpoint_grpc, "llm", prompt, max_tokens=8)
    assert pieces == 1
    assert text == generate_http(served.endpoint_http, "llm", prompt, max_tokens=8)  # greedy: same answer


def test_smoke_test_checks_the_answer(served):
    answer = generate_http(served.endpoint_http, "llm", "hello", max_tokens=6)
    result = smoke_test(
        served.endpoint_http, served.endpoint_grpc, "llm", "hello", 6, expect=f"^{re.escape(answer)}$"
    )
    assert not result.decoupled
    assert result.generate_output == result.http_infer_output == result.grpc_infer_output == answer
    assert result.stream_output == answer and result.stream_responses == 1
    with pytest.raises(SmokeTestError, match="does not match smoke_expect"):
        smoke_test(served.endpoint_http, served.endpoint_grpc, "llm", "hello", 6, expect="^positive$")


def test_batched_and_concurrent_requests(served):
    client = httpclient.InferenceServerClient(url=served.endpoint_http.removeprefix("http://"))
    try:
        prompts = np.array([[b"one"], [b"two two"], ["dr\xc3\xbci {x}".encode()]], dtype=np.object_)
        text = httpclient.InferInput("text_input", [3, 1], "BYTES")
        text.set_data_from_numpy(prompts)
        tokens = httpclient.InferInput("max_tokens", [3, 1], "INT32")
        tokens.set_data_from_numpy(np.array([[2], [5], [3]], dtype=np.int32))
        result = client.infer("llm", [text, tokens]).as_numpy("text_output")
        assert result.shape == (3, 1)
        assert all(isinstance(item.decode("utf-8"), str) for item in result.ravel())
    finally:
        client.close()

    # Concurrent requests reach the dynamic batcher together; each gets its own answer.
    outputs: dict[int, str] = {}
    errors: list[BaseException] = []

    def call(index: int) -> None:
        try:
            outputs[index] = generate_http(served.endpoint_http, "llm", f"request {index}", max_tokens=6)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and sorted(outputs) == list(range(6))


def test_second_server_in_a_busy_workdir_is_refused(served, repository):
    with pytest.raises(local_triton.LocalServerError, match="still runs"):
        local_triton.start_local_server(repository, Path(served.server_info).parent)


# --- a rollout that stops its server ------------------------------------------------------


def test_rollout_stops_the_server_after_the_smoke_test(repository, tmp_path):
    result = rollout(
        RolloutConfig(repository=str(repository), workdir=str(tmp_path), startup_timeout_s=STARTUP_TIMEOUT_S)
    )
    assert result.healthy
    assert isinstance(result.sample_output, str) and result.sample_output
    assert result.server_info is None
    assert not _alive(result.server_pid)
    assert not (tmp_path / "server.json").exists()
    assert not (tmp_path / local_triton.SERVER_DIRNAME).exists()  # the server copy is cleaned up
    assert "successfully loaded 'llm'" in Path(result.log_path).read_text()


def test_request_shapes_follow_the_model_config():
    # Triton's JSON config: max_batch_size left out when 0, int64 dims written as strings.
    unbatched = traits_from_config(
        {"input": [{"name": "text_input", "dims": ["1"]}, {"name": "max_tokens", "dims": ["-1"]}]}
    )
    assert unbatched.max_batch_size == 0
    assert unbatched.shape("text_input") == unbatched.shape("max_tokens") == [1]
    batched = traits_from_config({"max_batch_size": 8, "input": [{"name": "text_input", "dims": ["1"]}]})
    assert batched.shape("text_input") == [1, 1]


def test_model_without_batching_passes_the_smoke_test(tiny_model, tmp_path):
    # max_batch_size 0 (as trtllm-llmapi's model): Triton core takes only [1]-shaped inputs, no
    # batch dimension; a [1, 1] request is refused, so the smoke test must shape from the config.
    repository = tmp_path / "repository"
    build(
        BuildConfig(
            model=str(tiny_model), output=str(repository), max_new_tokens=12, max_batch_size=0, device="cpu"
        )
    )
    workdir = tmp_path / "server"
    result = rollout(
        RolloutConfig(
            repository=str(repository),
            workdir=str(workdir),
            keep_running=True,
            startup_timeout_s=STARTUP_TIMEOUT_S,
        )
    )
    try:
        assert result.healthy and result.sample_output
        smoke = smoke_test(result.endpoint_http, result.endpoint_grpc, "llm", "hello", 6)
        assert not smoke.decoupled
        assert smoke.generate_output == smoke.http_infer_output == smoke.grpc_infer_output
        assert smoke.stream_output == smoke.generate_output and smoke.stream_responses == 1
        assert infer_grpc(result.endpoint_grpc, "llm", "hello", 6) == smoke.generate_output
        # What the smoke test sent before: Triton refuses a batch dimension here.
        client = httpclient.InferenceServerClient(url=result.endpoint_http.removeprefix("http://"))
        try:
            text = httpclient.InferInput("text_input", [1, 1], "BYTES")
            text.set_data_from_numpy(np.array([[b"hello"]], dtype=np.object_))
            with pytest.raises(Exception, match="shape"):
                client.infer("llm", [text])
        finally:
            client.close()
    finally:
        local_triton.stop_from_info(workdir)


def test_s3_repository_is_downloaded_for_the_local_target(repository, tmp_path, monkeypatch, s3_bucket):
    monkeypatch.setenv("LLMFT_CACHE", str(tmp_path))
    manifest = storage.read_manifest(str(repository))
    storage.publish_dir(repository, s3_bucket.uri("repo"), manifest.producer, manifest.metadata)
    local = _local_repository(RolloutConfig(repository=s3_bucket.uri("repo")))
    assert local != repository and local.is_relative_to(tmp_path)
    assert (local / "llm" / "1" / "model.py").read_bytes() == (repository / "llm/1/model.py").read_bytes()


# --- a decoupled model: answers in pieces, served only through streams ------------------------------

# Test-only: the build's hf model.py (copied beside this file as hf_model.py; the python backend puts the
# version directory on sys.path), generating exactly as it does but answering in word-sized pieces, the
# way a decoupled TRT-LLM model streams. It exercises the smoke test's streaming path on a real server.
DECOUPLED_MODEL = """
import re

import numpy as np
import triton_python_backend_utils as pb_utils

from hf_model import TritonPythonModel as HfModel


class TritonPythonModel(HfModel):
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            prompt = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().ravel()[0].decode()
            tokens = pb_utils.get_input_tensor_by_name(request, "max_tokens")
            max_tokens = int(tokens.as_numpy().ravel()[0]) if tokens is not None else self.default_max_tokens
            text = self._generate_text(prompt, max_tokens, 0.0)
            for piece in re.findall(r"\\S+\\s*|\\s+", text):
                output = pb_utils.Tensor("text_output", np.array([[piece.encode()]], dtype=np.object_))
                sender.send(pb_utils.InferenceResponse(output_tensors=[output]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
"""


def test_decoupled_model_is_smoke_tested_through_streams(repository, served, tmp_path):
    decoupled = tmp_path / "decoupled"
    shutil.copytree(repository, decoupled)
    version = decoupled / "llm" / "1"
    (version / "model.py").rename(version / "hf_model.py")
    (version / "model.py").write_text(DECOUPLED_MODEL)
    config = decoupled / "llm" / "config.pbtxt"
    config.write_text(config.read_text() + "\nmodel_transaction_policy { decoupled: true }\n")
    storage.publish_dir(decoupled, str(decoupled), "llmft.build", {"serving_mode": "hf"})

    prompt = "Which topic is this text about: the band played a new song."
    expected = generate_http(
        served.endpoint_http, "llm", prompt, max_tokens=12
    )  # same weights, not decoupled
    workdir = tmp_path / "server"
    result = rollout(
        RolloutConfig(
            repository=str(decoupled),
            workdir=str(workdir),
            smoke_prompt=prompt,
            smoke_max_tokens=12,
            smoke_expect=f"^{re.escape(expected)}$",
            keep_running=True,
            startup_timeout_s=STARTUP_TIMEOUT_S,
        )
    )
    try:
        assert result.sample_output == expected and result.stream_output == expected
        text, pieces = stream_grpc(result.endpoint_grpc, "llm", prompt, max_tokens=12)
        assert text == expected and pieces == len(re.findall(r"\S+\s*|\s+", expected)) > 1
        # Triton refuses unary calls to a decoupled model: that is why the smoke test streams.
        with pytest.raises(Exception, match="decoupled"):
            infer_grpc(result.endpoint_grpc, "llm", prompt, max_tokens=4)
    finally:
        local_triton.stop_from_info(workdir)
