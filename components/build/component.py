"""KFP component for build: a thin shell over components.build.build."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components.images import image_for_step


@dsl.component(base_image=image_for_step("build"), install_kfp_package=False)
def build_op(
    merged_model: Input[Model],
    serving_mode: str,
    quantization: str,
    model_name: str,
    max_new_tokens: int,
    max_batch_size: int,
    tensor_parallel_size: int,
    pipeline_parallel_size: int,
    max_input_len: int,
    max_seq_len: int,
    max_num_tokens: int,
    fp8_kv_cache: bool,
    calib_dataset: str,
    kv_cache_free_gpu_mem_fraction: float,
    decoupled: bool,
    triton_image: str,
    storage_root: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    repository: Output[Artifact],
):
    """Write the Triton model repository for the chosen serving mode (TensorRT-LLM engine included)."""
    from components.build.build import BuildConfig, build
    from components.step_io import addressed_config, artifact_uri, point_artifact, run_component_step

    settings = dict(
        model=artifact_uri(merged_model),
        serving_mode=serving_mode,
        quantization=quantization,
        model_name=model_name,
        max_new_tokens=max_new_tokens,
        max_batch_size=max_batch_size,
        triton_image=triton_image,
        trtllm={
            "tensor_parallel_size": tensor_parallel_size,
            "pipeline_parallel_size": pipeline_parallel_size,
            "max_input_len": max_input_len,
            "max_seq_len": max_seq_len,
            "max_num_tokens": max_num_tokens,
            "fp8_kv_cache": fp8_kv_cache,
            "calib_dataset": calib_dataset,
        },
        triton={"kv_cache_free_gpu_mem_fraction": kv_cache_free_gpu_mem_fraction, "decoupled": decoupled},
    )
    config = addressed_config(
        BuildConfig, settings, storage_root, "build", {"model": merged_model.metadata.get("sha256", "")}
    )
    result, _ = run_component_step(
        "build", build, config, mlflow_tracking_uri, mlflow_experiment, storage_root
    )
    # The repository's manifest metadata (serving mode, TRT-LLM version, GPU architecture,
    # limits, serving image) shows in the KFP UI and travels to rollout with the artifact.
    point_artifact(repository, result.repository, result.metadata)
