"""Build step: turn a merged HF checkpoint into a Triton model repository.

Serving mode `hf` (this release) writes a python-backend model that runs the checkpoint
with transformers; it needs no GPU and is what `llmft local` serves. The TensorRT-LLM
modes (`trtllm-engine`, `trtllm-llmapi`) need the trtllm image and come in a later
release: asking for them fails before anything is read or written.

The repository is staged locally and published with `storage.publish_dir`, so the
manifest is written last and rollout refuses a half-written repository.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from components import storage
from components.build.triton_hf import HfModelSettings, write_hf_repository
from components.prompt import PROMPT_TEMPLATE

log = logging.getLogger(__name__)

PRODUCER = "llmft.build"
SERVING_MODES_LATER = ("trtllm-engine", "trtllm-llmapi")
QUANTIZATIONS = ("none", "fp8")


class BuildError(ValueError):
    """The build cannot run with these settings (unsupported mode, unusable output)."""


class BuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Merged HF checkpoint directory (path or s3://); it must have a manifest.")
    output: str = Field(description="Where to write the Triton model repository (path or s3://).")
    serving_mode: Literal["hf", "trtllm-engine", "trtllm-llmapi"] = Field(
        default="hf",
        description="hf: Triton python backend with transformers (CPU or GPU). "
        "trtllm-engine / trtllm-llmapi: TensorRT-LLM, trtllm image only (later release).",
    )
    model_name: str = Field(
        default="llm",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Triton model name: the URL path segment in /v2/models/<name>/...",
    )
    max_new_tokens: int = Field(
        default=64, ge=1, description="Tokens generated for requests without max_tokens."
    )
    max_batch_size: int = Field(
        default=8, ge=0, description="Largest batch Triton's dynamic batcher forms; 0 disables batching."
    )
    instance_count: int = Field(default=1, ge=1, description="Model instances Triton runs (per GPU on GPUs).")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Where the model runs: auto picks a GPU when Triton sees one, else the CPU.",
    )
    prompt_template: str = Field(
        default=PROMPT_TEMPLATE,
        description="Prompt template with a {prompt} placeholder; must be the one used in training.",
    )

    @field_validator("prompt_template")
    @classmethod
    def _template_renders(cls, template: str) -> str:
        if "{prompt}" not in template:
            raise ValueError("prompt_template must contain {prompt}")
        try:
            template.format(prompt="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"prompt_template must format with only {{prompt}} (escape other braces as {{{{ }}}}): {exc}"
            ) from exc
        return template


class BuildResult(BaseModel):
    repository: str = Field(description="URI of the published Triton model repository.")
    model_name: str = Field(description="Triton model name inside the repository.")
    serving_mode: str = Field(description="Serving mode the repository was built for.")
    manifest_digest: str = Field(description="Digest of the repository's manifest (its identity).")

    def summary(self) -> str:
        return (
            f"Triton model repository ({self.serving_mode}) at {self.repository}\n"
            f"  model: {self.model_name}  digest: {self.manifest_digest[:16]}"
        )


def require_quantization_supported(serving_mode: str, quantization: str) -> None:
    """Refuse a quantization the serving mode cannot do (the pipeline checks this before build).

    Serving mode hf runs the checkpoint as exported (bf16 on GPU, fp32 on CPU). FP8 is a
    TensorRT-LLM feature (QuantConfig(quant_algo=FP8) with calibration) of the trtllm
    modes, which come in a later release.
    """
    if quantization not in QUANTIZATIONS:
        raise BuildError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
    if quantization != "none" and serving_mode not in SERVING_MODES_LATER:
        raise BuildError(
            f"quantization {quantization!r} needs a TensorRT-LLM serving mode (trtllm-engine or "
            "trtllm-llmapi), which is not available in this release; use quantization='none'"
        )


def _check_output(output: str) -> None:
    """Refuse to write over anything but an empty place or an earlier build."""
    if not storage.exists(output):
        return
    if not storage.is_s3(output) and Path(output).is_dir() and not any(Path(output).iterdir()):
        return
    if not storage.exists(storage.join(output, storage.MANIFEST_NAME)):
        raise BuildError(f"output {output} exists and is not an llmft build; choose an empty location")
    previous = storage.read_manifest(output)
    if previous.producer != PRODUCER:
        raise BuildError(
            f"output {output} holds a {previous.producer} output, not a build; refusing to overwrite"
        )
    # Remove the earlier build (manifest first, so a crash midway leaves an incomplete
    # directory), so that a renamed model does not linger in the repository Triton loads.
    log.warning("replacing the earlier build at %s", output)
    storage.remove_dir(output)


def build(config: BuildConfig) -> BuildResult:
    """Build the Triton model repository for `config.serving_mode` and publish it to `config.output`."""
    if config.serving_mode in SERVING_MODES_LATER:
        raise BuildError(
            f"serving mode {config.serving_mode!r} needs the trtllm image (TensorRT-LLM) and is not "
            "available in this release; use serving_mode='hf'"
        )
    source = storage.require_complete(config.model)
    _check_output(config.output)
    checkpoint = storage.localize_dir(config.model)
    settings = HfModelSettings(
        model_name=config.model_name,
        max_new_tokens=config.max_new_tokens,
        max_batch_size=config.max_batch_size,
        instance_count=config.instance_count,
        device=config.device,
        prompt_template=config.prompt_template,
        source_digest=source.digest,
    )
    metadata = {
        "serving_mode": config.serving_mode,
        "model_name": config.model_name,
        "source_model": config.model,
        "source_digest": source.digest,
        "backend": "python",
        "device": config.device,
        "max_batch_size": config.max_batch_size,
    }
    with tempfile.TemporaryDirectory(prefix="llmft-build-") as staging:
        write_hf_repository(checkpoint, Path(staging), settings)
        manifest = storage.publish_dir(staging, config.output, producer=PRODUCER, metadata=metadata)
    result = BuildResult(
        repository=config.output,
        model_name=config.model_name,
        serving_mode=config.serving_mode,
        manifest_digest=manifest.digest,
    )
    log.info("%s", result.summary())
    return result
