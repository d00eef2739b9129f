"""Which tritonserver image and GPU can serve a build: the version table, architectures, the check."""

from __future__ import annotations

import logging
import re

import pytest

from components import serving_compat
from components.build import build as build_module
from components.build.build import BuildConfig, BuildError
from components.serving_compat import (
    DEFAULT_TRITON_IMAGE,
    METADATA_KEYS,
    TRITON_TRTLLM_IMAGES,
    ServingCompatError,
    check_serving_compat,
    gpu_arch_of,
    image_runs_trtllm,
    same_trtllm_version,
    triton_image_for,
    trtllm_version_of_image,
    trtllm_versions_of_image,
)


def engine_metadata(**overrides) -> dict:
    metadata = {
        "serving_mode": "trtllm-engine",
        "trtllm_version": "1.2.1",
        "gpu_arch": "sm90",
        "tensor_parallel": 1,
        "pipeline_parallel": 1,
        "max_batch_size": 8,
        "max_input_len": 1024,
        "max_seq_len": 2048,
        "max_num_tokens": 8192,
        "quantization": "fp8",
        "triton_image": "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3",
        "dry_run": False,
    }
    return {**metadata, **overrides}


def test_version_table_matches_tritons_compatibility_matrix():
    # Spot checks against Triton's published matrix (docs/introduction/compatibility.md): the
    # matrix's version comes first for every release.
    assert TRITON_TRTLLM_IMAGES["24.12"] == ("0.16.0",)
    assert TRITON_TRTLLM_IMAGES["25.02"] == ("0.17.0.post1",)
    assert TRITON_TRTLLM_IMAGES["25.08"] == ("0.21.0",)
    assert TRITON_TRTLLM_IMAGES["25.10"] == ("1.0.0",)
    assert all(TRITON_TRTLLM_IMAGES[release] == ("1.1.0",) for release in ("25.12", "26.01", "26.02"))
    assert all(
        TRITON_TRTLLM_IMAGES[release] == ("1.2.1",) for release in ("26.04", "26.05", "26.06", "26.07")
    )
    assert list(TRITON_TRTLLM_IMAGES) == sorted(TRITON_TRTLLM_IMAGES)
    # The default serving image is the one containers/trtllm/Dockerfile builds FROM.
    assert DEFAULT_TRITON_IMAGE == "nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3"


def test_version_table_has_the_release_candidates_nvidias_dockerfiles_install():
    # tensorrtllm_backend r25.11 / r26.03, dockerfile/Dockerfile.triton.trt_llm_backend:
    # ARG TENSORRTLLM_VER=1.2.0rc2 / 1.2.0rc8, where the matrix says 1.0.3.2510 / 1.2.0.
    assert TRITON_TRTLLM_IMAGES["25.11"] == ("1.0.3.2510", "1.2.0rc2")
    assert TRITON_TRTLLM_IMAGES["26.03"] == ("1.2.0", "1.2.0rc8")
    assert trtllm_version_of_image("nvcr.io/nvidia/tritonserver:26.03-trtllm-python-py3") == "1.2.0"


REPORTED_VERSIONS = [
    (release, version) for release, versions in TRITON_TRTLLM_IMAGES.items() for version in versions
]


@pytest.mark.parametrize(("release", "reported"), REPORTED_VERSIONS)
def test_an_engine_built_with_each_reported_version_serves_on_its_image(release, reported):
    image = serving_compat.triton_image(release)
    assert reported in trtllm_versions_of_image(image)
    assert image_runs_trtllm(image, reported)
    # The image build picks for that version runs it too (the newest release shipping it).
    assert image_runs_trtllm(triton_image_for(reported), reported)
    metadata = engine_metadata(trtllm_version=reported, triton_image=image)
    check_serving_compat(metadata, image, "NVIDIA-H100-80GB-HBM3")


@pytest.mark.parametrize(
    ("built", "image_release"),
    [
        ("1.2.0rc8", "26.04"),  # a release candidate is not the final release of the next image
        ("1.2.0rc2", "26.03"),  # nor another release candidate
        ("1.2.1", "26.03"),
        ("1.0.0", "25.11"),
    ],
)
def test_other_trtllm_builds_are_refused(built, image_release):
    image = serving_compat.triton_image(image_release)
    assert not image_runs_trtllm(image, built)
    with pytest.raises(ServingCompatError, match=f"built with TRT-LLM {re.escape(built)}"):
        check_serving_compat(engine_metadata(trtllm_version=built), image, None)


def test_versions_compare_by_pep_440_not_by_string():
    assert same_trtllm_version("1.2.0rc8", "1.2.0-rc.8")
    assert same_trtllm_version("1.2", "1.2.0")
    assert same_trtllm_version("0.17.0.post1", "0.17.0-post1")
    assert not same_trtllm_version("1.2.0rc8", "1.2.0")
    assert not same_trtllm_version("1.2.1", "1.2.1+cu130")  # another build of it
    # Each spelling of a version an image reports finds that image.
    assert triton_image_for("1.2.0-rc8") == "nvcr.io/nvidia/tritonserver:26.03-trtllm-python-py3"
    assert triton_image_for("1.2.0rc2") == "nvcr.io/nvidia/tritonserver:25.11-trtllm-python-py3"
    with pytest.raises(ServingCompatError, match="cannot read TRT-LLM version 'main-dev'"):
        same_trtllm_version("main-dev", "1.2.1")


