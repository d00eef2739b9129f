"""The llm_finetune pipeline: curate -> train -> evaluate -> [gate] -> export -> build -> rollout.

`build_pipeline(profiles, images)` returns the pipeline function with each task's image
and cluster settings (GPUs, /dev/shm, tolerations, node selector, EFA label) applied at
compile time; `llm_finetune` is the default build for notebooks and the UI. The same
function runs on a laptop under kfp.local (pipelines/local.py) and on a cluster.
"""

import json
from typing import Any

from kfp import dsl
from pydantic import BaseModel

from components.build.build import BuildConfig
from components.build.component import build_op
from components.curate.component import curate_op
from components.curate.curate import CurateConfig
from components.defaults import DEFAULT_EXPERIMENT, DEFAULT_NAMESPACE
from components.evaluate.component import evaluate_op
from components.evaluate.evaluate import EvaluateConfig
from components.export.component import export_op
from components.export.export import ExportConfig
from components.finalize.component import finalize_op
from components.images import Images, load_images
from components.resources import PipelineProfiles, load_profiles
from components.rollout.component import rollout_op
from components.rollout.rollout import RolloutConfig
from components.train.component import train_op
from components.train.train import TrainConfig
from pipelines.cluster import apply_profile, expose_run_id

PIPELINE_NAME = "llm-finetune"
TTL_SECONDS = 7 * 24 * 3600  # finished runs' pods and workflow objects go after a week
NETWORK_RETRIES = 3


def config_default(config_type: type[BaseModel], field: str) -> Any:
    """The default of a step config's field ("lora.r" for nested ones): each setting's one default.

    The pipeline's parameters take their defaults from here, so the pipeline, the CLI (whose flags
    are the config fields) and a notebook calling the step function agree.
    """
    name, _, rest = field.partition(".")
    info = config_type.model_fields[name]
    if rest:
        nested = info.annotation
        assert isinstance(nested, type) and issubclass(nested, BaseModel), f"{field}: not a nested config"
        return config_default(nested, rest)
    return info.get_default(call_default_factory=True)


def _text_default(config_type: type[BaseModel], field: str) -> str:
    """A default of None as "", the pipeline's spelling of "unset" for a string parameter."""
    value = config_default(config_type, field)
    return "" if value is None else value


