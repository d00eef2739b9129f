"""KFP component for evaluate: a thin shell over components.evaluate.evaluate."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.images import image_for_step


@dsl.component(base_image=image_for_step("evaluate"), install_kfp_package=False)
def evaluate_op(
    base_model_uri: str,
    adapter: Input[Model],
    dataset: Input[Dataset],
    max_eval_records: int,
    max_new_tokens: int,
    gate_min_exact_match_gain: float,
    gate_max_val_loss: float,
    gate_max_regression: float,
    registered_model_name: str,
    storage_root: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    metrics: Output[Metrics],
    report: Output[HTML],
) -> str:
    """Score base, tuned and production models; returns the gate decision, "passed" or "failed"."""
    from components.evaluate.evaluate import EvaluateConfig, GateThresholds, evaluate
    from components.step_io import addressed_config, artifact_uri, copy_report, run_component_step

    config = addressed_config(
        EvaluateConfig,
        dict(
            base_model=base_model_uri,
            adapter=artifact_uri(adapter),
            data=artifact_uri(dataset),
            max_eval_records=max_eval_records,
            max_new_tokens=max_new_tokens,
            gate=GateThresholds(
                min_exact_match_gain=gate_min_exact_match_gain,
                max_val_loss=gate_max_val_loss if gate_max_val_loss > 0 else None,
                max_regression=gate_max_regression,
            ),
            train_metrics=adapter.metadata.get("metrics_uri"),
            registered_model_name=registered_model_name or None,
        ),
        storage_root,
        "evaluate",
        {"dataset": dataset.metadata.get("sha256", "")},
    )
    result, _ = run_component_step(
        "evaluate", evaluate, config, mlflow_tracking_uri, mlflow_experiment, storage_root
    )
    compared = [("base", result.base), ("tuned", result.tuned), ("production", result.production)]
    for model_name, scores in compared:
        for metric, value in (scores.model_dump() if scores else {}).items():
            metrics.log_metric(f"{model_name}_{metric}", value)
    copy_report(result.output, report)
    return "passed" if result.passed else "failed"
