"""Pieces of Triton's ModelConfig shared by every model repository build writes.

Each serving mode describes its models with these typed pieces and renders them with
`pbtxt.to_pbtxt`; tests parse the result back with Triton's own `ModelConfig` protobuf.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components.build.pbtxt import Ident, map_entries

MODEL_VERSION = "1"  # every model build writes is served as version 1
# The helpers llmft's python-backend models (trtllm pre/postprocessing, llmapi) import by this name.
PYTHON_UTILS_NAME = "llmft_triton_utils.py"
_PYTHON_UTILS_FILE = Path(__file__).parent / "triton_python_utils.py"

TritonDataType = Literal["TYPE_STRING", "TYPE_INT32", "TYPE_UINT64", "TYPE_FP32", "TYPE_BOOL"]
InstanceKind = Literal["KIND_AUTO", "KIND_CPU", "KIND_GPU"]


class TensorSpec(BaseModel):
    """One input or output of a Triton model."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(description="Tensor name, as clients (or the ensemble) send it.")
    data_type: TritonDataType = Field(description="Triton data type (TYPE_STRING is BYTES on the wire).")
    dims: tuple[int, ...] = Field(description="Shape without the batch dimension.")
    optional: bool = Field(default=False, description="Requests may leave this input out (inputs only).")
    scalar: bool = Field(
        default=False,
        description="Reshape [1] to a scalar per request (reshape { shape: [ ] }), as the tensorrtllm "
        "backend expects for per-request values.",
    )
    ragged: bool = Field(
        default=False, description="Requests of different lengths batch together (allow_ragged_batch)."
    )

    def fields(self, is_input: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "data_type": Ident(self.data_type), "dims": list(self.dims)}
        if is_input and self.optional:
            out["optional"] = True
        if self.scalar:
            out["reshape"] = {}  # an empty shape: the [1] value becomes a scalar
        if is_input and self.ragged:
            out["allow_ragged_batch"] = True
        return out


# What clients send every model llmft serves (hf, llmapi, the TRT-LLM ensemble). Shapes are [1]
# per batch row: with max_batch_size > 0 a request carries [batch, 1], and the generate
# endpoint turns a JSON scalar into one such row.
REQUEST_INPUTS = (
    TensorSpec(name="text_input", data_type="TYPE_STRING", dims=(1,)),
    TensorSpec(name="max_tokens", data_type="TYPE_INT32", dims=(1,), optional=True),
    TensorSpec(name="temperature", data_type="TYPE_FP32", dims=(1,), optional=True),
)
STREAM_INPUT = TensorSpec(name="stream", data_type="TYPE_BOOL", dims=(1,), optional=True)


def request_inputs(decoupled: bool) -> tuple[TensorSpec, ...]:
    """The request inputs of a served model; a decoupled one also takes `stream`."""
    return (*REQUEST_INPUTS, STREAM_INPUT) if decoupled else REQUEST_INPUTS


def tensors(specs: tuple[TensorSpec, ...], is_input: bool) -> list[dict[str, Any]]:
    return [spec.fields(is_input) for spec in specs]


def instance_group(count: int, kind: InstanceKind) -> list[dict[str, Any]]:
    return [{"count": count, "kind": Ident(kind)}]


def string_parameters(values: Mapping[str, str]) -> list[dict[str, Any]]:
    """ModelConfig.parameters: every value is a string (backends parse numbers and booleans)."""
    return map_entries({key: {"string_value": value} for key, value in values.items()})


def flag(value: bool) -> str:
    """A boolean as the tensorrtllm backend and our python models read it."""
    return "true" if value else "false"


def install_python_model(model_file: Path, version_dir: Path) -> None:
    """Put a python-backend model (as `model.py`) and the helpers it imports into its version directory."""
    shutil.copyfile(model_file, version_dir / "model.py")
    shutil.copyfile(_PYTHON_UTILS_FILE, version_dir / PYTHON_UTILS_NAME)
