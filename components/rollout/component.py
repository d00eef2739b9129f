"""KFP component for rollout: a thin shell over components.rollout.rollout."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from components.images import image_for_step


@dsl.component(base_image=image_for_step("rollout"), install_kfp_package=False)
def rollout_op(
    repository: Input[Artifact],
    merged_model: Input[Model],
    target: str,
    triton_replicas: int,
    namespace: str,
    registered_model_name: str,
    smoke_prompt: str,
    smoke_expect: str,
    server_placement_json: str,
    storage_root: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
) -> str:
    """Serve the model repository, smoke-test it, promote it (kubernetes), and return the endpoint.

    `server_placement_json` (the Triton pods' cluster profile and the image for hf repositories) is
    fixed at compile time; `merged_model` carries the model version export registered.
    """
    import json

    from components.rollout.manifests import KubernetesSettings
    from components.rollout.rollout import RolloutConfig, rollout
    from components.step_io import artifact_uri, run_component_step

    config = RolloutConfig(
        repository=artifact_uri(repository),
        model_name=repository.metadata["model_name"],
        target=target,
        smoke_prompt=smoke_prompt,
        smoke_expect=smoke_expect or None,
        registered_model_name=registered_model_name or None,
        model_version=merged_model.metadata.get("model_version") or None,
        kubernetes=KubernetesSettings(
            namespace=namespace, replicas=triton_replicas, **json.loads(server_placement_json)
        ),
    )
    result, _ = run_component_step(
        "rollout", rollout, config, mlflow_tracking_uri, mlflow_experiment, storage_root
    )
    return result.endpoint_http
