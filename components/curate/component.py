"""KFP component for curate: a thin shell over components.curate.curate."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Metrics, Output

from components.images import image_for_step


@dsl.component(base_image=image_for_step("curate"), install_kfp_package=False)
def curate_op(
    train_data_uri: str,
    eval_data_uri: str,
    val_fraction: float,
    decontamination_ngram: int,
    storage_root: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    dataset: Output[Dataset],
    stats: Output[Metrics],
    report: Output[HTML],
):
    """Parse, validate, normalise, deduplicate and split instruction records."""
    from components.curate.curate import CurateConfig, curate
    from components.step_io import (
        addressed_config,
        copy_report,
        point_artifact,
        run_component_step,
        split_list,
    )

    config = addressed_config(
        CurateConfig,
        {
            "inputs": split_list(train_data_uri),
            "eval_set": eval_data_uri or None,
            "val_fraction": val_fraction,
            "decontamination_ngram": decontamination_ngram,
        },
        storage_root,
        "curate",
    )
    result, _ = run_component_step(
        "curate", curate, config, mlflow_tracking_uri, mlflow_experiment, storage_root
    )
    point_artifact(
        dataset,
        result.output,
        {
            "sha256": result.dataset_sha256,
            "train_records": result.train_records,
            "val_records": result.val_records,
        },
    )
    stats.log_metric("train_records", result.train_records)
    stats.log_metric("val_records", result.val_records)
    stats.log_metric("rejected_records", result.rejected)
    copy_report(result.output, report)
