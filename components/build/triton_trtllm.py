"""The Triton model repository of serving mode trtllm-engine: the in-flight batching ensemble.

Layout written by `write_ensemble_repository` (model names and tensor names follow
tensorrtllm_backend's all_models/inflight_batcher_llm, so its docs and tools apply):

    <model_name>/config.pbtxt          platform "ensemble": preprocessing -> tensorrt_llm -> postprocessing
    <model_name>/1/.llmft-ensemble     (a version directory must exist; object stores keep no empty ones)
    preprocessing/config.pbtxt         python backend: prompt template + tokenizer
    preprocessing/1/model.py, llmft_triton_utils.py, tokenizer/
    tensorrt_llm/config.pbtxt          backend "tensorrtllm": gpt_model_path, batching, KV cache
    tensorrt_llm/1/engine/             written by llm.save (rank<N>.engine, config.json)
    postprocessing/config.pbtxt        python backend: detokenizer
    postprocessing/1/model.py, llmft_triton_utils.py, tokenizer/

Clients call the ensemble with the hf mode's tensors: `text_input`, optional `max_tokens`
and `temperature` (plus `stream` in decoupled mode) -> `text_output`, one prompt per request
(the ensemble's max_batch_size is 1, see ENSEMBLE_MAX_BATCH_SIZE); concurrent requests are
batched in flight by the engine, up to `max_batch_size` of them.
Every config.pbtxt is generated from typed settings; the parameter names are those the
tensorrtllm backend reads (see its model_instance_state.cc / docs/model_config.md).
"""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from components.build.pbtxt import to_pbtxt
from components.build.triton_config import (
    MODEL_VERSION,
    TensorSpec,
    TritonDataType,
    flag,
    install_python_model,
    instance_group,
    request_inputs,
    string_parameters,
    tensors,
)
from components.build.trtllm_settings import TritonTrtllmSettings

log = logging.getLogger(__name__)

PREPROCESSING = "preprocessing"
TENSORRT_LLM = "tensorrt_llm"
POSTPROCESSING = "postprocessing"
COMPOSING_MODELS = (PREPROCESSING, TENSORRT_LLM, POSTPROCESSING)
ENGINE_DIRNAME = "engine"
TOKENIZER_DIRNAME = "tokenizer"
ENSEMBLE_PLACEHOLDER = ".llmft-ensemble"

_HERE = Path(__file__).parent
PREPROCESSING_FILE = _HERE / "trtllm_preprocessing_model.py"
POSTPROCESSING_FILE = _HERE / "trtllm_postprocessing_model.py"

# The ensemble, the model clients call, takes one prompt per request ([1, 1] tensors), so
# Triton itself refuses a request of more rows, with its own message naming the model. Why:
# the tensorrtllm backend makes one executor request per row of a Triton request and, unless
# decoupled, throws "Batch size > 1 requires the tensorrt_llm backend to be using decoupled
# transaction policy" (createRequestsFromInputTensors in TensorRT-LLM's triton_backend/
# inflight_batcher_llm/src/utils.cc, read at commit 1929081; tensorrtllm_backend r26.04 to
# r26.07 build the backend from that directory of the TensorRT-LLM submodule they pin);
# decoupled, it answers each row in a response of its own tagged with `batch_index`, not the
# one response per request the hf mode gives. Throughput does not depend on it: the engine
# batches concurrent single-row requests in flight, up to max_batch_size of them, and the
# composing models keep max_batch_size so Triton hands the backend that many at once.
ENSEMBLE_MAX_BATCH_SIZE = 1


