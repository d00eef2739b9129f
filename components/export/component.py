"""KFP component for export: a thin shell over components.export.export."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.images import image_for_step


@dsl.component(base_image=image_for_step("export"), install_kfp_package=False)
def export_op(
    base_model_uri: str,
    adapter: Input[Model],
    dataset: Input[Dataset],
    registered_model_name: str,
    storage_root: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    pipeline_run: str,
    merged_model: Output[Model],
):
    """Merge the adapter into the base model; register the checkpoint in MLflow."""
    from components.export.export import ExportConfig, export
    from components.step_io import artifact_uri, point_artifact, run_component_step, run_output_uri

    config = ExportConfig(
        base_model=base_model_uri,
        adapter=artifact_uri(adapter),
        output=run_output_uri(storage_root, pipeline_run, "export"),
        registered_model_name=registered_model_name,
        lineage={
            "dataset_sha256": dataset.metadata.get("sha256", ""),
            "base_model": base_model_uri,
            "pipeline_run": pipeline_run,
            "train_mlflow_run_id": adapter.metadata.get("mlflow_run_id", ""),
        },
    )
    result, _ = run_component_step(
        "export", export, config, mlflow_tracking_uri, mlflow_experiment, pipeline_run, storage_root
    )
    point_artifact(
        merged_model,
        result.checkpoint,
        {"sha256": result.manifest_digest, "model_version": result.model_version or ""},
    )
