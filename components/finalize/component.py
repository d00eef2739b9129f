"""KFP exit-handler component: a thin shell over components.finalize.finalize."""

from kfp import dsl
from kfp.dsl import PipelineTaskFinalStatus

from components.images import image_for_step


@dsl.component(base_image=image_for_step("finalize"), install_kfp_package=False)
def finalize_op(
    storage_root: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    num_nodes: int,
    namespace: str,
    job_cleanup: str,
    status: PipelineTaskFinalStatus,
):
    """Record the run's final state (runs after success and after failure)."""
    from components.finalize.finalize import FinalizeConfig, finalize
    from components.step_io import pipeline_run_id, run_component_step

    config = FinalizeConfig(
        storage_root=storage_root,
        pipeline_run=pipeline_run_id(),
        state=status.state,
        error_message=status.error_message or "",
        failed_task=status.pipeline_task_name if status.state != "SUCCEEDED" else "",
        training_job_namespace=namespace if num_nodes > 1 else "",
        training_job_cleanup=job_cleanup,
    )
    run_component_step("finalize", finalize, config, mlflow_tracking_uri, mlflow_experiment, storage_root)