class EnsembleSettings(BaseModel):
    """Everything the four config.pbtxt files of the ensemble say."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model_name: str = Field(description="Name of the ensemble: the model clients call.")
    max_batch_size: int = Field(
        ge=1,
        description="Requests batched in flight: the engine's max_batch_size and Triton's max_batch_size "
        "of the composing models (the ensemble takes one prompt per request).",
    )
    max_new_tokens: int = Field(ge=1, description="Output length of requests without max_tokens.")
    max_input_len: int = Field(ge=1, description="Longest prompt the engine takes (preprocessing checks it).")
    max_seq_len: int = Field(ge=2, description="Longest prompt + output (preprocessing checks it).")
    max_tokens_limit: int | None = Field(
        default=None, ge=1, description="Largest max_tokens a request may send; None: max_seq_len - 1."
    )
    prompt_template: str = Field(description="Template with {prompt}, rendered by preprocessing.")
    triton: TritonTrtllmSettings = Field(description="Batching, KV cache, streaming, queue, instances.")
    source_digest: str = Field(default="", description="Manifest digest of the checkpoint, for lineage.")

    @property
    def engine_path(self) -> str:
        """Where the serving container finds the engine (gpt_model_path must be absolute)."""
        return posixpath.join(self.triton.model_repository_path, TENSORRT_LLM, MODEL_VERSION, ENGINE_DIRNAME)


def _scalar_input(name: str, data_type: TritonDataType, optional: bool = False) -> TensorSpec:
    return TensorSpec(name=name, data_type=data_type, dims=(1,), optional=optional, scalar=True)


ENSEMBLE_OUTPUTS = (TensorSpec(name="text_output", data_type="TYPE_STRING", dims=(-1,)),)

PREPROCESSING_INPUTS = (
    TensorSpec(name="QUERY", data_type="TYPE_STRING", dims=(1,)),
    TensorSpec(name="REQUEST_OUTPUT_LEN", data_type="TYPE_INT32", dims=(1,), optional=True),
    TensorSpec(name="TEMPERATURE", data_type="TYPE_FP32", dims=(1,), optional=True),
)
PREPROCESSING_OUTPUTS = (
    TensorSpec(name="INPUT_ID", data_type="TYPE_INT32", dims=(-1,)),
    TensorSpec(name="REQUEST_INPUT_LEN", data_type="TYPE_INT32", dims=(1,)),
    TensorSpec(name="REQUEST_OUTPUT_LEN", data_type="TYPE_INT32", dims=(1,)),
    TensorSpec(name="OUT_END_ID", data_type="TYPE_INT32", dims=(1,)),
    TensorSpec(name="OUT_PAD_ID", data_type="TYPE_INT32", dims=(1,)),
    TensorSpec(name="OUT_TEMPERATURE", data_type="TYPE_FP32", dims=(1,)),
    TensorSpec(name="OUT_RUNTIME_TOP_K", data_type="TYPE_INT32", dims=(1,)),
    TensorSpec(name="OUT_RUNTIME_TOP_P", data_type="TYPE_FP32", dims=(1,)),
)


def tensorrt_llm_inputs(settings: EnsembleSettings) -> tuple[TensorSpec, ...]:
    specs = (
        TensorSpec(name="input_ids", data_type="TYPE_INT32", dims=(-1,), ragged=True),
        _scalar_input("input_lengths", "TYPE_INT32"),
        _scalar_input("request_output_len", "TYPE_INT32"),
        _scalar_input("end_id", "TYPE_INT32", optional=True),
        _scalar_input("pad_id", "TYPE_INT32", optional=True),
        _scalar_input("temperature", "TYPE_FP32", optional=True),
        _scalar_input("runtime_top_k", "TYPE_INT32", optional=True),
        _scalar_input("runtime_top_p", "TYPE_FP32", optional=True),
    )
    if settings.triton.decoupled:
        specs += (_scalar_input("streaming", "TYPE_BOOL", optional=True),)
    return specs


TENSORRT_LLM_OUTPUTS = (
    TensorSpec(name="output_ids", data_type="TYPE_INT32", dims=(-1, -1)),
    TensorSpec(name="sequence_length", data_type="TYPE_INT32", dims=(-1,)),
)
POSTPROCESSING_INPUTS = (
    TensorSpec(name="TOKENS_BATCH", data_type="TYPE_INT32", dims=(-1, -1)),
    TensorSpec(name="SEQUENCE_LENGTH", data_type="TYPE_INT32", dims=(-1,)),
)
POSTPROCESSING_OUTPUTS = (TensorSpec(name="OUTPUT", data_type="TYPE_STRING", dims=(-1,)),)


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict[str, Any]:
    """One ensemble step: the model's tensor name -> the ensemble's tensor name, both ways."""
    return {
        "model_name": model,
        "model_version": -1,
        "input_map": [{"key": key, "value": value} for key, value in inputs.items()],
        "output_map": [{"key": key, "value": value} for key, value in outputs.items()],
    }


def ensemble_config(settings: EnsembleSettings) -> dict[str, Any]:
    trtllm_inputs = {
        "input_ids": "_INPUT_ID",
        "input_lengths": "_REQUEST_INPUT_LEN",
        "request_output_len": "_REQUEST_OUTPUT_LEN",
        "end_id": "_PREPROCESSOR_END_ID",
        "pad_id": "_PREPROCESSOR_PAD_ID",
        "temperature": "_TEMPERATURE",
        "runtime_top_k": "_RUNTIME_TOP_K",
        "runtime_top_p": "_RUNTIME_TOP_P",
    }
    if settings.triton.decoupled:
        trtllm_inputs["streaming"] = "stream"
    steps = [
        _step(
            PREPROCESSING,
            {"QUERY": "text_input", "REQUEST_OUTPUT_LEN": "max_tokens", "TEMPERATURE": "temperature"},
            {
                "INPUT_ID": "_INPUT_ID",
                "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN",
                "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN",
                "OUT_END_ID": "_PREPROCESSOR_END_ID",
                "OUT_PAD_ID": "_PREPROCESSOR_PAD_ID",
                "OUT_TEMPERATURE": "_TEMPERATURE",
                "OUT_RUNTIME_TOP_K": "_RUNTIME_TOP_K",
                "OUT_RUNTIME_TOP_P": "_RUNTIME_TOP_P",
            },
        ),
        _step(
            TENSORRT_LLM,
            trtllm_inputs,
            {"output_ids": "_TOKENS_BATCH", "sequence_length": "_SEQUENCE_LENGTH"},
        ),
        _step(
            POSTPROCESSING,
            {"TOKENS_BATCH": "_TOKENS_BATCH", "SEQUENCE_LENGTH": "_SEQUENCE_LENGTH"},
            {"OUTPUT": "text_output"},
        ),
    ]
    return {
        "name": settings.model_name,
        "platform": "ensemble",
        "max_batch_size": ENSEMBLE_MAX_BATCH_SIZE,
        "input": tensors(request_inputs(settings.triton.decoupled), is_input=True),
        "output": tensors(ENSEMBLE_OUTPUTS, is_input=False),
        "ensemble_scheduling": {"step": steps},
        "parameters": string_parameters({"source_digest": settings.source_digest}),
    }


def preprocessing_config(settings: EnsembleSettings) -> dict[str, Any]:
    return {
        "name": PREPROCESSING,
        "backend": "python",
        "max_batch_size": settings.max_batch_size,
        "input": tensors(PREPROCESSING_INPUTS, is_input=True),
        "output": tensors(PREPROCESSING_OUTPUTS, is_input=False),
        "instance_group": instance_group(settings.triton.preprocessing_instance_count, "KIND_CPU"),
        "dynamic_batching": {},
        "parameters": string_parameters(
            {
                "tokenizer_dir": TOKENIZER_DIRNAME,
                "prompt_template": settings.prompt_template,
                "max_new_tokens": str(settings.max_new_tokens),
                "max_input_len": str(settings.max_input_len),
                "max_seq_len": str(settings.max_seq_len),
                "max_tokens_limit": str(
                    settings.max_tokens_limit
                    if settings.max_tokens_limit is not None
                    else settings.max_seq_len - 1
                ),
            }
        ),
    }


def _dynamic_batching(settings: EnsembleSettings) -> dict[str, Any]:
    triton = settings.triton
    return {
        "preferred_batch_size": [settings.max_batch_size],
        "max_queue_delay_microseconds": triton.max_queue_delay_microseconds,
        # The tensorrtllm backend also reads max_queue_size from here for its own queue.
        "default_queue_policy": {"max_queue_size": triton.max_queue_size} if triton.max_queue_size else None,
    }


def tensorrt_llm_config(settings: EnsembleSettings) -> dict[str, Any]:
    triton = settings.triton
    parameters = {
        "gpt_model_type": triton.batching_strategy,
        "gpt_model_path": settings.engine_path,
        "max_beam_width": "1",
        "batch_scheduler_policy": triton.batch_scheduler_policy,
        "kv_cache_free_gpu_mem_fraction": repr(triton.kv_cache_free_gpu_mem_fraction),
        "enable_kv_cache_reuse": flag(triton.enable_kv_cache_reuse),
        "enable_chunked_context": flag(triton.enable_chunked_context),
        # Only the generated ids go to postprocessing, as the hf mode returns only new text.
        "exclude_input_in_output": flag(True),
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        # The backend reads these three without a default (guided decoding); empty = off.
        "tokenizer_dir": "",
        "guided_decoding_backend": "",
        "xgrammar_tokenizer_info_path": "",
    }
    if triton.max_tokens_in_paged_kv_cache is not None:
        parameters["max_tokens_in_paged_kv_cache"] = str(triton.max_tokens_in_paged_kv_cache)
    return {
        "name": TENSORRT_LLM,
        "backend": "tensorrtllm",
        "max_batch_size": settings.max_batch_size,
        "model_transaction_policy": {"decoupled": triton.decoupled},
        "dynamic_batching": _dynamic_batching(settings),
        "input": tensors(tensorrt_llm_inputs(settings), is_input=True),
        "output": tensors(TENSORRT_LLM_OUTPUTS, is_input=False),
        # The backend places the engine on GPUs itself (MPI ranks); the instance is a CPU one.
        "instance_group": instance_group(1, "KIND_CPU"),
        "parameters": string_parameters(parameters),
    }


def postprocessing_config(settings: EnsembleSettings) -> dict[str, Any]:
    return {
        "name": POSTPROCESSING,
        "backend": "python",
        "max_batch_size": settings.max_batch_size,
        "input": tensors(POSTPROCESSING_INPUTS, is_input=True),
        "output": tensors(POSTPROCESSING_OUTPUTS, is_input=False),
        "instance_group": instance_group(settings.triton.postprocessing_instance_count, "KIND_CPU"),
        "dynamic_batching": {},
        "parameters": string_parameters({"tokenizer_dir": TOKENIZER_DIRNAME, "skip_special_tokens": "true"}),
    }


def model_configs(settings: EnsembleSettings) -> dict[str, dict[str, Any]]:
    """Model directory name -> its ModelConfig (as a mapping for `to_pbtxt`)."""
    return {
        settings.model_name: ensemble_config(settings),
        PREPROCESSING: preprocessing_config(settings),
        TENSORRT_LLM: tensorrt_llm_config(settings),
        POSTPROCESSING: postprocessing_config(settings),
    }


def save_tokenizer(checkpoint_dir: Path, target: Path) -> None:
    """The checkpoint's tokenizer, saved on its own (the python models load only this)."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(checkpoint_dir).save_pretrained(target)


