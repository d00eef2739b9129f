"""KFP component for train: a thin shell over components.train.launch.run_train_step."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import image_for_step


@dsl.component(base_image=image_for_step("train"), install_kfp_package=False)
def train_op(
    base_model_uri: str,
    dataset: Input[Dataset],
    backend: str,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    lora_target_modules: str,
    epochs: float,
    max_steps: int,
    learning_rate: float,
    micro_batch_size: int,
    global_batch_size: int,
    max_length: int,
    precision: str,
    save_every_steps: int,
    num_nodes: int,
    gpus_per_node: int,
    sharding: str,
    namespace: str,
    env_from_secrets: str,
    job_cleanup: str,
    placement_json: str,
    storage_root: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    adapter: Output[Model],
    metrics: Output[Metrics],
):
    """LoRA supervised fine-tuning (one GPU, torchrun over a node's GPUs, or a PyTorchJob across nodes).

    `placement_json` (image and cluster profile of the job's pods) is fixed at compile time.
    """
    import functools
    import json
    import math

    from components import storage
    from components.step_io import (
        addressed_config,
        artifact_uri,
        pipeline_run_id,
        point_artifact,
        run_component_step,
        split_list,
    )
    from components.train.launch import ClusterPlacement, run_train_step
    from components.train.train import TrainConfig

    settings = dict(
        base_model=base_model_uri,
        data=artifact_uri(dataset),
        backend=backend,
        lora=dict(
            r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=split_list(lora_target_modules)
        ),
        epochs=epochs,
        max_steps=max_steps,
        learning_rate=learning_rate,
        micro_batch_size=micro_batch_size,
        global_batch_size=global_batch_size,
        max_length=max_length,
        precision=precision,
        save_every_steps=save_every_steps,
        sharding=sharding,
        resume="auto",  # a KFP retry (or a spot interruption) continues from the newest checkpoint
    )
    config = addressed_config(
        TrainConfig, settings, storage_root, "train", {"dataset": dataset.metadata.get("sha256", "")}
    )
    placement = ClusterPlacement(
        **json.loads(placement_json),
        pipeline_run=pipeline_run_id(),
        namespace=namespace,
        env_from_secrets=split_list(env_from_secrets),
        cleanup=job_cleanup,
    )
    step = functools.partial(
        run_train_step, num_nodes=num_nodes, gpus_per_node=gpus_per_node, placement=placement
    )
    result, mlflow_run_id = run_component_step(
        "train", step, config, mlflow_tracking_uri, mlflow_experiment, storage_root
    )
    point_artifact(
        adapter,
        result.adapter,
        {
            "base_model": base_model_uri,
            "mlflow_run_id": mlflow_run_id or "",
            "metrics_uri": storage.join(config.output, "metrics.json"),
        },
    )
    for name in ("final_loss", "val_loss", "steps", "tokens_per_second"):
        if math.isfinite(getattr(result, name)):  # the nemo backend leaves val_loss to evaluate (NaN)
            metrics.log_metric(name, getattr(result, name))
