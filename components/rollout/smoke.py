"""Smoke test of a served generate-able model, over HTTP and gRPC, with tritonclient.

Checks, in order: server live and ready, model ready (polled for up to `ready_timeout_s`:
behind a freshly updated Service the endpoints may lag a moment), then the model's config
decides the calls:
- a model that is not decoupled (the hf python backend, the TRT-LLM ensemble without
  streaming): the generate extension (`POST /v2/models/<name>/generate`; tritonclient has no
  helper for it, so a plain HTTP POST), a KServe v2 infer over HTTP, one over gRPC, and one
  over a gRPC stream;
- a decoupled model (one response per piece of text): Triton serves it only through
  streaming calls, so `POST /v2/models/<name>/generate_stream` (server-sent events) and a
  gRPC stream.
Every call must return non-empty text: a model that answers nothing is not healthy. When
`expect` is given, the generate answer must match that regular expression (searched,
case-insensitive): that is how a rollout checks the model says the right thing, not just
something.

Streaming: a decoupled model answers with one response per piece and a last, empty one
flagged `triton_final_response`; a model that is not decoupled answers with one complete
response, also flagged final. The client asks for that flag (`enable_empty_final_response`)
and reads until it comes, so both kinds are handled the same way. A model with a BOOL
`stream` input (the TRT-LLM ensemble) gets `stream=True`.

The tensors are the ones every llmft serving mode exposes: `text_input` (BYTES),
`max_tokens` (INT32) -> `text_output` (BYTES). Their shapes come from the model's config: Triton
core refuses a request whose shape differs from the config's dims, with a leading batch dimension
only when max_batch_size > 0 (so `[1, 1]` for a batching model, `[1]` for one with
max_batch_size 0, such as trtllm-llmapi).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)


class SmokeTestError(RuntimeError):
    """The served model failed a smoke check."""


class SmokeResult(BaseModel):
    prompt: str = Field(description="Instruction sent (raw: the server applies the prompt template).")
    generate_output: str = Field(description="text_output of the generate endpoint.")
    http_infer_output: str | None = Field(
        description="text_output of an HTTP infer call (None: decoupled model, which Triton serves only "
        "through streams)."
    )
    grpc_infer_output: str | None = Field(description="text_output of a gRPC infer call (None: decoupled).")
    decoupled: bool = Field(description="The model is decoupled (answers in pieces).")
    stream_output: str = Field(description="text_output pieces of a gRPC stream request, joined.")
    stream_responses: int = Field(description="Responses with text the stream sent (1 unless decoupled).")
    seconds: float = Field(description="Wall time of the whole smoke test.")


def _host_port(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def _text(value: object, what: str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str) or not value:
        raise SmokeTestError(f"{what} returned no text: {value!r}")
    return value


class ModelTraits(BaseModel):
    """What in a model's config changes how it is called."""

    decoupled: bool = Field(description="model_transaction_policy.decoupled: answers in several responses.")
    stream_input: bool = Field(description="Has a `stream` input (the TRT-LLM ensemble): sent as true.")
    max_batch_size: int = Field(
        ge=0, description="Triton max_batch_size; above 0 every input gets a batch dimension."
    )
    input_dims: dict[str, tuple[int, ...]] = Field(
        default_factory=dict,
        description="dims of each input as the config declares them (no batch dimension; -1: variable).",
    )

    def shape(self, name: str) -> list[int]:
        """Shape of a one-row request for input `name`: one element, in the rank the config expects."""
        dims = self.input_dims.get(name, (1,))
        # A variable dim (-1) holds the one element; a fixed one is 1 for every llmft request input.
        one_row = [1 for _ in dims]
        return [1, *one_row] if self.max_batch_size > 0 else one_row


def traits_from_config(config: dict[str, Any]) -> ModelTraits:
    """ModelTraits of a model config in protobuf's JSON mapping (what Triton's config endpoints return)."""
    inputs = config.get("input", [])
    return ModelTraits(
        decoupled=bool((config.get("model_transaction_policy") or {}).get("decoupled", False)),
        stream_input=any(spec.get("name") == "stream" for spec in inputs),
        # The JSON mapping leaves out fields at their default, so a missing max_batch_size is 0.
        max_batch_size=int(config.get("max_batch_size", 0)),
        # Dims are int64, which the JSON mapping may write as strings.
        input_dims={spec["name"]: tuple(int(dim) for dim in spec.get("dims", [])) for spec in inputs},
    )


