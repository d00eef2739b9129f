"""Smoke test of a served generate-able model, over HTTP and gRPC, with tritonclient.

Checks, in order: server live and ready, model ready, a call to the generate extension
(`POST /v2/models/<name>/generate`; tritonclient has no helper for it, so a plain HTTP
POST), a KServe v2 infer over HTTP and one over gRPC. Every call must return non-empty
text: a model that answers nothing is not healthy.

The tensors are the ones every llmft serving mode exposes: `text_input` (BYTES [1, 1]),
`max_tokens` (INT32 [1, 1]) -> `text_output` (BYTES [1, 1]).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request

import numpy as np
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)


class SmokeTestError(RuntimeError):
    """The served model failed a smoke check."""


class SmokeResult(BaseModel):
    prompt: str = Field(description="Instruction sent (raw: the server applies the prompt template).")
    generate_output: str = Field(description="text_output of the generate endpoint.")
    http_infer_output: str = Field(description="text_output of an HTTP infer call.")
    grpc_infer_output: str = Field(description="text_output of a gRPC infer call.")
    seconds: float = Field(description="Wall time of the whole smoke test.")


def _host_port(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def _text(value: object, what: str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str) or not value:
        raise SmokeTestError(f"{what} returned no text: {value!r}")
    return value


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


def _infer_inputs(module, prompt: str, max_tokens: int) -> list:
    text = module.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[prompt.encode("utf-8")]], dtype=np.object_))
    tokens = module.InferInput("max_tokens", [1, 1], "INT32")
    tokens.set_data_from_numpy(np.array([[max_tokens]], dtype=np.int32))
    return [text, tokens]


def infer_http(http_url: str, model_name: str, prompt: str, max_tokens: int, timeout_s: float = 60) -> str:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(
        url=_host_port(http_url), connection_timeout=timeout_s, network_timeout=timeout_s
    )
    try:
        result = client.infer(
            model_name,
            _infer_inputs(httpclient, prompt, max_tokens),
            outputs=[httpclient.InferRequestedOutput("text_output")],
        )
        return _text(result.as_numpy("text_output").ravel()[0], "HTTP infer")
    finally:
        client.close()


def infer_grpc(grpc_url: str, model_name: str, prompt: str, max_tokens: int, timeout_s: float = 60) -> str:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=_host_port(grpc_url))
    try:
        if not client.is_model_ready(model_name, client_timeout=timeout_s):
            raise SmokeTestError(f"model {model_name} is not ready over gRPC")
        result = client.infer(
            model_name,
            _infer_inputs(grpcclient, prompt, max_tokens),
            outputs=[grpcclient.InferRequestedOutput("text_output")],
            client_timeout=timeout_s,
        )
        return _text(result.as_numpy("text_output").ravel()[0], "gRPC infer")
    finally:
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


def smoke_test(
    http_url: str, grpc_url: str, model_name: str, prompt: str, max_tokens: int = 16, timeout_s: float = 60
) -> SmokeResult:
    """Run every check; raise SmokeTestError (or the client's error) on the first failure."""
    started = time.monotonic()
    check_health(http_url, model_name)
    generated = generate_http(http_url, model_name, prompt, max_tokens, timeout_s)
    log.info("generate over HTTP: %r", generated)
    http_output = infer_http(http_url, model_name, prompt, max_tokens, timeout_s)
    grpc_output = infer_grpc(grpc_url, model_name, prompt, max_tokens, timeout_s)
    log.info("infer over gRPC: %r", grpc_output)
    return SmokeResult(
        prompt=prompt,
        generate_output=generated,
        http_infer_output=http_output,
        grpc_infer_output=grpc_output,
        seconds=time.monotonic() - started,
    )
