"""Build a TensorRT-LLM engine from a merged HF checkpoint with TRT-LLM's LLM API.

Why the LLM API and not convert_checkpoint.py + trtllm-build: one in-process call path
(`LLM(model=<hf dir>, build_config=..., quant_config=..., calib_config=...)` then
`llm.save(dir)`) converts, quantizes (FP8 with calibration through ModelOpt) and builds,
for every architecture TRT-LLM supports, without a per-model conversion script to pick
and a second CLI whose flags drift between releases.

In TRT-LLM >= 1.0, `tensorrt_llm.LLM` is the PyTorch backend and refuses `build_config`;
the engine flow is `tensorrt_llm._tensorrt_engine.LLM`. Before 1.0 (tritonserver <= 25.08)
that module does not exist and `tensorrt_llm.LLM` is the engine flow itself.

`engine_build_plan` is pure: it turns settings into the exact calls (`EngineBuildPlan`),
which `--dry-run` prints and `run_engine_build` executes. TensorRT-LLM is imported only in
`load_trtllm`, inside the trtllm image.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from components.build.trtllm_settings import TrtllmSettings

log = logging.getLogger(__name__)

ENGINE_LLM_MODULE = "tensorrt_llm._tensorrt_engine"
LEGACY_LLM_MODULE = "tensorrt_llm"  # TRT-LLM < 1.0: LLM there builds engines
LLMAPI_MODULE = "tensorrt_llm.llmapi"
FP8 = "FP8"


class TrtllmUnavailableError(ImportError):
    """TensorRT-LLM cannot be imported here (it ships only in the trtllm image)."""


class EngineBuildPlan(BaseModel):
    """Every TensorRT-LLM call of one engine build, with its arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    checkpoint: str = Field(description="Local merged HF checkpoint directory (LLM's model argument).")
    engine_dir: str = Field(
        description="Where llm.save writes the engine (rank<N>.engine, config.json), in the repository."
    )
    build_config: dict[str, int] = Field(description="BuildConfig(...) keyword arguments.")
    plugin_config: dict[str, Any] = Field(
        description="Attributes set on build_config.plugin_config (None: plugin disabled)."
    )
    quant_config: dict[str, str | None] | None = Field(
        description="QuantConfig(...) arguments as QuantAlgo member names; None: no quantization."
    )
    calib_config: dict[str, Any] | None = Field(
        description="CalibConfig(...) arguments; None: no calibration."
    )
    llm_kwargs: dict[str, Any] = Field(
        description="Other LLM(...) arguments (parallelism, dtype) beside model and the configs."
    )

    def calls(self) -> list[dict[str, Any]]:
        """The calls in order, as readable data (what --dry-run prints as YAML)."""
        steps: list[dict[str, Any]] = [
            {f"{LLMAPI_MODULE}.BuildConfig": dict(self.build_config)},
            {"build_config.plugin_config (attributes)": dict(self.plugin_config)},
        ]
        llm_args: dict[str, Any] = {"model": self.checkpoint, "build_config": "<BuildConfig above>"}
        if self.quant_config is not None:
            steps.append(
                {
                    f"{LLMAPI_MODULE}.QuantConfig": {
                        key: (f"QuantAlgo.{value}" if value else None)
                        for key, value in self.quant_config.items()
                    }
                }
            )
            llm_args["quant_config"] = "<QuantConfig above>"
        if self.calib_config is not None:
            steps.append({f"{LLMAPI_MODULE}.CalibConfig": dict(self.calib_config)})
            llm_args["calib_config"] = "<CalibConfig above>"
        llm_args.update(self.llm_kwargs)
        steps.append({f"{ENGINE_LLM_MODULE}.LLM": llm_args})
        steps.append({"llm.save": {"engine_dir": f"<repository>/{self.engine_dir}"}})
        steps.append({"llm.shutdown": {}})
        return steps

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.calls(), sort_keys=False, default_flow_style=False)


def _plugin(value: str) -> str | None:
    # TRT-LLM's plugin options spell "off" as None ("disable" on the trtllm-build CLI).
    return None if value == "disable" else value


