"""The Triton model repository of serving mode `hf`: python backend + transformers.

Layout written by `write_hf_repository` (self-contained, so it can be served from S3):

    <model_name>/config.pbtxt        backend "python", the generate-extension tensors
    <model_name>/1/model.py          a copy of `triton_hf_model.py` (shipped as package data)
    <model_name>/1/llmft_triton_utils.py   prompt ids and request limits (triton_python_utils.py)
    <model_name>/1/checkpoint/...    the merged HF checkpoint + tokenizer

Tensor names follow Triton's generate extension (and the TRT-LLM ensemble's names), so
`POST /v2/models/<name>/generate {"text_input": ..., "max_tokens": ...}` returns
`{"text_output": ...}` and a client can move between serving modes unchanged.

Request limits come from the checkpoint's context (config.json `max_position_embeddings`):
prompt tokens + max_tokens must fit in it, max_tokens is at most `max_tokens_limit`, and a
prompt longer than 16 bytes per token of the context is refused before it is tokenized.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.build.pbtxt import to_pbtxt
from components.build.triton_config import (
    MODEL_VERSION,
    REQUEST_INPUTS,
    InstanceKind,
    TensorSpec,
    install_python_model,
    instance_group,
    string_parameters,
    tensors,
)
from components.storage import MANIFEST_NAME

log = logging.getLogger(__name__)

MODEL_FILE = Path(__file__).with_name("triton_hf_model.py")
CHECKPOINT_DIRNAME = "checkpoint"

# Triton's instance kind for each device setting. KIND_AUTO puts instances on the GPUs
# when Triton sees any and on the CPU otherwise, which is what "auto" means to users.
_INSTANCE_KIND: dict[str, InstanceKind] = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "cuda": "KIND_GPU"}


HF_OUTPUTS = (TensorSpec(name="text_output", data_type="TYPE_STRING", dims=(1,)),)

# Where Hugging Face configs keep the context length, by model family (Llama/Mistral/Qwen: the
# first; GPT-2: n_positions; Falcon/MPT/ChatGLM: the others). Multimodal configs nest it in
# text_config.
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


class ContextLengthError(ValueError):
    """The checkpoint's config.json says nothing usable about how many tokens the model holds."""


def context_length(config_json: Path) -> int:
    """The context length a checkpoint's config.json declares: the most tokens one request may hold."""
    try:
        config = json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ContextLengthError(f"cannot read the context length from {config_json}: {exc}") from None
    if not isinstance(config, dict):
        raise ContextLengthError(f"{config_json} is not a JSON object")
    sections = [config, config.get("text_config")]
    for section in (item for item in sections if isinstance(item, dict)):
        for key in _CONTEXT_KEYS:
            value = section.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 2:
                return value
    raise ContextLengthError(
        f"{config_json} names no context length (looked for {', '.join(_CONTEXT_KEYS)} as an integer >= 2); "
        "the served model needs it to bound prompts and max_tokens"
    )


class HfModelSettings(BaseModel):
    """Everything config.pbtxt of the hf python-backend model says."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model_name: str = Field(description="Triton model name (the directory name in the repository).")
    max_new_tokens: int = Field(ge=1, description="Tokens generated when a request has no max_tokens.")
    max_batch_size: int = Field(ge=0, description="Largest batch Triton forms; 0 turns batching off.")
    instance_count: int = Field(ge=1, description="Model instances (per GPU when on GPUs).")
    device: Literal["auto", "cpu", "cuda"] = Field(description="Where model.py runs the model.")
    prompt_template: str = Field(description="Template with {prompt}; model.py renders requests with it.")
    context_length: int = Field(
        ge=2, description="Tokens one request may hold, prompt + generated (the checkpoint's context)."
    )
    max_tokens_limit: int | None = Field(
        default=None,
        ge=1,
        description="Largest max_tokens a request may send; None: context_length - 1.",
    )
    source_digest: str = Field(default="", description="Manifest digest of the checkpoint, for lineage.")

    @model_validator(mode="after")
    def _limits_fit_the_context(self) -> HfModelSettings:
        if self.max_new_tokens >= self.context_length:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) must be below the model's context length "
                f"({self.context_length}): a request needs room for its prompt"
            )
        limit = self.max_tokens_limit
        if limit is not None and not self.max_new_tokens <= limit < self.context_length:
            raise ValueError(
                f"max_tokens_limit ({limit}) must be at least max_new_tokens ({self.max_new_tokens}) and "
                f"below the model's context length ({self.context_length})"
            )
        return self

    @property
    def resolved_max_tokens_limit(self) -> int:
        return self.max_tokens_limit if self.max_tokens_limit is not None else self.context_length - 1


def model_config_fields(settings: HfModelSettings) -> dict[str, Any]:
    """The ModelConfig message (as a mapping for `to_pbtxt`) of the hf model."""
    parameters = {
        "prompt_template": settings.prompt_template,
        "max_new_tokens": str(settings.max_new_tokens),
        "device": settings.device,
        "checkpoint": CHECKPOINT_DIRNAME,
        # Request limits (llmft_triton_utils.request_limits reads them): a prompt of at least one
        # token (BOS) leaves at most context - 1 for the prompt and for max_tokens.
        "max_seq_len": str(settings.context_length),
        "max_input_len": str(settings.context_length - 1),
        "max_tokens_limit": str(settings.resolved_max_tokens_limit),
        "source_digest": settings.source_digest,
    }
    return {
        "name": settings.model_name,
        "backend": "python",
        "max_batch_size": settings.max_batch_size,
        "input": tensors(REQUEST_INPUTS, is_input=True),
        "output": tensors(HF_OUTPUTS, is_input=False),
        "instance_group": instance_group(settings.instance_count, _INSTANCE_KIND[settings.device]),
        # Batching needs the dynamic batcher; without it every request runs alone.
        "dynamic_batching": {} if settings.max_batch_size > 0 else None,
        # ModelParameter values are strings; model.py parses the numbers back.
        "parameters": string_parameters(parameters),
    }


def render_model_config(settings: HfModelSettings) -> str:
    return to_pbtxt(model_config_fields(settings))


def write_hf_repository(checkpoint_dir: Path, repository_dir: Path, settings: HfModelSettings) -> Path:
    """Write the model repository into `repository_dir` (a local staging directory).

    The checkpoint's own manifest is left out: the repository gets one of its own when
    published, and the source digest is recorded in config.pbtxt and that manifest.
    """
    model_dir = repository_dir / settings.model_name
    version_dir = model_dir / MODEL_VERSION
    version_dir.mkdir(parents=True, exist_ok=False)
    (model_dir / "config.pbtxt").write_text(render_model_config(settings), encoding="utf-8")
    install_python_model(MODEL_FILE, version_dir)
    shutil.copytree(
        checkpoint_dir, version_dir / CHECKPOINT_DIRNAME, ignore=shutil.ignore_patterns(MANIFEST_NAME)
    )
    log.info("wrote Triton model %s (python backend) with checkpoint %s", settings.model_name, checkpoint_dir)
    return model_dir
