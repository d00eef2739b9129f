"""The Triton model repository of serving mode trtllm-llmapi: TRT-LLM's PyTorch backend, no engine.

Layout written by `write_llmapi_repository` (after tensorrtllm_backend's all_models/llmapi
model: a python-backend model whose `model.yaml` holds the `LLM()` arguments):

    <model_name>/config.pbtxt              backend "python", the hf mode's tensors (+ stream)
    <model_name>/1/model.py                copy of trtllm_llmapi_model.py
    <model_name>/1/llmft_triton_utils.py   prompt and sampling helpers
    <model_name>/1/model.yaml              LLM() arguments + triton_config
    <model_name>/1/checkpoint/             the merged HF checkpoint (model: checkpoint)

The checkpoint is loaded as exported: nothing is compiled, so the repository depends on
neither the GPU architecture nor (beyond TRT-LLM >= 1.0) the TRT-LLM version.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from components.build.pbtxt import to_pbtxt
from components.build.triton_config import (
    MODEL_VERSION,
    TensorSpec,
    install_python_model,
    instance_group,
    request_inputs,
    string_parameters,
    tensors,
)
from components.build.trtllm_settings import TritonTrtllmSettings, TrtllmSettings
from components.storage import MANIFEST_NAME

log = logging.getLogger(__name__)

CHECKPOINT_DIRNAME = "checkpoint"
MODEL_YAML = "model.yaml"
MODEL_FILE = Path(__file__).parent / "trtllm_llmapi_model.py"


class LlmapiSettings(BaseModel):
    """Everything config.pbtxt and model.yaml of the llmapi model say."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model_name: str = Field(description="Triton model name (the directory name in the repository).")
    max_batch_size: int = Field(ge=1, description="Requests TRT-LLM batches in flight (LLM max_batch_size).")
    max_new_tokens: int = Field(ge=1, description="Tokens generated when a request has no max_tokens.")
    prompt_template: str = Field(description="Template with {prompt}; model.py renders requests with it.")
    max_tokens_limit: int | None = Field(
        default=None, ge=1, description="Largest max_tokens a request may send; None: max_seq_len - 1."
    )
    trtllm: TrtllmSettings = Field(description="Parallelism and length limits for LLM().")
    triton: TritonTrtllmSettings = Field(description="KV-cache memory, chunked prefill, streaming.")
    source_digest: str = Field(default="", description="Manifest digest of the checkpoint, for lineage.")


def llm_args(settings: LlmapiSettings) -> dict[str, Any]:
    """The LLM() keyword arguments model.yaml carries (the triton_config section aside)."""
    trtllm, triton = settings.trtllm, settings.triton
    kv_cache: dict[str, Any] = {
        "free_gpu_memory_fraction": triton.kv_cache_free_gpu_mem_fraction,
        "enable_block_reuse": triton.enable_kv_cache_reuse,
    }
    if triton.max_tokens_in_paged_kv_cache is not None:
        kv_cache["max_tokens"] = triton.max_tokens_in_paged_kv_cache
    return {
        "model": CHECKPOINT_DIRNAME,
        "backend": "pytorch",
        "dtype": trtllm.dtype,
        "tensor_parallel_size": trtllm.tensor_parallel_size,
        "pipeline_parallel_size": trtllm.pipeline_parallel_size,
        "max_batch_size": settings.max_batch_size,
        "max_num_tokens": trtllm.max_num_tokens,
        "max_seq_len": trtllm.max_seq_len,
        "enable_chunked_prefill": triton.enable_chunked_context,
        "kv_cache_config": kv_cache,
    }


def model_yaml(settings: LlmapiSettings) -> dict[str, Any]:
    # triton_config mirrors config.pbtxt, as in tensorrtllm_backend's llmapi model.yaml.
    return {
        **llm_args(settings),
        "triton_config": {"max_batch_size": 0, "decoupled": settings.triton.decoupled},
    }


LLMAPI_OUTPUTS = (TensorSpec(name="text_output", data_type="TYPE_STRING", dims=(1,)),)


def llmapi_config(settings: LlmapiSettings) -> dict[str, Any]:
    return {
        "name": settings.model_name,
        "backend": "python",
        # One request per execute() entry: TRT-LLM batches them in flight, not Triton.
        "max_batch_size": 0,
        "model_transaction_policy": {"decoupled": settings.triton.decoupled},
        "input": tensors(request_inputs(settings.triton.decoupled), is_input=True),
        "output": tensors(LLMAPI_OUTPUTS, is_input=False),
        # One instance: LLM() spreads the model over the GPUs itself (tensor/pipeline parallel).
        "instance_group": instance_group(1, "KIND_CPU"),
        "parameters": string_parameters(
            {
                "prompt_template": settings.prompt_template,
                "max_new_tokens": str(settings.max_new_tokens),
                "max_input_len": str(settings.trtllm.max_input_len),
                "max_tokens_limit": str(
                    settings.max_tokens_limit
                    if settings.max_tokens_limit is not None
                    else settings.trtllm.max_seq_len - 1
                ),
                "source_digest": settings.source_digest,
            }
        ),
    }


def write_llmapi_repository(checkpoint_dir: Path, repository_dir: Path, settings: LlmapiSettings) -> Path:
    """Write the llmapi model into `repository_dir` (a local staging directory)."""
    model_dir = repository_dir / settings.model_name
    version_dir = model_dir / MODEL_VERSION
    version_dir.mkdir(parents=True, exist_ok=False)
    (model_dir / "config.pbtxt").write_text(to_pbtxt(llmapi_config(settings)), encoding="utf-8")
    (version_dir / MODEL_YAML).write_text(
        yaml.safe_dump(model_yaml(settings), sort_keys=False), encoding="utf-8"
    )
    install_python_model(MODEL_FILE, version_dir)
    shutil.copytree(
        checkpoint_dir, version_dir / CHECKPOINT_DIRNAME, ignore=shutil.ignore_patterns(MANIFEST_NAME)
    )
    log.info("wrote Triton model %s (TRT-LLM llmapi, PyTorch backend)", settings.model_name)
    return model_dir