def write_ensemble_repository(checkpoint_dir: Path, repository_dir: Path, settings: EnsembleSettings) -> Path:
    """Write every model of the ensemble into `repository_dir` (a local staging directory).

    Returns the directory the engine must be saved to; it is left empty here.
    """
    for name, fields in model_configs(settings).items():
        (repository_dir / name / MODEL_VERSION).mkdir(parents=True, exist_ok=False)
        (repository_dir / name / "config.pbtxt").write_text(to_pbtxt(fields), encoding="utf-8")
    (repository_dir / settings.model_name / MODEL_VERSION / ENSEMBLE_PLACEHOLDER).write_text(
        "Version directory of the ensemble: Triton needs one; it holds no files of its own.\n",
        encoding="utf-8",
    )
    for name, model_file in ((PREPROCESSING, PREPROCESSING_FILE), (POSTPROCESSING, POSTPROCESSING_FILE)):
        version_dir = repository_dir / name / MODEL_VERSION
        install_python_model(model_file, version_dir)
        save_tokenizer(checkpoint_dir, version_dir / TOKENIZER_DIRNAME)
    log.info("wrote the TensorRT-LLM ensemble %s (engine path %s)", settings.model_name, settings.engine_path)
    return repository_dir / TENSORRT_LLM / MODEL_VERSION / ENGINE_DIRNAME