def build_pipeline(
    profiles: PipelineProfiles | None = None,
    images: Images | None = None,
    network_retries: int = NETWORK_RETRIES,
):
    """Return the llm_finetune pipeline with images and resource profiles applied.

    `network_retries` is how often KFP retries a step that touches the network (with
    exponential backoff); local runs set it to 0, where a retry only repeats a failure.
    """
    profiles = profiles or load_profiles(None)
    images = images or load_images()

    def configure(
        task: dsl.PipelineTask, profile: str, display_name: str, cache: bool, retries: int, image_step: str
    ):
        task.set_display_name(display_name)
        task.set_caching_options(cache)
        task.set_container_image(images.for_step(image_step))
        if retries:
            task.set_retry(
                num_retries=retries, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s"
            )
        expose_run_id(task)
        return apply_profile(task, profiles.for_step(profile))

    def cached_task(op, inputs: dict, step: str, profile: str, display_name: str) -> dsl.PipelineTask:
        """One of a step's alternative tasks (under dsl.If/Else): same inputs, its own profile."""
        return configure(
            op(**inputs), profile, display_name, cache=True, retries=network_retries, image_step=step
        )

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="LoRA fine-tuning of an LLM: curate, train, evaluate with a deployment gate, "
        "export to Hugging Face format, build a Triton model repository, roll out.",
        pipeline_config=dsl.PipelineConfig(ttl_seconds_after_finished=TTL_SECONDS),
    )
    def llm_finetune(
        base_model_uri: str,
        train_data_uri: str,
        storage_root: str,
        eval_data_uri: str = "",
        val_fraction: float = config_default(CurateConfig, "val_fraction"),
        decontamination_ngram: int = config_default(CurateConfig, "decontamination_ngram"),
        lora_r: int = config_default(TrainConfig, "lora.r"),
        lora_alpha: int = config_default(TrainConfig, "lora.alpha"),
        lora_dropout: float = config_default(TrainConfig, "lora.dropout"),
        lora_target_modules: str = ",".join(config_default(TrainConfig, "lora.target_modules")),
        train_backend: str = config_default(TrainConfig, "backend"),
        epochs: float = config_default(TrainConfig, "epochs"),
        max_steps: int = config_default(TrainConfig, "max_steps"),
        learning_rate: float = config_default(TrainConfig, "learning_rate"),
        micro_batch_size: int = config_default(TrainConfig, "micro_batch_size"),
        global_batch_size: int = config_default(TrainConfig, "global_batch_size"),
        max_length: int = config_default(TrainConfig, "max_length"),
        precision: str = config_default(TrainConfig, "precision"),
        save_every_steps: int = config_default(TrainConfig, "save_every_steps"),
        num_nodes: int = 1,
        gpus_per_node: int = 0,
        sharding: str = config_default(TrainConfig, "sharding"),
        train_env_from_secrets: str = "",
        train_job_cleanup: str = "keep",
        max_eval_records: int = config_default(EvaluateConfig, "max_eval_records"),
        max_new_tokens: int = config_default(BuildConfig, "max_new_tokens"),
        gate_min_exact_match_gain: float = config_default(EvaluateConfig, "gate.min_exact_match_gain"),
        gate_max_val_loss: float = 0.0,
        gate_max_regression: float = config_default(EvaluateConfig, "gate.max_regression"),
        registered_model_name: str = config_default(ExportConfig, "registered_model_name"),
        serving_mode: str = config_default(BuildConfig, "serving_mode"),
        quantization: str = config_default(BuildConfig, "quantization"),
        serving_max_batch_size: int = config_default(BuildConfig, "max_batch_size"),
        tensor_parallel_size: int = config_default(BuildConfig, "trtllm.tensor_parallel_size"),
        pipeline_parallel_size: int = config_default(BuildConfig, "trtllm.pipeline_parallel_size"),
        max_input_len: int = config_default(BuildConfig, "trtllm.max_input_len"),
        max_seq_len: int = config_default(BuildConfig, "trtllm.max_seq_len"),
        max_num_tokens: int = config_default(BuildConfig, "trtllm.max_num_tokens"),
        fp8_kv_cache: bool = config_default(BuildConfig, "trtllm.fp8_kv_cache"),
        calib_dataset: str = config_default(BuildConfig, "trtllm.calib_dataset"),
        kv_cache_free_gpu_mem_fraction: float = config_default(
            BuildConfig, "triton.kv_cache_free_gpu_mem_fraction"
        ),
        streaming: bool = config_default(BuildConfig, "triton.decoupled"),
        triton_image: str = config_default(BuildConfig, "triton_image"),
        served_model_name: str = config_default(BuildConfig, "model_name"),
        # The compiled pipeline runs on a cluster; `llmft rollout`'s own default (local) is for a workstation.
        rollout_target: str = "kubernetes",
        triton_replicas: int = config_default(RolloutConfig, "kubernetes.replicas"),
        smoke_prompt: str = config_default(RolloutConfig, "smoke_prompt"),
        smoke_expect: str = _text_default(RolloutConfig, "smoke_expect"),
        namespace: str = DEFAULT_NAMESPACE,
        mlflow_tracking_uri: str = "",
        mlflow_experiment: str = DEFAULT_EXPERIMENT,
    ):
        """Fine-tune an LLM with LoRA and serve it on Triton.

        Args:
            base_model_uri: Base model to fine-tune: a Hugging Face checkpoint directory (s3://bucket/path
                or a path on a mounted volume; an llmft manifest is optional) or a Hub id
                hf://org/name[@revision] (token from HF_TOKEN in the pod's environment). Required.
            train_data_uri: Raw instruction data: one or more JSONL/JSONL.gz files (s3:// or paths),
                comma-separated. Formats: {"input","output"}, {"prompt","completion"} or chat {"messages"}.
                Required.
            storage_root: Where every step writes its outputs (s3://bucket/prefix): <step>/<digest of the
                step's settings and inputs>/, so a run with equal inputs reuses them; each run's summaries
                and outcome go under runs/<run id>/. Required.
            eval_data_uri: Optional held-out evaluation set (same formats). Empty: a hash-based split of the
                training data is held out instead.
            val_fraction: Fraction of records held out for validation when no evaluation set is given.
            decontamination_ngram: Words per run in curate's decontamination: a training record sharing
                such a run with a val or eval record is rejected, unless the run is boilerplate (held by
                many training records). 0 turns the check off.
            lora_r: LoRA rank (size of the low-rank update). 8-64 is typical.
            lora_alpha: LoRA alpha; the update is scaled by alpha / r.
            lora_dropout: Dropout applied to the LoRA input during training.
            lora_target_modules: Comma-separated names of the layers that get LoRA adapters.
            train_backend: hf (transformers + PEFT, with torchrun across a node's GPUs) or nemo (NVIDIA
                NeMo AutoModel; needs GPUs and the nemo-automodel package in the train image).
            epochs: Number of passes over the training data (fractions allowed).
            max_steps: Stop after this many optimizer steps; 0 means train for the given epochs.
            learning_rate: Peak learning rate (AdamW, linear warmup then cosine decay).
            micro_batch_size: Sequences per forward pass on each GPU.
            global_batch_size: Sequences per optimizer step (gradient accumulation makes up the rest).
            max_length: Longest training example in tokens; longer ones are truncated.
            precision: auto (bf16 on GPUs that support it, else fp32), bf16, fp16 or fp32.
            save_every_steps: Checkpoint every N optimizer steps; a retried or interrupted train step
                resumes from the newest complete checkpoint (0: only at the end).
            num_nodes: Training nodes. Above 1, training runs as a Kubeflow PyTorchJob (Training Operator v1)
                across that many nodes, launched and watched by a train task without GPUs (the job's pods
                hold them); outputs must be on s3://.
            gpus_per_node: GPUs per training node (torchrun data parallel on each node); 0 = every GPU of
                the train step's cluster profile.
            sharding: How several GPUs share the model: ddp (a full copy each), fsdp (weights sharded,
                for models that do not fit one GPU) or auto (fsdp when the weights take half a GPU's memory).
            train_env_from_secrets: Comma-separated Kubernetes Secrets whose keys become environment
                variables of the PyTorchJob pods (credentials never go in parameters).
            train_job_cleanup: keep or delete the PyTorchJob when the run fails (its logs stay with it).
            max_eval_records: Held-out records used for the generation metrics of base and tuned models.
            max_new_tokens: Longest generation in evaluation and the default for served requests.
            gate_min_exact_match_gain: Deploy only if tuned exact match exceeds base by at least this much.
            gate_max_val_loss: Deploy only if the tuned validation loss is at most this (0 = no limit).
            gate_max_regression: Deploy only if the tuned exact match is at most this much below that of the
                model version holding the production alias of registered_model_name (0 = no worse). With no
                production model yet, this check does not block.
            registered_model_name: MLflow registered model name for the merged checkpoint.
            serving_mode: hf (Triton python backend with transformers), trtllm-engine (TensorRT-LLM engine
                built on the build step's GPUs, served by the tensorrtllm backend's in-flight batching
                ensemble) or trtllm-llmapi (TRT-LLM PyTorch backend serving the checkpoint, no engine).
            quantization: none, or fp8 (FP8 weights calibrated at engine build; trtllm-engine only).
            serving_max_batch_size: Largest batch the served model forms (Triton, and the TensorRT-LLM
                engine / LLM API runtime).
            tensor_parallel_size: TensorRT-LLM tensor parallelism: GPUs per model replica. The build step's
                cluster profile must give it tensor_parallel_size x pipeline_parallel_size GPUs.
            pipeline_parallel_size: TensorRT-LLM pipeline parallelism (stages the layers are split into).
            max_input_len: TensorRT-LLM: longest prompt in tokens, prompt template included.
            max_seq_len: TensorRT-LLM: longest prompt + generated tokens of one request.
            max_num_tokens: TensorRT-LLM: most tokens processed in one in-flight batching step.
            fp8_kv_cache: trtllm-engine: store the KV cache in FP8 (calibrated with the FP8 weights).
            calib_dataset: FP8 calibration data: a Hugging Face dataset name (the build pod needs internet
                access) or a dataset path inside the trtllm image.
            kv_cache_free_gpu_mem_fraction: TensorRT-LLM: share of free GPU memory (after the weights) for
                the KV cache.
            streaming: TensorRT-LLM modes: decoupled Triton models, so requests with stream=true get the
                text as it is generated (gRPC streaming or /generate_stream).
            triton_image: TensorRT-LLM modes: the tritonserver <YY.MM>-trtllm-python-py3 image that serves the
                repository; empty: the newest one carrying the TRT-LLM that built the engine.
            served_model_name: Model name in the Triton repository and in request URLs.
            rollout_target: local (a Triton server inside the rollout task, smoke-tested, then stopped) or
                kubernetes (a Triton Deployment and Service in `namespace`, smoke-tested through the Service,
                then promoted to the production alias; the previous revision is restored on any failure).
                The task's service account needs deploy/rbac/rollout-rbac.yaml's Role in that namespace.
            triton_replicas: Triton server replicas (kubernetes target).
            smoke_prompt: Instruction the rollout's smoke test sends to the served model.
            smoke_expect: Regular expression the smoke test's answer must match (case-insensitive); empty:
                any non-empty answer.
            namespace: Kubernetes namespace for the training PyTorchJob and the Triton deployment.
            mlflow_tracking_uri: MLflow tracking server, e.g. http://mlflow.mlflow.svc:5000. Empty: the
                MLFLOW_TRACKING_URI of the pod, else tracking is off. "disabled" turns it off.
            mlflow_experiment: MLflow experiment that groups the runs of this pipeline.
        """
        # The image and cluster profile of a multi-node job's pods: compile-time settings.
        train_placement = json.dumps(
            {"image": images.for_step("train"), "profile": profiles.train.model_dump(mode="json")},
            sort_keys=True,
        )
        # The Triton pods (kubernetes rollout target): the build's GPU pool, cut to the engine's GPUs at
        # run time; and the image for hf repositories (the trtllm image: tritonserver + transformers).
        server_placement = json.dumps(
            {
                "profile": profiles.build.model_dump(mode="json"),
                "default_image": images.for_family("trtllm"),
                # The init container that copies engine repositories into the pod (images.yaml
                # is not in the installed package, so the image is fixed at compile time).
                "fetch_image": images.for_family("base"),
            },
            sort_keys=True,
        )
        # No run id here: a task input that changes every run makes every run a cache miss. Steps read
        # the run id from their pod (configure -> expose_run_id).
        tracking = {
            "mlflow_tracking_uri": mlflow_tracking_uri,
            "mlflow_experiment": mlflow_experiment,
            "storage_root": storage_root,
        }

        exit_task = configure(
            finalize_op(num_nodes=num_nodes, namespace=namespace, job_cleanup=train_job_cleanup, **tracking),
            "finalize",
            "Record outcome",
            cache=False,
            retries=0,
            image_step="finalize",
        )
        with dsl.ExitHandler(exit_task, name="Fine-tune and serve"):
            curate = configure(
                curate_op(
                    train_data_uri=train_data_uri,
                    eval_data_uri=eval_data_uri,
                    val_fraction=val_fraction,
                    decontamination_ngram=decontamination_ngram,
                    **tracking,
                ),
                "curate",
                "Curate data",
                cache=True,
                retries=network_retries,
                image_step="curate",
            )
            train_inputs = dict(
                base_model_uri=base_model_uri,
                dataset=curate.outputs["dataset"],
                backend=train_backend,
                lora_r=lora_r,
                lora_alpha=lora_alpha,
                lora_dropout=lora_dropout,
                lora_target_modules=lora_target_modules,
                epochs=epochs,
                max_steps=max_steps,
                learning_rate=learning_rate,
                micro_batch_size=micro_batch_size,
                global_batch_size=global_batch_size,
                max_length=max_length,
                precision=precision,
                save_every_steps=save_every_steps,
                num_nodes=num_nodes,
                gpus_per_node=gpus_per_node,
                sharding=sharding,
                namespace=namespace,
                env_from_secrets=train_env_from_secrets,
                job_cleanup=train_job_cleanup,
                placement_json=train_placement,
                **tracking,
            )

            if profiles.train.gpus > 0:
                # KFP fixes a task's resources at compile time: the multi-node launcher, which only
                # watches the PyTorchJob, must not hold a GPU node the job's pods are waiting for.
                with dsl.If(num_nodes > 1, name="Several nodes"):
                    launcher = cached_task(
                        train_op, train_inputs, "train", "train_launcher", "LoRA fine-tune (PyTorchJob)"
                    )
                with dsl.Else(name="One node"):
                    in_pod = cached_task(train_op, train_inputs, "train", "train", "LoRA fine-tune")
                adapter = dsl.OneOf(launcher.outputs["adapter"], in_pod.outputs["adapter"])
            else:
                # No GPU to leave idle (the cpu preset, `llmft local`): one task, which kfp.local can run
                # (it does not run artifact OneOf).
                adapter = cached_task(train_op, train_inputs, "train", "train", "LoRA fine-tune").outputs[
                    "adapter"
                ]

            evaluate = configure(
                evaluate_op(
                    base_model_uri=base_model_uri,
                    adapter=adapter,
                    dataset=curate.outputs["dataset"],
                    max_eval_records=max_eval_records,
                    max_new_tokens=max_new_tokens,
                    gate_min_exact_match_gain=gate_min_exact_match_gain,
                    gate_max_val_loss=gate_max_val_loss,
                    gate_max_regression=gate_max_regression,
                    registered_model_name=registered_model_name,
                    **tracking,
                ),
                "evaluate",
                "Evaluate base vs tuned",
                cache=True,
                retries=network_retries,
                image_step="evaluate",
            )
            with dsl.If(evaluate.outputs["Output"] == "passed", name="Gate passed"):
                export = configure(
                    export_op(
                        base_model_uri=base_model_uri,
                        adapter=adapter,
                        dataset=curate.outputs["dataset"],
                        registered_model_name=registered_model_name,
                        **tracking,
                    ),
                    "export",
                    "Export HF checkpoint",
                    cache=True,
                    retries=network_retries,
                    image_step="export",
                )
                build_inputs = dict(
                    merged_model=export.outputs["merged_model"],
                    serving_mode=serving_mode,
                    quantization=quantization,
                    model_name=served_model_name,
                    max_new_tokens=max_new_tokens,
                    max_batch_size=serving_max_batch_size,
                    tensor_parallel_size=tensor_parallel_size,
                    pipeline_parallel_size=pipeline_parallel_size,
                    max_input_len=max_input_len,
                    max_seq_len=max_seq_len,
                    max_num_tokens=max_num_tokens,
                    fp8_kv_cache=fp8_kv_cache,
                    calib_dataset=calib_dataset,
                    kv_cache_free_gpu_mem_fraction=kv_cache_free_gpu_mem_fraction,
                    decoupled=streaming,
                    triton_image=triton_image,
                    **tracking,
                )

                if profiles.build.gpus > 0:
                    # Only the engine build runs on a GPU; the other modes write configuration files.
                    with dsl.If(serving_mode == "trtllm-engine", name="Engine build"):
                        engine = cached_task(
                            build_op, build_inputs, "build", "build", "Build TensorRT-LLM engine"
                        )
                    with dsl.Else(name="No engine"):
                        files = cached_task(
                            build_op, build_inputs, "build", "build_repository", "Build model repository"
                        )
                    repository = dsl.OneOf(engine.outputs["repository"], files.outputs["repository"])
                else:
                    repository = cached_task(
                        build_op, build_inputs, "build", "build", "Build model repository"
                    ).outputs["repository"]
                configure(
                    rollout_op(
                        repository=repository,
                        merged_model=export.outputs["merged_model"],
                        target=rollout_target,
                        triton_replicas=triton_replicas,
                        namespace=namespace,
                        registered_model_name=registered_model_name,
                        smoke_prompt=smoke_prompt,
                        smoke_expect=smoke_expect,
                        server_placement_json=server_placement,
                        **tracking,
                    ),
                    "rollout",
                    "Roll out on Triton",
                    cache=False,
                    retries=network_retries,
                    image_step="rollout",
                )

    return llm_finetune


llm_finetune = build_pipeline()
