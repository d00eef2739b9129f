"""Helpers shared by the python-backend models of the TensorRT-LLM serving modes.

llmft build copies this file next to each model.py (`<model>/1/llmft_triton_utils.py`;
the python backend puts the version directory on sys.path). It runs inside Triton's
python stub, not inside llmft, so it imports nothing from llmft and nothing from Triton:
the model files pass it plain values and numpy arrays.

The prompt is built exactly as training built it (components/train/data.py prompt_ids):
BOS, then the prompt template rendered around the raw instruction and tokenised without
special tokens. The hf serving mode's model.py does the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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


def strings(array: np.ndarray) -> list[str]:
    """A TYPE_STRING tensor's values as text, row by row."""
    return [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.ravel()]


def per_row(array: np.ndarray | None, name: str, rows: int, default: Any, cast: Callable[[Any], Any]) -> list:
    """An optional input as one value per row: absent -> default, one value -> broadcast."""
    if array is None:
        return [default] * rows
    values = [cast(value) for value in array.ravel()]
    if len(values) == 1:
        return values * rows
    if len(values) != rows:
        raise ValueError(f"{name} has {len(values)} values for {rows} text_input rows")
    return values


def check_generation_args(max_tokens: list[int], temperatures: list[float]) -> None:
    if any(value < 1 for value in max_tokens):
        raise ValueError("max_tokens must be at least 1")
    if any(not np.isfinite(value) or value < 0 for value in temperatures):
        raise ValueError("temperature must be a finite number >= 0")


def prompt_ids(tokenizer: Any, template: str, prompt: str) -> list[int]:
    """BOS + the rendered template, tokenised without special tokens (as in training)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(template.format(prompt=prompt), add_special_tokens=False)["input_ids"]


def check_lengths(prompt_len: int, max_tokens: int, max_input_len: int, max_seq_len: int) -> None:
    """Refuse a request the engine cannot take, with the numbers (TRT-LLM's own error names none)."""
    if prompt_len > max_input_len:
        raise ValueError(
            f"the prompt is {prompt_len} tokens with the template; the engine takes at most {max_input_len}"
        )
    if prompt_len + max_tokens > max_seq_len:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) exceeds max_seq_len ({max_seq_len})"
        )


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
