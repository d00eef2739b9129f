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
    storage_root: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    pipeline_run: str,
    repository: Output[Artifact],
):
    """Write the Triton model repository for the chosen serving mode."""
    from components.build.build import BuildConfig, build, require_quantization_supported
    from components.step_io import artifact_uri, point_artifact, run_component_step, run_output_uri

    require_quantization_supported(serving_mode, quantization)
    config = BuildConfig(
        model=artifact_uri(merged_model),
        output=run_output_uri(storage_root, pipeline_run, "build"),
        serving_mode=serving_mode,
        model_name=model_name,
        max_new_tokens=max_new_tokens,
    )
    result, _ = run_component_step(
        "build", build, config, mlflow_tracking_uri, mlflow_experiment, pipeline_run, storage_root
    )
    point_artifact(
        repository, result.repository, {"serving_mode": result.serving_mode, "model_name": result.model_name}
    )
