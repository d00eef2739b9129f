"""KFP component for rollout: a thin shell over components.rollout.rollout."""

from kfp import dsl
from kfp.dsl import Artifact, Input

from components.images import image_for_step


@dsl.component(base_image=image_for_step("rollout"), install_kfp_package=False)
def rollout_op(
    repository: Input[Artifact],
    target: str,
    triton_replicas: int,
    namespace: str,
    storage_root: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    pipeline_run: str,
) -> str:
    """Serve the model repository, smoke-test it, and return the endpoint."""
    from components.rollout.rollout import RolloutConfig, rollout
    from components.step_io import artifact_uri, run_component_step

    # triton_replicas and namespace belong to the kubernetes target, which rollout refuses
    # with a clear message in this release; the local target serves one server on loopback.
    config = RolloutConfig(
        repository=artifact_uri(repository), model_name=repository.metadata["model_name"], target=target
    )
    result, _ = run_component_step(
        "rollout", rollout, config, mlflow_tracking_uri, mlflow_experiment, pipeline_run, storage_root
    )
    return result.endpoint_http
