"""Merge a LoRA adapter into its base model and save a standalone Hugging Face checkpoint.

The merged directory (config.json, model*.safetensors, tokenizer files) is what build
and any Hugging Face tool load. It is registered as a new MLflow model version pointing
at where it already lies (nothing is uploaded a second time), tagged with its lineage.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from components import storage
from components.model_source import BASE_MODEL_HELP, resolve_model
from components.tracking import NULL_TRACKER, Tracker

log = logging.getLogger(__name__)


class ExportError(ValueError):
    """The adapter cannot be merged into the given base model."""


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    base_model: str = Field(min_length=1, description=BASE_MODEL_HELP)
    adapter: str = Field(
        min_length=1, description="LoRA adapter directory (HF PEFT format) written by train."
    )
    output: str = Field(min_length=1, description="Directory (path or s3://) for the merged checkpoint.")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Weight dtype of the merged checkpoint (auto: the base model's)."
    )
    max_shard_size: str = Field("5GB", description="Largest safetensors shard.")
    registered_model_name: str = Field("llmft-model", description="MLflow registered model name.")
    lineage: dict[str, str] = Field(
        default_factory=dict,
        description="Tags for the model version (dataset hash, base model, run id).",
    )


class ExportResult(BaseModel):
    checkpoint: str
    manifest_digest: str
    parameters: int
    registered_model: str
    model_version: str | None

    def summary(self) -> str:
        version = f"{self.registered_model} v{self.model_version}" if self.model_version else "not registered"
        return (
            f"merged checkpoint: {self.checkpoint} ({self.parameters:,} parameters, "
            f"sha256 {self.manifest_digest[:12]})\nMLflow model version: {version}"
        )


def _adapter_base(adapter_dir: Path) -> str:
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise ExportError(f"{adapter_dir} has no adapter_config.json: not a PEFT adapter directory")
    return json.loads(config_path.read_text())["base_model_name_or_path"] or ""


def export(config: ExportConfig, tracker: Tracker = NULL_TRACKER) -> ExportResult:
    storage.check_apart(
        {"output": config.output}, {"base_model": config.base_model, "adapter": config.adapter}
    )
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = resolve_model(config.base_model)  # an llmft dir, a plain HF checkpoint (path or s3://) or hf://
    base_dir = base.local_dir
    adapter_dir = storage.localize_dir(config.adapter)
    log.info(
        "merging %s into %s (adapter trained on %s)",
        config.adapter,
        config.base_model,
        _adapter_base(adapter_dir) or "an unnamed base",
    )
    dtypes = {"auto": "auto", "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtypes[config.dtype])
    try:
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as error:
        raise ExportError(
            f"adapter {config.adapter} does not fit base model {config.base_model}: {error}"
        ) from error
    # Prefer the tokenizer saved with the adapter: it is the one training used.
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    # Always staged: the manifest then lists exactly this export's files, whatever an earlier
    # export left at the same place (shard counts change with dtype and max_shard_size).
    with tempfile.TemporaryDirectory() as staging:
        model.save_pretrained(staging, safe_serialization=True, max_shard_size=config.max_shard_size)
        tokenizer.save_pretrained(staging)
        manifest = storage.publish_dir(
            staging,
            config.output,
            producer="llmft.export",
            metadata={**base.lineage(), "adapter": config.adapter, **config.lineage},
        )
    tags = {
        **config.lineage,
        **base.lineage(),
        "adapter": config.adapter,
        "checkpoint_sha256": manifest.digest,
    }
    version = tracker.register_model_version(config.registered_model_name, config.output, tags)
    if version:
        log.info("registered %s version %s", config.registered_model_name, version)
    return ExportResult(
        checkpoint=config.output,
        manifest_digest=manifest.digest,
        parameters=sum(parameter.numel() for parameter in model.parameters()),
        registered_model=config.registered_model_name,
        model_version=version,
    )
