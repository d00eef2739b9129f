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
    merged_model: Output[Model],
):
    """Merge the adapter into the base model; register the checkpoint in MLflow."""
    from components.export.export import ExportConfig, export
    from components.step_io import (
        addressed_config,
        artifact_uri,
        pipeline_run_id,
        point_artifact,
        run_component_step,
    )

    config = addressed_config(
        ExportConfig,
        dict(
            base_model=base_model_uri,
            adapter=artifact_uri(adapter),
            registered_model_name=registered_model_name,
            lineage={
                "dataset_sha256": dataset.metadata.get("sha256", ""),
                "base_model": base_model_uri,
                "pipeline_run": pipeline_run_id(),
                "train_mlflow_run_id": adapter.metadata.get("mlflow_run_id", ""),
            },
        ),
        storage_root,
        "export",
        not_addressed=frozenset({"lineage"}),
    )
    result, _ = run_component_step(
        "export", export, config, mlflow_tracking_uri, mlflow_experiment, storage_root
    )
    point_artifact(
        merged_model,
        result.checkpoint,
        {"sha256": result.manifest_digest, "model_version": result.model_version or ""},
    )