def model_traits(http_url: str, model_name: str, timeout_s: float = 30) -> ModelTraits:
    """ModelTraits from `GET /v2/models/<name>/config`."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(
        url=_host_port(http_url), connection_timeout=timeout_s, network_timeout=timeout_s
    )
    try:
        config = client.get_model_config(model_name)
    finally:
        client.close()
    return traits_from_config(config)


def _grpc_model_traits(client: Any, model_name: str, timeout_s: float) -> ModelTraits:
    """ModelTraits over gRPC (ModelConfig RPC), for callers that reach the server only there."""
    response = client.get_model_config(model_name, as_json=True, client_timeout=timeout_s)
    return traits_from_config(response["config"])


def _generate_body(prompt: str, max_tokens: int, stream_input: bool) -> bytes:
    body: dict[str, Any] = {"text_input": prompt, "max_tokens": max_tokens}
    if stream_input:
        body["stream"] = True
    return json.dumps(body).encode("utf-8")


def generate_stream_http(
    http_url: str,
    model_name: str,
    prompt: str,
    max_tokens: int,
    timeout_s: float = 60,
    stream_input: bool = False,
) -> str:
    """Call `generate_stream` (server-sent events, one per piece); return the pieces joined."""
    request = urllib.request.Request(
        f"http://{_host_port(http_url)}/v2/models/{model_name}/generate_stream",
        data=_generate_body(prompt, max_tokens, stream_input),
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        method="POST",
    )
    pieces: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            for raw in response:  # ends when the server closes the stream after the last event
                if time.monotonic() > deadline:  # the socket timeout bounds each read, this the whole
                    raise SmokeTestError(f"generate_stream did not finish within {timeout_s:.0f} s")
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line.removeprefix("data:"))
                if "error" in event:
                    raise SmokeTestError(f"generate_stream failed: {event['error']}")
                pieces.append(str(event.get("text_output", "")))
    except urllib.error.HTTPError as exc:
        raise SmokeTestError(
            f"generate_stream failed with HTTP {exc.code}: {exc.read().decode(errors='replace')}"
        ) from exc
    return _text("".join(pieces), "generate_stream")


def generate_http(http_url: str, model_name: str, prompt: str, max_tokens: int, timeout_s: float = 60) -> str:
    """Call the generate extension; return text_output."""
    body = json.dumps({"text_input": prompt, "max_tokens": max_tokens}).encode("utf-8")
    request = urllib.request.Request(
        f"http://{_host_port(http_url)}/v2/models/{model_name}/generate",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise SmokeTestError(
            f"generate failed with HTTP {exc.code}: {exc.read().decode(errors='replace')}"
        ) from exc
    if "text_output" not in payload:
        raise SmokeTestError(f"generate response has no text_output: {payload}")
    return _text(payload["text_output"], "generate")


def _infer_input(module, traits: ModelTraits, name: str, value: object, datatype: str, dtype) -> Any:
    shape = traits.shape(name)
    tensor = module.InferInput(name, shape, datatype)
    tensor.set_data_from_numpy(np.array([value], dtype=dtype).reshape(shape))
    return tensor


def _infer_inputs(module, traits: ModelTraits, prompt: str, max_tokens: int) -> list:
    return [
        _infer_input(module, traits, "text_input", prompt.encode("utf-8"), "BYTES", np.object_),
        _infer_input(module, traits, "max_tokens", max_tokens, "INT32", np.int32),
    ]


def infer_http(
    http_url: str,
    model_name: str,
    prompt: str,
    max_tokens: int,
    timeout_s: float = 60,
    traits: ModelTraits | None = None,
) -> str:
    """One KServe v2 infer over HTTP, shaped after `traits` (read from the server when None)."""
    import tritonclient.http as httpclient

    traits = traits or model_traits(http_url, model_name, timeout_s)

    client = httpclient.InferenceServerClient(
        url=_host_port(http_url), connection_timeout=timeout_s, network_timeout=timeout_s
    )
    try:
        result = client.infer(
            model_name,
            _infer_inputs(httpclient, traits, prompt, max_tokens),
            outputs=[httpclient.InferRequestedOutput("text_output")],
        )
        return _text(result.as_numpy("text_output").ravel()[0], "HTTP infer")
    finally:
        client.close()


def infer_grpc(
    grpc_url: str,
    model_name: str,
    prompt: str,
    max_tokens: int,
    timeout_s: float = 60,
    traits: ModelTraits | None = None,
) -> str:
    """One KServe v2 infer over gRPC, shaped after `traits` (read over gRPC when None)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=_host_port(grpc_url))
    try:
        if not client.is_model_ready(model_name, client_timeout=timeout_s):
            raise SmokeTestError(f"model {model_name} is not ready over gRPC")
        traits = traits or _grpc_model_traits(client, model_name, timeout_s)
        result = client.infer(
            model_name,
            _infer_inputs(grpcclient, traits, prompt, max_tokens),
            outputs=[grpcclient.InferRequestedOutput("text_output")],
            client_timeout=timeout_s,
        )
        return _text(result.as_numpy("text_output").ravel()[0], "gRPC infer")
    finally:
        client.close()


