"""The llm_finetune pipeline: curate -> train -> evaluate -> [gate] -> export -> build -> rollout.

`build_pipeline(profiles, images)` returns the pipeline function with each task's image
and cluster settings (GPUs, /dev/shm, tolerations, node selector, EFA label) applied at
compile time; `llm_finetune` is the default build for notebooks and the UI. The same
function runs on a laptop under kfp.local (pipelines/local.py) and on a cluster.
"""

import json

from kfp import dsl

from components.build.component import build_op
from components.curate.component import curate_op
from components.evaluate.component import evaluate_op
from components.export.component import export_op
from components.finalize.component import finalize_op
from components.images import Images, load_images
from components.resources import PipelineProfiles, load_profiles
from components.rollout.component import rollout_op
from components.rollout.rollout import DEFAULT_SMOKE_PROMPT
from components.train.component import train_op
from components.train.train import LLAMA_LORA_TARGETS
from pipelines.cluster import apply_profile

PIPELINE_NAME = "llm-finetune"
TTL_SECONDS = 7 * 24 * 3600  # finished runs' pods and workflow objects go after a week
NETWORK_RETRIES = 3


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

    def configure(task: dsl.PipelineTask, step: str, display_name: str, cache: bool, retries: int):
        task.set_display_name(display_name)
        task.set_caching_options(cache)
        task.set_container_image(images.for_step(step))
        if retries:
            task.set_retry(
                num_retries=retries, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s"
            )
        return apply_profile(task, getattr(profiles, step))

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="LoRA fine-tuning of an LLM: curate, train, evaluate with a deployment gate, "
        "export to Hugging Face format, build a Triton model repository, roll out.",
        pipeline_config=dsl.PipelineConfig(ttl_seconds_after_finished=TTL_SECONDS),
    )
    def llm_finetune(
        base_model_uri: str = "",
        train_data_uri: str = "",
        eval_data_uri: str = "",
        storage_root: str = "",
        val_fraction: float = 0.1,
        lora_r: int = 16,
        lora_alpha: int = 32,
        lora_dropout: float = 0.05,
        lora_target_modules: str = ",".join(LLAMA_LORA_TARGETS),
        train_backend: str = "hf",
        epochs: float = 3.0,
        max_steps: int = 0,
        learning_rate: float = 2e-4,
        micro_batch_size: int = 4,
        global_batch_size: int = 64,
        max_length: int = 2048,
        precision: str = "auto",
        save_every_steps: int = 200,
        num_nodes: int = 1,
        gpus_per_node: int = 1,
        sharding: str = "auto",
        train_env_from_secrets: str = "",
        train_job_cleanup: str = "keep",
        max_eval_records: int = 256,
        max_new_tokens: int = 64,
        gate_min_exact_match_gain: float = 0.0,
        gate_max_val_loss: float = 0.0,
        gate_max_regression: float = 0.0,
        registered_model_name: str = "llmft-model",
        serving_mode: str = "hf",
        quantization: str = "none",
        serving_max_batch_size: int = 8,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        max_input_len: int = 1024,
        max_seq_len: int = 2048,
        max_num_tokens: int = 8192,
        fp8_kv_cache: bool = False,
        calib_dataset: str = "cnn_dailymail",
        kv_cache_free_gpu_mem_fraction: float = 0.9,
        streaming: bool = False,
        triton_image: str = "",
        served_model_name: str = "llm",
        rollout_target: str = "kubernetes",
        triton_replicas: int = 1,
        smoke_prompt: str = DEFAULT_SMOKE_PROMPT,
        smoke_expect: str = "",
        namespace: str = "llmft",
        mlflow_tracking_uri: str = "",
        mlflow_experiment: str = "llmft",
    ):
        """Fine-tune an LLM with LoRA and serve it on Triton.

        Args:
            base_model_uri: Base model to fine-tune: a Hugging Face checkpoint directory (s3://bucket/path
                or a path on a mounted volume; an llmft manifest is optional) or a Hub id
                hf://org/name[@revision] (token from HF_TOKEN in the pod's environment). Required.
            train_data_uri: Raw instruction data: one or more JSONL/JSONL.gz files (s3:// or paths),
                comma-separated. Formats: {"input","output"}, {"prompt","completion"} or chat {"messages"}.
            eval_data_uri: Optional held-out evaluation set (same formats). Empty: a hash-based split of the
                training data is held out instead.
            storage_root: Where every step writes its outputs (s3://bucket/prefix). Each run writes under
                runs/<run id>/. Required.
            val_fraction: Fraction of records held out for validation when no evaluation set is given.
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
                across that many nodes, launched and watched by the train task; outputs must be on s3://.
            gpus_per_node: GPUs per training node (torchrun data parallel on each node). Keep it equal to
                the GPUs of the train step's cluster profile.
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
        run = dsl.PIPELINE_JOB_ID_PLACEHOLDER
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
        tracking = {
            "mlflow_tracking_uri": mlflow_tracking_uri,
            "mlflow_experiment": mlflow_experiment,
            "pipeline_run": run,
            "storage_root": storage_root,
        }

        exit_task = configure(
            finalize_op(num_nodes=num_nodes, namespace=namespace, job_cleanup=train_job_cleanup, **tracking),
            "finalize",
            "Record outcome",
            cache=False,
            retries=0,
        )
        with dsl.ExitHandler(exit_task, name="Fine-tune and serve"):
            curate = configure(
                curate_op(
                    train_data_uri=train_data_uri,
                    eval_data_uri=eval_data_uri,
                    val_fraction=val_fraction,
                    **tracking,
                ),
                "curate",
                "Curate data",
                cache=True,
                retries=network_retries,
            )
            train = configure(
                train_op(
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
                ),
                "train",
                "LoRA fine-tune",
                cache=True,
                retries=network_retries,
            )
            evaluate = configure(
                evaluate_op(
                    base_model_uri=base_model_uri,
                    adapter=train.outputs["adapter"],
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
            )
            with dsl.If(evaluate.outputs["Output"] == "passed", name="Gate passed"):
                export = configure(
                    export_op(
                        base_model_uri=base_model_uri,
                        adapter=train.outputs["adapter"],
                        dataset=curate.outputs["dataset"],
                        registered_model_name=registered_model_name,
                        **tracking,
                    ),
                    "export",
                    "Export HF checkpoint",
                    cache=True,
                    retries=network_retries,
                )
                build = configure(
                    build_op(
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
                    ),
                    "build",
                    "Build model repository",
                    cache=True,
                    retries=network_retries,
                )
                configure(
                    rollout_op(
                        repository=build.outputs["repository"],
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
                )

    return llm_finetune


llm_finetune = build_pipeline()
