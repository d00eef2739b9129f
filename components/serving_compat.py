"""Which Triton image can serve which build: TRT-LLM versions and GPU architectures.

A TensorRT-LLM engine runs only on the TRT-LLM version that built it and on the GPU
architecture (SM version) it was built on. The build step records both in the model
repository's metadata; the rollout step calls `check_serving_compat` before it starts a
server, so a mismatch fails with a precise message instead of a model-load error deep in
the tensorrtllm backend's log.

`TRITON_TRTLLM_IMAGES` pairs each `nvcr.io/nvidia/tritonserver:<YY.MM>-trtllm-python-py3`
release with the `tensorrt_llm.__version__` strings its image may report: first the version
Triton's release compatibility matrix publishes (triton-inference-server/server,
docs/introduction/compatibility.md, section "Container Name: trtllm-python-py3"), then the
one NVIDIA's image recipe pins where the two differ (triton-inference-server/tensorrtllm_backend,
dockerfile/Dockerfile.triton.trt_llm_backend, `ARG TENSORRTLLM_VER` on branch r<YY.MM>).
Versions are compared by `same_trtllm_version`: PEP 440 equality, so spellings of one
version match ("1.2" and "1.2.0", "1.2.0rc8" and "1.2.0-rc.8") while a release candidate
never matches its final release: an engine runs only on the TRT-LLM build that made it.

No KFP and no TensorRT-LLM imports here: rollout runs in the base image.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from packaging.version import InvalidVersion, Version

log = logging.getLogger(__name__)

TRITON_IMAGE_REPOSITORY = "nvcr.io/nvidia/tritonserver"
TRITON_TRTLLM_TAG_SUFFIX = "-trtllm-python-py3"

# Triton release (YY.MM) -> the TensorRT-LLM versions its trtllm-python-py3 image may report:
# the matrix's first; the tensorrtllm_backend Dockerfile's TENSORRTLLM_VER after it where it
# differs (r25.11 pins 1.2.0rc2, r26.03 pins 1.2.0rc8; every other branch from r25.09 to
# r26.07 pins the matrix's version). Which of the two an NGC image reports is not published,
# so both are accepted for those two releases.
TRITON_TRTLLM_IMAGES: dict[str, tuple[str, ...]] = {
    "24.12": ("0.16.0",),
    "25.01": ("0.17.0",),
    "25.02": ("0.17.0.post1",),
    "25.03": ("0.18.0",),
    "25.04": ("0.18.2",),
    "25.05": ("0.19.0",),
    "25.06": ("0.20.0",),
    "25.07": ("0.20.0",),
    "25.08": ("0.21.0",),
    "25.09": ("1.0.0",),
    "25.10": ("1.0.0",),
    "25.11": ("1.0.3.2510", "1.2.0rc2"),
    "25.12": ("1.1.0",),
    "26.01": ("1.1.0",),
    "26.02": ("1.1.0",),
    "26.03": ("1.2.0", "1.2.0rc8"),
    "26.04": ("1.2.1",),
    "26.05": ("1.2.1",),
    "26.06": ("1.2.1",),
    "26.07": ("1.2.1",),
}

# The release the trtllm image (containers/trtllm/Dockerfile) is built FROM: the serving
# image of a build that does not name one and has no TensorRT-LLM of its own to go by.
DEFAULT_TRITON_RELEASE = "26.04"

# Serving modes whose repositories depend on the TRT-LLM version (and, for engines, the GPU).
ENGINE_MODE = "trtllm-engine"
LLMAPI_MODE = "trtllm-llmapi"
# The llmapi model runs TRT-LLM's PyTorch backend through tensorrt_llm.LLM, its default
# from TRT-LLM 1.0 on; older images default to the TensorRT engine flow.
LLMAPI_MIN_MAJOR = 1
# gpu_arch of a repository that does not depend on the GPU architecture (no engine).
ANY_ARCH = "any"

# The metadata keys build records for the TensorRT-LLM modes; rollout reads these names.
METADATA_KEYS = (
    "serving_mode",
    "trtllm_version",
    "gpu_arch",
    "tensor_parallel",
    "pipeline_parallel",
    "max_batch_size",
    "max_input_len",
    "max_seq_len",
    "max_num_tokens",
    "quantization",
    "triton_image",
)

# GPU product names as Kubernetes GPU feature discovery labels them (nvidia.com/gpu.product,
# e.g. "NVIDIA-H100-80GB-HBM3") -> CUDA compute capability as TRT-LLM names it (sm<major><minor>).
# Checked in order: the first pattern found in the upper-cased product name wins, so more
# specific names (GH200, GB200, L40S) come before the ones they contain.
_GPU_ARCH_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"GB300|B300", "sm103"),
    (r"GB200|B200|B100", "sm100"),
    (r"RTX-PRO-6000-BLACKWELL|RTX-5090|RTX-5080", "sm120"),
    (r"GH200|H200|H100|H800|H20\b|H20-", "sm90"),
    (r"L40S|L40|L4\b|L4-|L20|RTX-6000-ADA|RTX-4090|RTX-4080", "sm89"),
    (r"A100|A800|A30\b|A30-", "sm80"),
    (r"A10G|A10\b|A10-|A40|A16|A2\b|A2-|RTX-A6000|RTX-A5000|RTX-A4000|RTX-3090|RTX-3080", "sm86"),
    (r"T4\b|T4-|RTX-2080|QUADRO-RTX", "sm75"),
    (r"V100", "sm70"),
)

_RELEASE_IN_TAG = re.compile(r"^(\d{2}\.\d{2})" + re.escape(TRITON_TRTLLM_TAG_SUFFIX) + r"$")


class ServingCompatError(ValueError):
    """The serving image or GPU cannot serve this model repository."""


def triton_image(release: str) -> str:
    """The NGC reference of a Triton release's trtllm-python-py3 image."""
    return f"{TRITON_IMAGE_REPOSITORY}:{release}{TRITON_TRTLLM_TAG_SUFFIX}"


