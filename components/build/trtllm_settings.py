"""Typed settings of the TensorRT-LLM serving modes (trtllm-engine and trtllm-llmapi).

They sit in `BuildConfig` as two nested groups, so the CLI flags read
`--trtllm-tensor-parallel-size 2` and `--triton-decoupled`:

- `TrtllmSettings`: what TensorRT-LLM itself is given: the engine's build limits
  (BuildConfig), parallelism, FP8 quantization and its calibration, plugins; for the llmapi
  mode the same limits become `LLM()` arguments in model.yaml.
- `TritonTrtllmSettings`: what the Triton model configs say: batching strategy, KV-cache
  memory, streaming (decoupled mode), queueing and instance counts.

Checks that need both groups and the serving mode live in `BuildConfig`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

GemmPlugin = Literal["auto", "float16", "bfloat16", "float32", "fp8", "disable"]
AttentionPlugin = Literal["auto", "float16", "bfloat16", "float32", "disable"]


class TrtllmSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        description="GPUs each layer is split over (tensor parallelism); the build needs them.",
    )
    pipeline_parallel_size: int = Field(
        default=1, ge=1, description="Pipeline stages the layers are split into (pipeline parallelism)."
    )
    max_input_len: int = Field(
        default=1024, ge=1, description="Longest prompt in tokens (template included)."
    )
    max_seq_len: int = Field(
        default=2048, ge=2, description="Longest prompt + generated tokens of one request."
    )
    max_num_tokens: int = Field(
        default=8192, ge=1, description="Most tokens the engine processes in one in-flight batch step."
    )
    dtype: Literal["auto", "float16", "bfloat16"] = Field(
        default="auto", description="Activation and weight dtype of the engine (auto: the checkpoint's)."
    )
    fp8_kv_cache: bool = Field(
        default=False, description="Store the KV cache in FP8 (engine mode; calibrated like FP8 weights)."
    )
    calib_dataset: str = Field(
        default="cnn_dailymail",
        description="FP8 calibration data: a Hugging Face dataset name (downloaded, so the build pod "
        "needs internet) or a local dataset path inside the image.",
    )
    calib_batches: int = Field(default=512, ge=1, description="Calibration batches for FP8.")
    calib_batch_size: int = Field(default=1, ge=1, description="Samples per calibration batch.")
    calib_max_seq_length: int = Field(default=512, ge=1, description="Tokens per calibration sample.")
    paged_kv_cache: bool = Field(
        default=True, description="Paged KV cache (needed for in-flight batching); TRT-LLM's default."
    )
    gemm_plugin: GemmPlugin = Field(
        default="auto", description="GEMM plugin dtype (auto: the model's dtype; disable: TensorRT GEMMs)."
    )
    gpt_attention_plugin: AttentionPlugin = Field(
        default="auto", description="Attention plugin dtype; in-flight batching needs it enabled."
    )
    use_paged_context_fmha: bool = Field(
        default=True, description="Paged context attention: needed for KV-cache reuse and chunked context."
    )

    @model_validator(mode="after")
    def _lengths_fit(self) -> TrtllmSettings:
        if self.max_input_len >= self.max_seq_len:
            raise ValueError(
                f"max_input_len ({self.max_input_len}) must be below max_seq_len ({self.max_seq_len}): "
                "generation needs room after the prompt"
            )
        return self


class TritonTrtllmSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    batching_strategy: Literal["inflight_fused_batching", "v1"] = Field(
        default="inflight_fused_batching",
        description="tensorrt_llm model's gpt_model_type: inflight_fused_batching (in-flight batching) "
        "or v1 (static batches).",
    )
    batch_scheduler_policy: Literal["guaranteed_no_evict", "max_utilization"] = Field(
        default="guaranteed_no_evict",
        description="guaranteed_no_evict never pauses a started request; max_utilization packs more.",
    )
    kv_cache_free_gpu_mem_fraction: float = Field(
        default=0.9, gt=0, le=1, description="Share of free GPU memory (after weights) for the KV cache."
    )
    max_tokens_in_paged_kv_cache: int | None = Field(
        default=None, ge=1, description="Cap on KV-cache tokens (the smaller of this and the fraction wins)."
    )
    enable_kv_cache_reuse: bool = Field(
        default=False, description="Reuse KV cache across requests sharing a prefix (e.g. the template)."
    )
    enable_chunked_context: bool = Field(
        default=False, description="Split long prompts into chunks scheduled with generation steps."
    )
    decoupled: bool = Field(
        default=False,
        description="Decoupled transaction policy: responses stream token by token when a request "
        "sets stream=true (gRPC streaming or /generate_stream).",
    )
    max_queue_delay_microseconds: int = Field(
        default=0, ge=0, description="How long Triton may hold a request to batch it with others."
    )
    max_queue_size: int = Field(
        default=0, ge=0, description="Requests queued before new ones are rejected (0: unlimited)."
    )
    preprocessing_instance_count: int = Field(
        default=1, ge=1, description="Instances of the preprocessing (tokenizer) model."
    )
    postprocessing_instance_count: int = Field(
        default=1, ge=1, description="Instances of the postprocessing (detokenizer) model."
    )
    model_repository_path: str = Field(
        default="/models",
        pattern=r"^/",
        description="Absolute path where the serving container mounts this repository: the "
        "tensorrtllm backend opens the engine by absolute path (gpt_model_path).",
    )