def engine_build_plan(
    settings: TrtllmSettings, quantization: str, max_batch_size: int, checkpoint: str, engine_dir: str
) -> EngineBuildPlan:
    """The TensorRT-LLM calls that build the engine `settings` describe (pure)."""
    kv_cache_algo = FP8 if settings.fp8_kv_cache else None
    weights_algo = FP8 if quantization == "fp8" else None
    quantized = weights_algo is not None or kv_cache_algo is not None
    return EngineBuildPlan(
        checkpoint=checkpoint,
        engine_dir=engine_dir,
        build_config={
            "max_batch_size": max_batch_size,
            "max_input_len": settings.max_input_len,
            "max_seq_len": settings.max_seq_len,
            "max_num_tokens": settings.max_num_tokens,
            "max_beam_width": 1,
        },
        plugin_config={
            "gemm_plugin": _plugin(settings.gemm_plugin),
            "gpt_attention_plugin": _plugin(settings.gpt_attention_plugin),
            "paged_kv_cache": settings.paged_kv_cache,
            "use_paged_context_fmha": settings.use_paged_context_fmha,
        },
        quant_config={"quant_algo": weights_algo, "kv_cache_quant_algo": kv_cache_algo}
        if quantized
        else None,
        # FP8 scales come from running calibration data through the model (ModelOpt).
        calib_config={
            "calib_dataset": settings.calib_dataset,
            "calib_batches": settings.calib_batches,
            "calib_batch_size": settings.calib_batch_size,
            "calib_max_seq_length": settings.calib_max_seq_length,
        }
        if quantized
        else None,
        llm_kwargs={
            "tensor_parallel_size": settings.tensor_parallel_size,
            "pipeline_parallel_size": settings.pipeline_parallel_size,
            "dtype": settings.dtype,
        },
    )


@dataclass(frozen=True)
class Trtllm:
    """The TensorRT-LLM entry points an engine build uses."""

    version: str
    llm_class: Any
    llmapi: ModuleType


def load_trtllm() -> Trtllm:
    """Import TensorRT-LLM (slow: it initialises CUDA libraries); raise if it is not installed."""
    try:
        package = importlib.import_module("tensorrt_llm")
        llmapi = importlib.import_module(LLMAPI_MODULE)
    except ImportError as error:
        raise TrtllmUnavailableError(str(error)) from error
    try:
        llm_class = importlib.import_module(ENGINE_LLM_MODULE).LLM
    except ModuleNotFoundError:
        llm_class = package.LLM  # TRT-LLM < 1.0
    return Trtllm(version=str(package.__version__), llm_class=llm_class, llmapi=llmapi)


def detect_gpu_arch() -> str:
    """The SM architecture (e.g. sm90) of GPU 0, the one the engine is built on."""
    import torch  # in the trtllm image next to TensorRT-LLM

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU is visible: a TensorRT-LLM engine is built on the GPU it will run on")
    major, minor = torch.cuda.get_device_capability(0)
    return f"sm{major}{minor}"


def run_engine_build(plan: EngineBuildPlan, trtllm: Trtllm, repository_dir: Path) -> Path:
    """Execute `plan`: build the engine with the LLM API and save it under `repository_dir`."""
    api = trtllm.llmapi
    build_config = api.BuildConfig(**plan.build_config)
    for name, value in plan.plugin_config.items():
        setattr(build_config.plugin_config, name, value)
    extra: dict[str, Any] = {}
    if plan.quant_config is not None:
        extra["quant_config"] = api.QuantConfig(
            **{
                key: getattr(api.QuantAlgo, value) if value else None
                for key, value in plan.quant_config.items()
            }
        )
    if plan.calib_config is not None:
        extra["calib_config"] = api.CalibConfig(**plan.calib_config)
    log.info("building the TensorRT-LLM %s engine from %s", trtllm.version, plan.checkpoint)
    llm = trtllm.llm_class(model=plan.checkpoint, build_config=build_config, **extra, **plan.llm_kwargs)
    engine_dir = repository_dir / plan.engine_dir
    try:
        engine_dir.mkdir(parents=True, exist_ok=True)
        llm.save(str(engine_dir))
    finally:
        llm.shutdown()
    log.info("engine saved to %s", engine_dir)
    return engine_dir