DEFAULT_TRITON_IMAGE = triton_image(DEFAULT_TRITON_RELEASE)


def _release_of(image: str) -> str:
    """The YY.MM release of a tritonserver trtllm image reference (any registry, digest allowed)."""
    name = image.split("@", 1)[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    tag = name[colon + 1 :] if colon > slash else ""
    match = _RELEASE_IN_TAG.match(tag)
    if not match:
        raise ServingCompatError(
            f"image {image!r} is not a tritonserver TensorRT-LLM image: its tag must be "
            f"<YY.MM>{TRITON_TRTLLM_TAG_SUFFIX} (e.g. {DEFAULT_TRITON_IMAGE}), so that the "
            "TRT-LLM version it carries is known"
        )
    return match.group(1)


def trtllm_versions_of_image(image: str) -> tuple[str, ...]:
    """The TRT-LLM versions a `tritonserver:<YY.MM>-trtllm-python-py3` image may report (mirrors too).

    The first is the one Triton's compatibility matrix publishes.
    """
    release = _release_of(image)
    if release not in TRITON_TRTLLM_IMAGES:
        known = f"{min(TRITON_TRTLLM_IMAGES)} to {max(TRITON_TRTLLM_IMAGES)}"
        raise ServingCompatError(
            f"image {image!r}: Triton release {release} is not in llmft's version table "
            f"(components/serving_compat.py knows {known}); add it there with the TRT-LLM version "
            "from Triton's release compatibility matrix and the one its tensorrtllm_backend "
            "Dockerfile pins"
        )
    return TRITON_TRTLLM_IMAGES[release]


def trtllm_version_of_image(image: str) -> str:
    """The TRT-LLM version Triton's compatibility matrix publishes for an image."""
    return trtllm_versions_of_image(image)[0]


def parse_trtllm_version(version: str) -> Version:
    """A TRT-LLM version string as PEP 440 reads it (what pip installed it as)."""
    try:
        return Version(version)
    except InvalidVersion as error:
        raise ServingCompatError(f"cannot read TRT-LLM version {version!r}: not a PEP 440 version") from error


def same_trtllm_version(first: str, second: str) -> bool:
    """Whether two TRT-LLM version strings name one release (PEP 440 equality; rc != final)."""
    return parse_trtllm_version(first) == parse_trtllm_version(second)


def image_runs_trtllm(image: str, trtllm_version: str) -> bool:
    """Whether `image` may carry TRT-LLM `trtllm_version`, the one an engine was built with."""
    return any(same_trtllm_version(trtllm_version, shipped) for shipped in trtllm_versions_of_image(image))


def triton_image_for(trtllm_version: str) -> str:
    """The newest tritonserver trtllm image that ships TRT-LLM `trtllm_version`."""
    releases = sorted(
        release
        for release, versions in TRITON_TRTLLM_IMAGES.items()
        if any(same_trtllm_version(trtllm_version, version) for version in versions)
    )
    if not releases:
        known = ", ".join(
            sorted({version for versions in TRITON_TRTLLM_IMAGES.values() for version in versions})
        )
        raise ServingCompatError(
            f"no tritonserver trtllm image in llmft's version table ships TRT-LLM {trtllm_version!r} "
            f"(known versions: {known}); add the tritonserver release that ships it to "
            "TRITON_TRTLLM_IMAGES in components/serving_compat.py"
        )
    return triton_image(releases[-1])


def trtllm_major(version: str) -> int:
    """The major version of a TRT-LLM version string (1 for "1.2.0rc8")."""
    return parse_trtllm_version(version).major


def gpu_arch_of(product: str) -> str:
    """The SM architecture (e.g. sm90) of a GPU product name such as "NVIDIA-H100-80GB-HBM3"."""
    name = product.strip().upper().replace(" ", "-").replace("_", "-")
    for pattern, arch in _GPU_ARCH_PATTERNS:
        if re.search(pattern, name):
            return arch
    raise ServingCompatError(
        f"unknown GPU product {product!r}: cannot tell its architecture (sm version); "
        "add it to components/serving_compat.py"
    )


def check_serving_compat(metadata: dict[str, Any], image: str, gpu_product: str | None) -> None:
    """Refuse to serve a model repository with an image or GPU it was not built for.

    `metadata` is the repository manifest's metadata written by build. `image` is the
    serving container image; `gpu_product` the GPU product name of the nodes it will run
    on (the nvidia.com/gpu.product label), or None when unknown (then the architecture is
    not checked). Serving mode hf has no TensorRT-LLM dependency and always passes.
    """
    mode = metadata.get("serving_mode")
    if mode not in (ENGINE_MODE, LLMAPI_MODE):
        return
    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise ServingCompatError(
            f"repository metadata for serving mode {mode!r} lacks {', '.join(missing)}: "
            "it was not written by this version of llmft build; rebuild it"
        )
    if metadata.get("dry_run"):
        raise ServingCompatError(
            f"the repository was written by build --dry-run (serving mode {mode!r}) and holds no "
            "engine; run the build without --dry-run"
        )
    image_versions = trtllm_versions_of_image(image)
    built_version = str(metadata["trtllm_version"])
    if mode == ENGINE_MODE and not image_runs_trtllm(image, built_version):
        raise ServingCompatError(
            f"image {image} carries TRT-LLM {' or '.join(image_versions)}, but the engine was built "
            f"with TRT-LLM {built_version}; serve it with {metadata['triton_image']} (or any image "
            f"of the same TRT-LLM version: {triton_image_for(built_version)}) or rebuild the engine"
        )
    if mode == LLMAPI_MODE and trtllm_major(image_versions[0]) < LLMAPI_MIN_MAJOR:
        raise ServingCompatError(
            f"image {image} carries TRT-LLM {image_versions[0]}; the llmapi model needs TRT-LLM "
            f">= {LLMAPI_MIN_MAJOR}.0 (PyTorch backend), e.g. {metadata['triton_image']}"
        )
    built_arch = str(metadata["gpu_arch"])
    if built_arch == ANY_ARCH:
        return
    if gpu_product is None:
        log.warning(
            "GPU product unknown: cannot check that it is %s, the architecture the engine was built for",
            built_arch,
        )
        return
    serving_arch = gpu_arch_of(gpu_product)
    if serving_arch != built_arch:
        raise ServingCompatError(
            f"GPU {gpu_product} is {serving_arch}, but the engine was built on {built_arch}; "
            f"serve it on {built_arch} GPUs or rebuild the engine on {serving_arch}"
        )