@pytest.mark.parametrize(("release", "reported"), [("25.11", "1.2.0rc2"), ("26.03", "1.2.0rc8")])
def test_build_accepts_an_image_that_reports_its_release_candidate(release, reported, tmp_path):
    image = serving_compat.triton_image(release)
    config = BuildConfig(
        model=str(tmp_path / "model"),
        output=str(tmp_path / "out"),
        serving_mode="trtllm-engine",
        triton_image=image,
    )
    assert build_module._engine_image(config, reported) == image
    with pytest.raises(
        BuildError, match=rf"carries TRT-LLM {re.escape(' or '.join(TRITON_TRTLLM_IMAGES[release]))}"
    ):
        build_module._engine_image(config, "1.2.1")


def test_image_versions_and_images_for_versions():
    assert trtllm_version_of_image("nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3") == "1.1.0"
    # Mirrors and digests keep the tag, and the tag is what tells the version.
    mirrored = "123.dkr.ecr.us-east-1.amazonaws.com/tritonserver:24.12-trtllm-python-py3@sha256:" + "a" * 64
    assert trtllm_version_of_image(mirrored) == "0.16.0"
    assert triton_image_for("1.1.0") == "nvcr.io/nvidia/tritonserver:26.02-trtllm-python-py3"  # newest
    assert triton_image_for("0.16.0") == "nvcr.io/nvidia/tritonserver:24.12-trtllm-python-py3"
    with pytest.raises(ServingCompatError, match=r"ships TRT-LLM '9\.9\.9'"):
        triton_image_for("9.9.9")
    with pytest.raises(ServingCompatError, match="not a tritonserver TensorRT-LLM image"):
        trtllm_version_of_image("nvcr.io/nvidia/tritonserver:25.12-py3")
    with pytest.raises(ServingCompatError, match=r"release 23\.10 is not in llmft's version table"):
        trtllm_version_of_image("nvcr.io/nvidia/tritonserver:23.10-trtllm-python-py3")


@pytest.mark.parametrize(
    ("product", "arch"),
    [
        ("NVIDIA-H100-80GB-HBM3", "sm90"),
        ("NVIDIA-H100-PCIe", "sm90"),
        ("NVIDIA-H200", "sm90"),
        ("NVIDIA-GH200-480GB", "sm90"),
        ("NVIDIA-A100-SXM4-80GB", "sm80"),
        ("NVIDIA-A100-PCIE-40GB", "sm80"),
        ("NVIDIA-A10G", "sm86"),
        ("NVIDIA-L40S", "sm89"),
        ("NVIDIA-L4", "sm89"),
        ("Tesla-T4", "sm75"),
        ("NVIDIA-B200", "sm100"),
        ("NVIDIA H100 80GB HBM3", "sm90"),  # nvidia-smi spelling
    ],
)
def test_gpu_arch_of_product_names(product, arch):
    assert gpu_arch_of(product) == arch


def test_unknown_gpu_is_an_error():
    with pytest.raises(ServingCompatError, match="unknown GPU product 'Voodoo-5'"):
        gpu_arch_of("Voodoo-5")


def test_matching_engine_image_and_gpu_pass():
    check_serving_compat(
        engine_metadata(), "nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3", "NVIDIA-H200"
    )


def test_trtllm_version_mismatch_is_refused_with_both_versions():
    with pytest.raises(ServingCompatError) as error:
        check_serving_compat(engine_metadata(), "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3", None)
    message = str(error.value)
    assert "carries TRT-LLM 1.1.0" in message and "built with TRT-LLM 1.2.1" in message
    assert "26.07-trtllm-python-py3" in message


def test_gpu_architecture_mismatch_is_refused():
    image = "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"
    with pytest.raises(
        ServingCompatError, match="NVIDIA-A100-SXM4-80GB is sm80, but the engine was built on sm90"
    ):
        check_serving_compat(engine_metadata(), image, "NVIDIA-A100-SXM4-80GB")


def test_unknown_gpu_product_skips_the_architecture_check_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger=serving_compat.__name__):
        check_serving_compat(engine_metadata(), "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3", None)
    assert "sm90" in caplog.text


def test_llmapi_repositories_need_trtllm_1_but_no_particular_gpu():
    metadata = engine_metadata(serving_mode="trtllm-llmapi", gpu_arch="any", quantization="none")
    check_serving_compat(
        metadata, "nvcr.io/nvidia/tritonserver:25.10-trtllm-python-py3", "NVIDIA-A100-SXM4-80GB"
    )
    with pytest.raises(ServingCompatError, match=r"needs TRT-LLM >= 1\.0"):
        check_serving_compat(metadata, "nvcr.io/nvidia/tritonserver:25.08-trtllm-python-py3", "NVIDIA-H100")


def test_hf_repositories_are_not_checked():
    check_serving_compat({"serving_mode": "hf"}, "python:3.11-slim", None)


def test_incomplete_or_dry_run_metadata_is_refused():
    image = "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"
    partial = {key: value for key, value in engine_metadata().items() if key != "gpu_arch"}
    with pytest.raises(ServingCompatError, match="lacks gpu_arch"):
        check_serving_compat(partial, image, None)
    with pytest.raises(ServingCompatError, match="--dry-run"):
        check_serving_compat(engine_metadata(dry_run=True), image, None)
    assert set(METADATA_KEYS) <= set(engine_metadata())
    assert issubclass(ServingCompatError, ValueError)
