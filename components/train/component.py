"""KFP component for train: a thin shell over components.train.train."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import image_for_step


@dsl.component(base_image=image_for_step("train"), install_kfp_package=False)
def train_op(
    base_model_uri: str,
    dataset: Input[Dataset],
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
    num_nodes: int,
    gpus_per_node: int,
    storage_root: str,
    mlflow_tracking_uri: str,
    mlflow_experiment: str,
    pipeline_run: str,
    adapter: Output[Model],
    metrics: Output[Metrics],
):
    """LoRA supervised fine-tuning; writes a Hugging Face PEFT adapter."""
    from components.step_io import artifact_uri, point_artifact, run_component_step, run_output_uri
    from components.train.train import LoraSettings, TrainConfig, require_single_process, train

    require_single_process(num_nodes, gpus_per_node)
    config = TrainConfig(
        base_model=base_model_uri,
        data=artifact_uri(dataset),
        output=run_output_uri(storage_root, pipeline_run, "train"),
        lora=LoraSettings(
            r=lora_r,
            alpha=lora_alpha,
            dropout=lora_dropout,
            target_modules=[name.strip() for name in lora_target_modules.split(",") if name.strip()],
        ),
        epochs=epochs,
        max_steps=max_steps,
        learning_rate=learning_rate,
        micro_batch_size=micro_batch_size,
        global_batch_size=global_batch_size,
        max_length=max_length,
        precision=precision,
    )
    result, mlflow_run_id = run_component_step(
        "train", train, config, mlflow_tracking_uri, mlflow_experiment, pipeline_run, storage_root
    )
    point_artifact(
        adapter,
        result.adapter,
        {
            "base_model": base_model_uri,
            "mlflow_run_id": mlflow_run_id or "",
            "metrics_uri": config.output + "/metrics.json",
        },
    )
    for name in ("final_loss", "val_loss", "steps", "tokens_per_second"):
        metrics.log_metric(name, getattr(result, name))
