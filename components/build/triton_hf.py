"""The Triton model repository of serving mode `hf`: python backend + transformers.

Layout written by `write_hf_repository` (self-contained, so it can be served from S3):

    <model_name>/config.pbtxt        backend "python", the generate-extension tensors
    <model_name>/1/model.py          a copy of `triton_hf_model.py` (shipped as package data)
    <model_name>/1/checkpoint/...    the merged HF checkpoint + tokenizer

Tensor names follow Triton's generate extension (and the TRT-LLM ensemble's names), so
`POST /v2/models/<name>/generate {"text_input": ..., "max_tokens": ...}` returns
`{"text_output": ...}` and a client can move between serving modes unchanged.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.build.pbtxt import to_pbtxt
from components.build.triton_config import (
    MODEL_VERSION,
    REQUEST_INPUTS,
    InstanceKind,
    TensorSpec,
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


class HfModelSettings(BaseModel):
    """Everything config.pbtxt of the hf python-backend model says."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field(description="Triton model name (the directory name in the repository).")
    max_new_tokens: int = Field(ge=1, description="Tokens generated when a request has no max_tokens.")
    max_batch_size: int = Field(ge=0, description="Largest batch Triton forms; 0 turns batching off.")
    instance_count: int = Field(ge=1, description="Model instances (per GPU when on GPUs).")
    device: Literal["auto", "cpu", "cuda"] = Field(description="Where model.py runs the model.")
    prompt_template: str = Field(description="Template with {prompt}; model.py renders requests with it.")
    source_digest: str = Field(default="", description="Manifest digest of the checkpoint, for lineage.")


def model_config_fields(settings: HfModelSettings) -> dict[str, Any]:
    """The ModelConfig message (as a mapping for `to_pbtxt`) of the hf model."""
    parameters = {
        "prompt_template": settings.prompt_template,
        "max_new_tokens": str(settings.max_new_tokens),
        "device": settings.device,
        "checkpoint": CHECKPOINT_DIRNAME,
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
    shutil.copyfile(MODEL_FILE, version_dir / "model.py")
    shutil.copytree(
        checkpoint_dir, version_dir / CHECKPOINT_DIRNAME, ignore=shutil.ignore_patterns(MANIFEST_NAME)
    )
    log.info("wrote Triton model %s (python backend) with checkpoint %s", settings.model_name, checkpoint_dir)
    return model_dir
