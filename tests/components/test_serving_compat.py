"""Which tritonserver image and GPU can serve a build: the version table, architectures, the check."""

from __future__ import annotations

import logging

import pytest

from components import serving_compat
from components.serving_compat import (
    DEFAULT_TRITON_IMAGE,
    METADATA_KEYS,
    TRITON_TRTLLM_IMAGES,
    ServingCompatError,
    check_serving_compat,
    gpu_arch_of,
    triton_image_for,
    trtllm_version_of_image,
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
    # Spot checks against Triton's published matrix (docs/introduction/compatibility.md).
    assert TRITON_TRTLLM_IMAGES["24.12"] == "0.16.0"
    assert TRITON_TRTLLM_IMAGES["25.02"] == "0.17.0.post1"
    assert TRITON_TRTLLM_IMAGES["25.08"] == "0.21.0"
    assert TRITON_TRTLLM_IMAGES["25.10"] == "1.0.0"
    assert all(TRITON_TRTLLM_IMAGES[release] == "1.1.0" for release in ("25.12", "26.01", "26.02"))
    assert all(TRITON_TRTLLM_IMAGES[release] == "1.2.1" for release in ("26.04", "26.05", "26.06", "26.07"))
    assert list(TRITON_TRTLLM_IMAGES) == sorted(TRITON_TRTLLM_IMAGES)
    # The default serving image is the one containers/trtllm/Dockerfile builds FROM.
    assert DEFAULT_TRITON_IMAGE == "nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3"


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