def stream_grpc(
    grpc_url: str,
    model_name: str,
    prompt: str,
    max_tokens: int,
    timeout_s: float = 60,
    traits: ModelTraits | None = None,
) -> tuple[str, int]:
    """Send one request over a gRPC stream; return the joined text and how many responses carried text.

    The request is shaped after `traits` (read over gRPC when None); a model with a `stream` input
    gets stream=true.
    """
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=_host_port(grpc_url))
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    try:
        traits = traits or _grpc_model_traits(client, model_name, timeout_s)
        inputs = _infer_inputs(grpcclient, traits, prompt, max_tokens)
        if traits.stream_input:
            inputs.append(_infer_input(grpcclient, traits, "stream", True, "BOOL", bool))
        client.start_stream(
            callback=lambda result, error: responses.put((result, error)), stream_timeout=timeout_s
        )
        client.async_stream_infer(
            model_name,
            inputs,
            request_id="llmft-smoke",
            outputs=[grpcclient.InferRequestedOutput("text_output")],
            enable_empty_final_response=True,
        )
        pieces: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:  # bounded: every wait below ends at the deadline
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SmokeTestError(f"gRPC stream sent no final response within {timeout_s:.0f} s")
            try:
                result, error = responses.get(timeout=remaining)
            except queue.Empty:
                continue
            if error is not None:
                raise SmokeTestError(f"gRPC stream request failed: {error}")
            output = result.as_numpy("text_output")
            for item in output.ravel() if output is not None else ():
                # A piece may be empty (a token that completes no character yet); the whole may not.
                piece = item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
                if piece:
                    pieces.append(piece)
            final = result.get_response().parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                break
        if not pieces:
            raise SmokeTestError("gRPC stream returned no text")
        return "".join(pieces), len(pieces)
    finally:
        client.stop_stream()
        client.close()


def check_health(http_url: str, model_name: str, timeout_s: float = 10) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(
        url=_host_port(http_url), connection_timeout=timeout_s, network_timeout=timeout_s
    )
    try:
        if not client.is_server_live():
            raise SmokeTestError(f"server at {http_url} is not live")
        if not client.is_server_ready():
            raise SmokeTestError(f"server at {http_url} is not ready")
        if not client.is_model_ready(model_name):
            raise SmokeTestError(f"model {model_name} is not ready at {http_url}")
    finally:
        client.close()


def wait_for_health(http_url: str, model_name: str, timeout_s: float, poll_s: float = 1.0) -> None:
    """`check_health` until it passes or `timeout_s` ends; then raise its last error."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check_health(http_url, model_name)
            return
        except Exception as error:  # connection refused, 503, not ready: all worth another look
            if time.monotonic() + poll_s >= deadline:
                raise SmokeTestError(
                    f"server at {http_url} or model {model_name} not ready within {timeout_s:.0f} s: {error}"
                ) from error
        time.sleep(poll_s)


def check_expected(answer: str, expect: str | None) -> None:
    """Fail unless `answer` matches the regular expression `expect` (searched, case-insensitive)."""
    if expect is not None and re.search(expect, answer, flags=re.IGNORECASE) is None:
        raise SmokeTestError(f"generate answered {answer!r}, which does not match smoke_expect {expect!r}")


def smoke_test(
    http_url: str,
    grpc_url: str,
    model_name: str,
    prompt: str,
    max_tokens: int = 16,
    timeout_s: float = 60,
    expect: str | None = None,
    ready_timeout_s: float = 10,
) -> SmokeResult:
    """Run every check; raise SmokeTestError (or the client's error) on the first failure."""
    started = time.monotonic()
    wait_for_health(http_url, model_name, ready_timeout_s)
    traits = model_traits(http_url, model_name)
    http_output = grpc_output = None
    if traits.decoupled:
        generated = generate_stream_http(
            http_url, model_name, prompt, max_tokens, timeout_s, traits.stream_input
        )
        log.info("generate_stream over HTTP: %r", generated)
        check_expected(generated, expect)
    else:
        generated = generate_http(http_url, model_name, prompt, max_tokens, timeout_s)
        log.info("generate over HTTP: %r", generated)
        check_expected(generated, expect)
        http_output = infer_http(http_url, model_name, prompt, max_tokens, timeout_s, traits)
        grpc_output = infer_grpc(grpc_url, model_name, prompt, max_tokens, timeout_s, traits)
        log.info("infer over gRPC: %r", grpc_output)
    stream_output, pieces = stream_grpc(grpc_url, model_name, prompt, max_tokens, timeout_s, traits)
    log.info("gRPC stream: %d response(s): %r", pieces, stream_output)
    return SmokeResult(
        prompt=prompt,
        generate_output=generated,
        http_infer_output=http_output,
        grpc_infer_output=grpc_output,
        decoupled=traits.decoupled,
        stream_output=stream_output,
        stream_responses=pieces,
        seconds=time.monotonic() - started,
    )
