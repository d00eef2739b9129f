"""Helpers shared by llmft's python-backend models (hf, llmapi, the TRT-LLM pre/postprocessing).

llmft build copies this file next to each model.py (`<model>/1/llmft_triton_utils.py`;
the python backend puts the version directory on sys.path). It runs inside Triton's
python stub, not inside llmft, so it imports nothing from llmft and nothing from Triton:
the model files pass it plain values and numpy arrays.

The prompt is built exactly as training built it (components/train/data.py prompt_ids):
BOS, then the prompt template rendered around the raw instruction and tokenised without
special tokens.

Every request is checked against the model's `RequestLimits` before it costs anything: the
prompt's size in bytes before tokenizing, `max_tokens` against its limit, then the prompt's
tokens plus `max_tokens` against the context. A refusal is a `RequestError`, which the models
answer as InvalidArgument (HTTP 400, gRPC INVALID_ARGUMENT) naming the limit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


def parameter(config: dict, name: str, default: str) -> str:
    """A string parameter of config.pbtxt (Triton hands model.py the config as JSON)."""
    return config.get("parameters", {}).get(name, {}).get("string_value", default)


def resolve_dir(version_dir: str, path: str) -> str:
    """A directory named in config.pbtxt: relative paths are inside the model's version directory.

    Relative paths keep the repository self-contained, so it serves the same from a local
    path or from S3 (Triton copies each model's directory before loading it).
    """
    return path if os.path.isabs(path) else os.path.join(version_dir, path)


# A prompt token is rarely more than 4 characters, and a character is at most 4 bytes of UTF-8. A
# prompt over this many bytes per token the model takes cannot fit, and is refused before the
# tokenizer sees it: tokenizing megabytes costs seconds of CPU per request, and a 10 MB prompt
# once took the whole server down.
BYTES_PER_TOKEN_BOUND = 16


class RequestError(ValueError):
    """A request the model refuses (the client's to fix): answered as InvalidArgument, HTTP 400."""


def triton_error(pb_utils: Any, error: Exception) -> Any:
    """The TritonError answering `error` (pb_utils passed in, as this file imports nothing from Triton).

    The client's mistakes (RequestError, other ValueErrors such as an unparsable value) are
    InvalidArgument, which Triton answers with HTTP 400 / gRPC INVALID_ARGUMENT; the rest are
    the server's (INTERNAL, HTTP 500).
    """
    errors = pb_utils.TritonError
    code = errors.INVALID_ARG if isinstance(error, ValueError) else errors.INTERNAL
    return errors(str(error), code)


def prompt_byte_limit(max_prompt_tokens: int) -> int:
    """Largest prompt, in UTF-8 bytes, worth tokenizing for a model that takes `max_prompt_tokens`."""
    return BYTES_PER_TOKEN_BOUND * max_prompt_tokens


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask of a served model; build writes them into config.pbtxt."""

    max_input_len: int  # prompt tokens, template and BOS included
    max_seq_len: int  # prompt + generated tokens: the model's context
    max_tokens_limit: int  # the largest max_tokens a request may send

    @property
    def max_prompt_bytes(self) -> int:
        return prompt_byte_limit(self.max_input_len)


def request_limits(config: dict, max_seq_len: int | None = None) -> RequestLimits:
    """The limits in config.pbtxt's parameters; `max_seq_len` when it lives elsewhere (model.yaml)."""
    seq_len = max_seq_len if max_seq_len is not None else int(parameter(config, "max_seq_len", "2048"))
    return RequestLimits(
        max_input_len=int(parameter(config, "max_input_len", str(seq_len - 1))),
        max_seq_len=seq_len,
        # No separate limit: anything up to what the context holds after a one-token prompt.
        max_tokens_limit=int(parameter(config, "max_tokens_limit", str(seq_len - 1))),
    )


def prompts(array: np.ndarray, max_bytes: int, name: str = "text_input") -> list[str]:
    """A TYPE_STRING tensor of prompts as text, row by row, each checked before anything reads it."""
    texts = []
    for row, item in enumerate(array.ravel()):
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
        if len(raw) > max_bytes:
            raise RequestError(
                f"{name} row {row} is {len(raw)} bytes; this model takes prompts of at most {max_bytes} "
                f"bytes ({BYTES_PER_TOKEN_BOUND} bytes per token of its prompt limit)"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(f"{name} row {row} is not valid UTF-8 (byte {exc.start})") from None
        if not text.strip():
            raise RequestError(f"{name} row {row} is empty: send the instruction to answer")
        texts.append(text)
    if not texts:
        raise RequestError(f"{name} has no rows")
    return texts


def per_row(array: np.ndarray | None, name: str, rows: int, default: Any, cast: Callable[[Any], Any]) -> list:
    """An optional input as one value per row: absent -> default, one value -> broadcast."""
    if array is None:
        return [default] * rows
    values = [cast(value) for value in array.ravel()]
    if len(values) == 1:
        return values * rows
    if len(values) != rows:
        raise RequestError(f"{name} has {len(values)} values for {rows} text_input rows")
    return values


def check_generation_args(max_tokens: list[int], temperatures: list[float], max_tokens_limit: int) -> None:
    """Refuse generation settings out of range, before the prompt is tokenized."""
    if any(value < 1 for value in max_tokens):
        raise RequestError("max_tokens must be at least 1")
    if any(value > max_tokens_limit for value in max_tokens):
        raise RequestError(
            f"max_tokens {max(max_tokens)} is above this model's limit of {max_tokens_limit} "
            "(max_tokens_limit)"
        )
    if any(not np.isfinite(value) or value < 0 for value in temperatures):
        raise RequestError("temperature must be a finite number >= 0")


def prompt_ids(tokenizer: Any, template: str, prompt: str) -> list[int]:
    """BOS + the rendered template, tokenised without special tokens (as in training)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(template.format(prompt=prompt), add_special_tokens=False)["input_ids"]


def check_lengths(prompt_len: int, max_tokens: int, max_input_len: int, max_seq_len: int) -> None:
    """Refuse a request the model cannot take, with the numbers (TRT-LLM's own error names none)."""
    if prompt_len > max_input_len:
        raise RequestError(
            f"the prompt is {prompt_len} tokens with the template; this model takes at most {max_input_len} "
            "(max_input_len)"
        )
    if prompt_len + max_tokens > max_seq_len:
        raise RequestError(
            f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) exceeds max_seq_len ({max_seq_len}), "
            "the most tokens this model holds per request: shorten the prompt or lower max_tokens"
        )


def checked_prompt_ids(
    tokenizer: Any, template: str, texts: list[str], max_tokens: list[int], limits: RequestLimits
) -> list[list[int]]:
    """Each prompt's ids (as in training), refused when it and its max_tokens do not fit the model."""
    ids = [prompt_ids(tokenizer, template, text) for text in texts]
    for tokens, wanted in zip(ids, max_tokens, strict=True):
        check_lengths(len(tokens), wanted, limits.max_input_len, limits.max_seq_len)
    return ids


def executor_sampling(temperature: float) -> tuple[float, int, float]:
    """(temperature, runtime_top_k, runtime_top_p) for the tensorrtllm backend.

    The same meaning as the hf mode: temperature 0 is greedy, above 0 samples from the
    whole distribution. TRT-LLM's executor is greedy with top_k 1 and samples every token
    with top_k 0 (no top-k cut) and top_p 1.0.
    """
    if temperature == 0:
        return 1.0, 1, 1.0
    return temperature, 0, 1.0


def llmapi_sampling(temperature: float, max_tokens: int) -> dict[str, Any]:
    """SamplingParams(...) arguments with the hf mode's meaning of temperature.

    The LLM API decodes greedily when top_k is 1; temperature alone does not make it
    sample (top_k and top_p unset also means greedy), so sampling sets top_p 1.0.
    """
    if temperature == 0:
        return {"max_tokens": max_tokens, "top_k": 1}
    return {"max_tokens": max_tokens, "temperature": temperature, "top_p": 1.0}


def cut_at_eos(ids: list[int], eos_id: int | None) -> list[int]:
    """Generated ids up to (not including) the first EOS, as the hf mode returns them."""
    return ids[: ids.index(eos_id)] if eos_id is not None and eos_id in ids else ids


def text_array(text: str) -> np.ndarray:
    """One string as a TYPE_STRING tensor of shape [1]."""
    return np.array([text.encode("utf-8")], dtype=np.object_)
