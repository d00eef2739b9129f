"""Build step: turn a merged HF checkpoint into a Triton model repository.

Three serving modes, one client contract (`text_input`, `max_tokens`, `temperature` ->
`text_output`):

- `hf`: a python-backend model running the checkpoint with transformers; CPU or GPU,
  what `llmft local` serves.
- `trtllm-engine`: a TensorRT-LLM engine built with the LLM API (`trtllm_engine.py`,
  optionally FP8 with calibration) behind tensorrtllm_backend's in-flight batching
  ensemble (`triton_trtllm.py`). Needs the trtllm image and a GPU; the engine is tied to
  the TRT-LLM version and GPU architecture, which the repository's metadata records for
  rollout (`components.serving_compat`).
- `trtllm-llmapi`: no engine: the checkpoint served by TRT-LLM's PyTorch backend through
  a python-backend model with a model.yaml of LLM() arguments (`triton_llmapi.py`).
  Writing it needs no TensorRT-LLM; serving it does.

`dry_run` writes the repository without building an engine and returns the TensorRT-LLM
calls the build would make, so a plan can be reviewed anywhere.

The repository is staged locally and published with `storage.publish_dir`, so the
manifest is written last and rollout refuses a half-written repository.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components import jsonout, serving_compat, storage
from components.build.triton_hf import (
    ContextLengthError,
    HfModelSettings,
    context_length,
    write_hf_repository,
)
from components.build.triton_llmapi import LlmapiSettings, llm_args, write_llmapi_repository
from components.build.triton_trtllm import COMPOSING_MODELS, EnsembleSettings, write_ensemble_repository
from components.build.trtllm_engine import (
    Trtllm,
    TrtllmUnavailableError,
    detect_gpu_arch,
    engine_build_plan,
    load_trtllm,
    run_engine_build,
)
from components.build.trtllm_settings import TritonTrtllmSettings, TrtllmSettings
from components.images import ImagesConfigError, image_for_step
from components.model_source import MODEL_HELP, resolve_model
from components.prompt import PROMPT_TEMPLATE

log = logging.getLogger(__name__)

PRODUCER = "llmft.build"
ENGINE_MODE = serving_compat.ENGINE_MODE
LLMAPI_MODE = serving_compat.LLMAPI_MODE
TRTLLM_MODES = (ENGINE_MODE, LLMAPI_MODE)
ENGINE_METADATA_NAME = "engine_metadata.json"
UNKNOWN_ARCH = "unknown"  # a dry run builds nothing, so no GPU is looked at


class BuildError(ValueError):
    """The build cannot run with these settings (unsupported mode, unusable output, no TensorRT-LLM)."""


class BuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(description=f"Merged model to serve: {MODEL_HELP}.")
    output: str = Field(description="Where to write the Triton model repository (path or s3://).")
    serving_mode: Literal["hf", "trtllm-engine", "trtllm-llmapi"] = Field(
        default="hf",
        description="hf: Triton python backend with transformers (CPU or GPU). trtllm-engine: "
        "TensorRT-LLM engine + in-flight batching ensemble (trtllm image, GPU). trtllm-llmapi: "
        "TRT-LLM PyTorch backend serving the checkpoint, no engine.",
    )
    quantization: Literal["none", "fp8"] = Field(
        default="none",
        description="fp8: FP8 weights and activations, calibrated at engine build (trtllm-engine only).",
    )
    model_name: str = Field(
        default="llm",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Triton model name: the URL path segment in /v2/models/<name>/...",
    )
    max_new_tokens: int = Field(
        default=64, ge=1, description="Tokens generated for requests without max_tokens."
    )
    max_tokens_limit: int | None = Field(
        default=None,
        ge=1,
        description="Largest max_tokens a request may send (larger ones get HTTP 400); at least "
        "max_new_tokens. Empty: what the context holds after a one-token prompt (hf: the checkpoint's "
        "max_position_embeddings - 1; TensorRT-LLM modes: trtllm.max_seq_len - 1).",
    )
    max_batch_size: int = Field(
        default=8,
        ge=0,
        description="Largest batch: hf: Triton's max_batch_size (rows per batch; 0 disables batching); "
        "TensorRT-LLM: requests batched in flight, the engine's / LLM's max_batch_size (at least 1; "
        "each request carries one prompt, see components/build/README.md, Batching behaviour).",
    )
    instance_count: int = Field(
        default=1, ge=1, description="hf: model instances Triton runs (per GPU on GPUs)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="hf: where the model runs; auto picks a GPU when Triton sees one, else the CPU.",
    )
    prompt_template: str = Field(
        default=PROMPT_TEMPLATE,
        description="Prompt template with a {prompt} placeholder; must be the one used in training.",
    )
    triton_image: str = Field(
        default="",
        description="TensorRT-LLM modes: the tritonserver <YY.MM>-trtllm-python-py3 image that will serve "
        "the repository. Empty: the newest one carrying the TRT-LLM that built the engine "
        f"(trtllm-llmapi and dry runs: {serving_compat.DEFAULT_TRITON_IMAGE}).",
    )
    dry_run: bool = Field(
        default=False,
        description="Write the repository without building an engine and report the TensorRT-LLM calls "
        "the build would make; needs no TensorRT-LLM and no GPU.",
    )
    trtllm: TrtllmSettings = Field(
        default_factory=TrtllmSettings, description="TensorRT-LLM engine / LLM() settings."
    )
    triton: TritonTrtllmSettings = Field(
        default_factory=TritonTrtllmSettings, description="Triton settings of the TensorRT-LLM models."
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

    @field_validator("triton_image")
    @classmethod
    def _known_image(cls, image: str) -> str:
        if image:
            serving_compat.trtllm_version_of_image(image)  # its ServingCompatError names the problem
        return image

    @model_validator(mode="after")
    def _mode_supports_settings(self) -> BuildConfig:
        mode, trtllm, triton = self.serving_mode, self.trtllm, self.triton
        if self.quantization == "fp8" and mode != ENGINE_MODE:
            reason = (
                "trtllm-llmapi serves the checkpoint as exported (TRT-LLM's PyTorch backend quantizes "
                "nothing itself)"
                if mode == LLMAPI_MODE
                else "FP8 is a TensorRT-LLM feature"
            )
            raise ValueError(
                f"quantization='fp8' needs serving_mode='trtllm-engine' (calibrated at engine build), "
                f"not {mode!r}: {reason}"
            )
        if trtllm.fp8_kv_cache and mode != ENGINE_MODE:
            raise ValueError(f"trtllm.fp8_kv_cache needs serving_mode='trtllm-engine', not {mode!r}")
        if mode not in TRTLLM_MODES:
            return self
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1 for serving_mode {mode!r}, not 0")
        if self.max_new_tokens >= trtllm.max_seq_len:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) must be below "
                f"trtllm.max_seq_len ({trtllm.max_seq_len})"
            )
        limit = self.max_tokens_limit
        if limit is not None and not self.max_new_tokens <= limit < trtllm.max_seq_len:
            raise ValueError(
                f"max_tokens_limit ({limit}) must be at least max_new_tokens ({self.max_new_tokens}) "
                f"and below trtllm.max_seq_len ({trtllm.max_seq_len})"
            )
        if mode == LLMAPI_MODE:
            image = self.triton_image or serving_compat.DEFAULT_TRITON_IMAGE
            version = serving_compat.trtllm_version_of_image(image)
            if serving_compat.trtllm_major(version) < serving_compat.LLMAPI_MIN_MAJOR:
                raise ValueError(
                    f"triton_image {image!r} carries TRT-LLM {version}; trtllm-llmapi needs TRT-LLM >= 1.0"
                )
            return self
        if self.model_name in COMPOSING_MODELS:
            raise ValueError(
                f"model_name {self.model_name!r} is taken by a model of the TensorRT-LLM ensemble "
                f"({', '.join(COMPOSING_MODELS)}); choose another"
            )
        if triton.batching_strategy == "inflight_fused_batching" and not trtllm.paged_kv_cache:
            raise ValueError(
                "triton.batching_strategy 'inflight_fused_batching' needs trtllm.paged_kv_cache=true "
                "(in-flight batching runs on the paged KV cache)"
            )
        if triton.batching_strategy == "inflight_fused_batching" and trtllm.gpt_attention_plugin == "disable":
            raise ValueError(
                "triton.batching_strategy 'inflight_fused_batching' needs the attention plugin: "
                "trtllm.gpt_attention_plugin cannot be 'disable'"
            )
        wants_paged_context = {
            "triton.enable_kv_cache_reuse": triton.enable_kv_cache_reuse,
            "triton.enable_chunked_context": triton.enable_chunked_context,
        }
        for name, enabled in wants_paged_context.items():
            if enabled and not trtllm.use_paged_context_fmha:
                raise ValueError(f"{name}=true needs an engine built with trtllm.use_paged_context_fmha=true")
        return self


class BuildResult(BaseModel):
    repository: str = Field(description="URI of the published Triton model repository.")
    model_name: str = Field(description="Triton model name inside the repository (the one clients call).")
    serving_mode: str = Field(description="Serving mode the repository was built for.")
    manifest_digest: str = Field(description="Digest of the repository's manifest (its identity).")
    metadata: dict[str, Any] = Field(description="The manifest's metadata (what rollout checks).")
    dry_run: bool = Field(default=False, description="True: written without an engine, nothing built.")
    plan: str = Field(default="", description="TensorRT-LLM calls of the build (YAML); empty for hf.")

    def summary(self) -> str:
        lines = [
            f"{'Dry run: ' if self.dry_run else ''}Triton model repository ({self.serving_mode}) "
            f"at {self.repository}",
            f"  model: {self.model_name}  digest: {self.manifest_digest[:16]}",
        ]
        if self.serving_mode in TRTLLM_MODES:
            meta = self.metadata
            lines.append(
                f"  TRT-LLM {meta['trtllm_version']} on {meta['gpu_arch']}, serve with {meta['triton_image']}"
            )
        if self.dry_run and self.serving_mode == ENGINE_MODE:
            lines.append("  no engine was built; the build would make these TensorRT-LLM calls:")
        elif self.plan:
            lines.append("  TensorRT-LLM calls:")
        lines.extend(f"    {line}" for line in self.plan.splitlines())
        return "\n".join(lines)


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


def _trtllm_image_reference() -> str:
    try:
        return image_for_step("build")
    except ImagesConfigError:
        return "the trtllm image of containers/images.yaml"


def _require_trtllm(config: BuildConfig) -> Trtllm:
    """Import TensorRT-LLM for an engine build, or explain where the build has to run."""
    try:
        return load_trtllm()
    except TrtllmUnavailableError as error:
        raise BuildError(
            f"serving mode {config.serving_mode!r} builds a TensorRT-LLM engine, and TensorRT-LLM is not "
            f"installed here ({error}). Run the build step in the trtllm image "
            f"({_trtllm_image_reference()}, built FROM {serving_compat.DEFAULT_TRITON_IMAGE}) on a GPU "
            "node, or pass --dry-run to write the repository and see the build plan without an engine"
        ) from error


def _trtllm_metadata(
    config: BuildConfig, trtllm_version: str, gpu_arch: str, triton_image: str
) -> dict[str, Any]:
    trtllm = config.trtllm
    return {
        "trtllm_version": trtllm_version,
        "gpu_arch": gpu_arch,
        "tensor_parallel": trtllm.tensor_parallel_size,
        "pipeline_parallel": trtllm.pipeline_parallel_size,
        "max_batch_size": config.max_batch_size,
        "max_input_len": trtllm.max_input_len,
        "max_seq_len": trtllm.max_seq_len,
        "max_num_tokens": trtllm.max_num_tokens,
        "quantization": config.quantization,
        "kv_cache_quantization": "fp8" if trtllm.fp8_kv_cache else "none",
        "triton_image": triton_image,
        "decoupled": config.triton.decoupled,
        "dry_run": config.dry_run,
    }


def _hf_settings(config: BuildConfig, checkpoint: Path, source_digest: str) -> HfModelSettings:
    """The hf model's settings; request limits come from the checkpoint's context length."""
    try:
        context = context_length(checkpoint / "config.json")
        return HfModelSettings(
            model_name=config.model_name,
            max_new_tokens=config.max_new_tokens,
            max_batch_size=config.max_batch_size,
            instance_count=config.instance_count,
            device=config.device,
            prompt_template=config.prompt_template,
            context_length=context,
            max_tokens_limit=config.max_tokens_limit,
            source_digest=source_digest,
        )
    except ContextLengthError as error:
        raise BuildError(f"model {config.model}: {error}") from None
    except ValidationError as error:
        reasons = "; ".join(item["msg"].removeprefix("Value error, ") for item in error.errors())
        raise BuildError(f"model {config.model} (context length {context}): {reasons}") from None


def _build_hf(config: BuildConfig, checkpoint: Path, staging: Path, source_digest: str) -> tuple[dict, str]:
    settings = _hf_settings(config, checkpoint, source_digest)
    write_hf_repository(checkpoint, staging, settings)
    return {
        "backend": "python",
        "device": config.device,
        "max_batch_size": config.max_batch_size,
        "context_length": settings.context_length,
        "max_tokens_limit": settings.resolved_max_tokens_limit,
    }, ""


def _build_llmapi(
    config: BuildConfig, checkpoint: Path, staging: Path, source_digest: str
) -> tuple[dict, str]:
    settings = LlmapiSettings(
        model_name=config.model_name,
        max_batch_size=config.max_batch_size,
        max_new_tokens=config.max_new_tokens,
        prompt_template=config.prompt_template,
        max_tokens_limit=config.max_tokens_limit,
        trtllm=config.trtllm,
        triton=config.triton,
        source_digest=source_digest,
    )
    write_llmapi_repository(checkpoint, staging, settings)
    image = config.triton_image or serving_compat.DEFAULT_TRITON_IMAGE
    metadata = _trtllm_metadata(
        config, serving_compat.trtllm_version_of_image(image), serving_compat.ANY_ARCH, image
    )
    # No build-time calls: the plan is the LLM() call the served model makes at load time.
    plan = yaml.safe_dump(
        [{f"tensorrt_llm.LLM (at model load, {config.model_name}/1/model.yaml)": llm_args(settings)}],
        sort_keys=False,
    )
    return metadata, plan


def _engine_image(config: BuildConfig, trtllm_version: str) -> str:
    if not config.triton_image:
        return serving_compat.triton_image_for(trtllm_version)
    # Same normalised rule as rollout's check_serving_compat: the image may report any of its
    # table versions (a release candidate where the matrix names the final release).
    if not serving_compat.image_runs_trtllm(config.triton_image, trtllm_version):
        image_versions = " or ".join(serving_compat.trtllm_versions_of_image(config.triton_image))
        raise BuildError(
            f"triton_image {config.triton_image!r} carries TRT-LLM {image_versions}, but this build runs "
            f"TRT-LLM {trtllm_version}: its engine could not load there; leave triton_image empty or "
            f"name an image with TRT-LLM {trtllm_version}"
        )
    return config.triton_image


@dataclass(frozen=True)
class EngineTarget:
    """What an engine build runs with and is tied to; trtllm is None in a dry run."""

    trtllm: Trtllm | None
    trtllm_version: str
    triton_image: str
    gpu_arch: str


def _engine_target(config: BuildConfig) -> EngineTarget:
    """Resolve TensorRT-LLM, the serving image and the GPU before anything is read or replaced."""
    if config.dry_run:
        image = config.triton_image or serving_compat.DEFAULT_TRITON_IMAGE
        return EngineTarget(None, serving_compat.trtllm_version_of_image(image), image, UNKNOWN_ARCH)
    trtllm = _require_trtllm(config)
    image = _engine_image(config, trtllm.version)
    try:
        arch = detect_gpu_arch()
    except RuntimeError as error:
        raise BuildError(str(error)) from error
    return EngineTarget(trtllm, trtllm.version, image, arch)


def _build_engine(
    config: BuildConfig, target: EngineTarget, checkpoint: Path, staging: Path, source_digest: str
) -> tuple[dict, str]:
    settings = EnsembleSettings(
        model_name=config.model_name,
        max_batch_size=config.max_batch_size,
        max_new_tokens=config.max_new_tokens,
        max_input_len=config.trtllm.max_input_len,
        max_seq_len=config.trtllm.max_seq_len,
        max_tokens_limit=config.max_tokens_limit,
        prompt_template=config.prompt_template,
        triton=config.triton,
        source_digest=source_digest,
    )
    engine_dir = write_ensemble_repository(checkpoint, staging, settings)
    plan = engine_build_plan(
        config.trtllm,
        config.quantization,
        config.max_batch_size,
        str(checkpoint),
        engine_dir.relative_to(staging).as_posix(),
    )
    if target.trtllm is not None:
        run_engine_build(plan, target.trtllm, staging)
    metadata = {
        **_trtllm_metadata(config, target.trtllm_version, target.gpu_arch, target.triton_image),
        "engine_path": settings.engine_path,
        "model_repository_path": config.triton.model_repository_path,
    }
    return metadata, plan.to_yaml()


def build(config: BuildConfig) -> BuildResult:
    """Build the Triton model repository for `config.serving_mode` and publish it to `config.output`."""
    storage.check_apart({"output": config.output}, {"model": config.model})
    # Before anything is read or written: an engine build outside the trtllm image fails here.
    target = _engine_target(config) if config.serving_mode == ENGINE_MODE else None
    # An llmft export, a plain HF checkpoint (path or s3://) or hf://: checked before the output is touched.
    source = resolve_model(config.model)
    _check_output(config.output)
    checkpoint = source.local_dir
    with tempfile.TemporaryDirectory(prefix="llmft-build-") as staging_dir:
        staging = Path(staging_dir)
        if config.serving_mode == "hf":
            mode_metadata, plan = _build_hf(config, checkpoint, staging, source.digest)
        elif config.serving_mode == LLMAPI_MODE:
            mode_metadata, plan = _build_llmapi(config, checkpoint, staging, source.digest)
        else:
            assert target is not None  # resolved above for this mode
            mode_metadata, plan = _build_engine(config, target, checkpoint, staging, source.digest)
        metadata = {
            "serving_mode": config.serving_mode,
            "model_name": config.model_name,
            "source_model": config.model,
            "source_digest": source.digest,
            **({"source_revision": source.revision} if source.revision else {}),
            **mode_metadata,
        }
        if config.serving_mode in TRTLLM_MODES:
            (staging / ENGINE_METADATA_NAME).write_text(
                jsonout.dumps(metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8"
            )
        manifest = storage.publish_dir(staging, config.output, producer=PRODUCER, metadata=metadata)
    result = BuildResult(
        repository=config.output,
        model_name=config.model_name,
        serving_mode=config.serving_mode,
        manifest_digest=manifest.digest,
        metadata=metadata,
        dry_run=config.dry_run,
        plan=plan,
    )
    log.info("%s", result.summary())
    return result
