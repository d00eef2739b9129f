"""The training plan: what `llmft train` would do, worked out without training.

`llmft train --dry-run` prints `describe_plan` for every launcher (this process, torchrun,
a PyTorchJob) and stops: the resolved settings, devices and processes, precision and
sharding, the activation-checkpointing memory plan (memory.py), optimizer steps, epochs and
tokens from the curated data's stats.json, and where the adapter, checkpoints and metrics
go. The rules it shares with the train loop live here (device and precision resolution,
the step arithmetic, how many layers recompute their activations), so a plan and the run
it describes cannot disagree.

Reading the plan's inputs touches only small files: the base model's config.json and the
dataset's stats.json. What cannot be read from here (an S3 bucket without credentials) is
shown as unknown, with the reason; what would make the run fail is listed as a problem.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from components import storage
from components.model_source import HUB_SCHEME, ModelNotFoundError, read_hub_config
from components.train.distributed import decide_sharding
from components.train.memory import MemoryPlan, plan_checkpointing

if TYPE_CHECKING:
    from components.train.train import TrainConfig

GIB = 2**30
BYTES_PER_VALUE = {"bf16": 2, "fp16": 2, "fp32": 4}
# A rough average of English text under BPE tokenizers: the plan's token counts come from
# curate's character lengths, so they are estimates (the run counts real tokens).
CHARS_PER_TOKEN = 4
# Shapes of the projections LoRA attaches to in Llama-style layers: (inputs, outputs) as
# functions of (hidden, attention width, key/value width, intermediate).
_LORA_SHAPES = {
    "q_proj": lambda h, a, kv, i: (h, a),
    "k_proj": lambda h, a, kv, i: (h, kv),
    "v_proj": lambda h, a, kv, i: (h, kv),
    "o_proj": lambda h, a, kv, i: (a, h),
    "gate_proj": lambda h, a, kv, i: (h, i),
    "up_proj": lambda h, a, kv, i: (h, i),
    "down_proj": lambda h, a, kv, i: (i, h),
}


class TrainError(ValueError):
    """The training inputs or settings cannot work; the message says which and why."""


# --- rules the train loop uses too ------------------------------------------------------


def resolve_device(choice: str) -> Any:
    """The torch.device to train on: `auto` is the GPU when one is visible, else the CPU."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise TrainError("device=cuda was requested but no CUDA GPU is visible")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def precision_name(precision: str, device_type: str, bf16_supported: bool) -> str:
    """bf16, fp16 or fp32: `auto` is bf16 on GPUs that support it, else fp32."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" and bf16_supported else "fp32"
    if precision in ("bf16", "fp16") and device_type == "cpu":
        raise TrainError(f"precision={precision} needs a GPU; use fp32 or auto on CPU")
    return precision


def resolve_precision(precision: str, device: Any) -> Any:
    """The torch dtype the model computes in on `device`."""
    import torch

    bf16_supported = device.type == "cuda" and torch.cuda.is_bf16_supported()
    name = precision_name(precision, device.type, bf16_supported)
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


@dataclass(frozen=True)
class StepPlan:
    """How the training examples become optimizer steps."""

    micro_batches_per_epoch: int
    micro_batches_per_step: int  # over all processes
    accumulation: int  # micro batches per step on each process
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


def plan_steps(config: TrainConfig, examples: int, world: int) -> StepPlan:
    """Optimizer steps for `examples` training examples over `world` processes.

    Raises TrainError when a step's micro batches cannot be shared evenly by the processes.
    """
    micro_batches_per_epoch = math.ceil(examples / config.micro_batch_size)
    # A dataset smaller than one global batch still makes one optimizer step per epoch.
    micro_batches_per_step = min(
        max(config.global_batch_size // config.micro_batch_size, 1), micro_batches_per_epoch
    )
    if micro_batches_per_step % world:
        raise TrainError(
            f"{micro_batches_per_step} micro batches per step (global_batch_size={config.global_batch_size}, "
            f"micro_batch_size={config.micro_batch_size}, {examples} training examples) cannot "
            f"be shared evenly by {world} ranks: make global_batch_size a multiple of "
            f"micro_batch_size x {world}"
        )
    steps_per_epoch = max(micro_batches_per_epoch // micro_batches_per_step, 1)
    total_steps = config.max_steps or max(int(config.epochs * steps_per_epoch), 1)
    return StepPlan(
        micro_batches_per_epoch=micro_batches_per_epoch,
        micro_batches_per_step=micro_batches_per_step,
        accumulation=micro_batches_per_step // world,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=int(config.warmup_ratio * total_steps),
    )


def checkpointed_layers(
    config: TrainConfig,
    *,
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    on_gpu: bool,
    bytes_per_value: int,
    weight_bytes: int,
    gpu_bytes: int,
) -> tuple[int, MemoryPlan | None]:
    """How many decoder layers recompute their activations, and the memory plan behind it.

    All when `gradient_checkpointing` is asked for; on a GPU with the fused path as few as
    the memory plan needs (see memory.py), `weight_bytes` being one process's share of the
    weights; else none.
    """
    if config.gradient_checkpointing:
        return num_layers, None
    if not (config.fused and on_gpu and num_layers):
        return 0, None
    plan = plan_checkpointing(
        num_layers=num_layers,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        tokens_per_micro_batch=config.micro_batch_size * config.max_length,
        bytes_per_value=bytes_per_value,
        weight_bytes=weight_bytes,
        gpu_bytes=gpu_bytes,
    )
    return plan.checkpointed_layers, plan


# --- what the plan reads ------------------------------------------------------------------


def read_base_model_config(uri: str) -> dict[str, Any]:
    """The base model's config.json, from a local directory, s3:// or the Hub (that file only).

    The run itself checks the whole checkpoint (components/model_source.py); a plan reads no weights.
    """
    if uri.startswith(HUB_SCHEME):
        try:
            return read_hub_config(uri)
        except ModelNotFoundError as error:  # a wrong id is a fault of the settings; a network error is not
            raise TrainError(str(error)) from error
    if "://" in uri and not storage.is_s3(uri):
        raise TrainError(f"{uri}: a model is a directory (path or s3://) or hf://org/name[@revision]")
    config_uri = storage.join(uri, "config.json")
    if not storage.exists(config_uri):
        raise TrainError(f"not a Hugging Face checkpoint: no config.json in {uri}")
    config = json.loads(storage.read_text(config_uri))
    if not isinstance(config, dict):
        raise TrainError(f"{config_uri} does not hold a JSON object")
    return config


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only model's config.json that the plan needs."""

    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    attention_heads: int
    key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        # Multimodal checkpoints keep the language model's numbers under text_config.
        text = config["text_config"] if "hidden_size" not in config and "text_config" in config else config
        try:
            hidden = int(text["hidden_size"])
            layers = int(text["num_hidden_layers"])
        except (KeyError, TypeError, ValueError) as error:
            raise TrainError(f"config.json has no usable {error} for a decoder-only model") from None
        heads = int(text.get("num_attention_heads") or 1)
        return cls(
            model_type=str(config.get("model_type", "?")),
            num_layers=layers,
            hidden_size=hidden,
            intermediate_size=int(text.get("intermediate_size") or 4 * hidden),
            vocab_size=int(text.get("vocab_size") or 0),
            attention_heads=heads,
            key_value_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            tie_word_embeddings=bool(
                config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))
            ),
        )

    def parameters(self) -> int:
        """Weights of a Llama-style model of this shape (attention biases, if any, left out)."""
        attention = self.attention_heads * self.head_dim
        key_value = self.key_value_heads * self.head_dim
        per_layer = (
            2 * self.hidden_size * attention  # q_proj, o_proj
            + 2 * self.hidden_size * key_value  # k_proj, v_proj
            + 3 * self.hidden_size * self.intermediate_size  # gate_proj, up_proj, down_proj
            + 2 * self.hidden_size  # the two norms
        )
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * per_layer + embeddings + self.hidden_size

    def lora_parameters(self, r: int, target_modules: list[str]) -> int | None:
        """Trainable LoRA weights (r x (inputs + outputs) per adapted layer); None for unknown names."""
        attention = self.attention_heads * self.head_dim
        key_value = self.key_value_heads * self.head_dim
        total = 0
        for name in target_modules:
            if name not in _LORA_SHAPES:
                return None
            inputs, outputs = _LORA_SHAPES[name](
                self.hidden_size, attention, key_value, self.intermediate_size
            )
            total += r * (inputs + outputs)
        return total * self.num_layers


@dataclass(frozen=True)
class DataStats:
    train_records: int
    val_records: int
    mean_record_chars: float | None  # prompt + response, from curate's stats.json
    source: str


def read_data_stats(uri: str) -> DataStats:
    """Record counts (and mean lengths) of a curated dataset: its stats.json, else its line counts."""
    stats_uri = storage.join(uri, "stats.json")
    if storage.exists(stats_uri):
        stats = json.loads(storage.read_text(stats_uri))
        lengths = stats.get("lengths", {})
        means = [lengths.get(part, {}).get("mean") for part in ("prompt", "response")]
        return DataStats(
            train_records=int(stats["kept"]["train"]),
            val_records=int(stats["kept"]["val"]),
            mean_record_chars=sum(means) if all(mean is not None for mean in means) else None,
            source=stats_uri,
        )
    train_uri = storage.join(uri, "train.jsonl")
    if not storage.exists(train_uri):
        raise TrainError(f"{uri} is not a curated dataset: it has neither stats.json nor train.jsonl")
    val_uri = storage.join(uri, "val.jsonl")
    return DataStats(
        train_records=_count_lines(train_uri),
        val_records=_count_lines(val_uri) if storage.exists(val_uri) else 0,
        mean_record_chars=None,
        source=f"{train_uri} (no stats.json: lines counted)",
    )


def _count_lines(uri: str) -> int:
    return sum(1 for line in storage.read_text(uri).splitlines() if line.strip())


# --- where the run goes -------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where the training processes run, as far as it is known from here."""

    launcher: str  # in-process, torchrun, pytorchjob
    nodes: int
    processes_per_node: int
    device_type: str  # cpu or cuda
    gpu_name: str | None = None
    gpu_bytes: int | None = None
    bf16_supported: bool | None = None  # None: decided on GPUs this machine cannot see

    @property
    def world(self) -> int:
        return self.nodes * self.processes_per_node


def local_placement(device_choice: str, launcher: str, processes: int) -> Placement:
    """This machine's device (as the run would resolve it) for `processes` processes."""
    import torch

    device = resolve_device(device_choice)
    if device.type != "cuda":
        return Placement(launcher, 1, processes, "cpu")
    properties = torch.cuda.get_device_properties(device)
    return Placement(
        launcher,
        1,
        processes,
        "cuda",
        gpu_name=properties.name,
        gpu_bytes=properties.total_memory,
        bf16_supported=torch.cuda.is_bf16_supported(),
    )


def gpu_bytes_from_product(product: str | None) -> int | None:
    """GPU memory named in a GPU product label (NVIDIA-H100-80GB-HBM3 -> 80 GiB), if any."""
    match = re.search(r"(\d+)GB", product or "")
    return int(match.group(1)) * GIB if match else None


def cluster_placement(nodes: int, gpus_per_node: int, gpu_product: str | None) -> Placement:
    """A PyTorchJob's pods: `nodes` x `gpus_per_node` processes on GPUs this machine cannot see."""
    if gpus_per_node < 1:
        return Placement("pytorchjob", nodes, 1, "cpu")
    return Placement(
        "pytorchjob",
        nodes,
        gpus_per_node,
        "cuda",
        gpu_name=gpu_product,
        gpu_bytes=gpu_bytes_from_product(gpu_product),
    )


# --- the plan -------------------------------------------------------------------------------


@dataclass
class TrainPlan:
    """The plan as text lines, and what would make the run fail (empty when nothing would)."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def text(self) -> str:
        problems = [f"  - {problem}" for problem in self.problems] or ["  none found"]
        return "\n".join([*self.lines, "problems:", *problems]) + "\n"


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for name, value in settings.items():
        if isinstance(value, Mapping):
            items += _flatten(value, f"{prefix}{name}.")
        else:
            items.append((f"{prefix}{name}", value))
    return items


def _gib(size: float) -> str:
    return f"{size / GIB:.1f} GiB" if size >= GIB / 10 else f"{size / 2**20:.1f} MiB"


def _count(number: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if number >= scale:
            return f"{number / scale:.2f} {unit}"
    return f"{number:.0f}"


def _describe_placement(placement: Placement) -> str:
    where = {
        "in-process": "this process",
        "torchrun": f"torchrun, {placement.processes_per_node} processes on this machine",
        "pytorchjob": f"PyTorchJob, {placement.nodes} nodes x {placement.processes_per_node} processes",
    }[placement.launcher]
    if placement.launcher == "in-process" and placement.world > 1:
        where = f"this process, rank 0 of {placement.world} (WORLD_SIZE)"
    if placement.device_type == "cpu":
        device = "cpu"
    else:
        memory = f", {_gib(placement.gpu_bytes)}" if placement.gpu_bytes else ", memory unknown"
        device = f"cuda ({placement.gpu_name or 'GPU model unknown'}{memory}), one GPU per process"
    processes = "1 process" if placement.world == 1 else f"{placement.world} processes in all"
    return f"  launcher: {where}\n  devices: {device}; {processes}"


def build_plan(config: TrainConfig, placement: Placement) -> TrainPlan:
    """Everything `describe_plan` prints; reads only config.json and stats.json."""
    plan = TrainPlan(["llmft train plan (dry run: nothing is trained, nothing is written)", "settings:"])
    plan.lines += [f"  {name}: {value}" for name, value in _flatten(config.model_dump(mode="json"))]
    plan.lines += ["placement:", _describe_placement(placement)]

    # Precision: on GPUs this machine cannot see, auto is bf16 (every GPU of the presets has it).
    bf16 = placement.bf16_supported if placement.bf16_supported is not None else True
    try:
        precision = precision_name(config.precision, placement.device_type, bf16)
        unseen_gpus = placement.device_type == "cuda" and placement.bf16_supported is None
        assumed = " (assumed for the job's GPUs)" if unseen_gpus else ""
        plan.lines.append(f"  precision: {config.precision} -> {precision}{assumed}")
    except TrainError as error:
        precision = "fp32"
        plan.problems.append(str(error))

    shape = _read(plan, "model", lambda: ModelShape.from_config(read_base_model_config(config.base_model)))
    weight_bytes = None
    if shape:
        parameters = shape.parameters()
        weight_bytes = parameters * BYTES_PER_VALUE[precision]
        lora = shape.lora_parameters(config.lora.r, config.lora.target_modules)
        plan.lines += [
            f"model: {config.base_model}",
            f"  {shape.model_type}: {shape.num_layers} layers, hidden {shape.hidden_size}, "
            f"intermediate {shape.intermediate_size}, vocab {shape.vocab_size}",
            f"  about {_count(parameters)} parameters: {_gib(weight_bytes)} of weights in {precision}",
            f"  LoRA r={config.lora.r} on {', '.join(config.lora.target_modules)}: "
            + (f"about {_count(lora)} trainable parameters" if lora is not None else "size unknown"),
        ]
    sharding = decide_sharding(
        config.sharding, placement.world, placement.device_type, weight_bytes or 0, placement.gpu_bytes
    )
    plan.lines.append(f"  sharding: {config.sharding} -> {sharding}")
    if config.backend == "nemo":
        plan.lines.append("  backend nemo: NeMo AutoModel places the model and plans memory itself")
    _plan_memory(plan, config, placement, shape, weight_bytes, precision, sharding)
    _plan_steps_and_tokens(plan, config, placement)

    checkpoints = config.checkpoint_uri or storage.join(config.output, "checkpoints")
    every = f"every {config.save_every_steps} steps and " if config.save_every_steps else ""
    resume = {
        "auto": "continues from the newest complete checkpoint there, if any",
        "never": "starts from step 0 and removes the checkpoints there",
    }[config.resume]
    plan.lines += [
        "outputs:",
        f"  adapter: {storage.join(config.output, 'adapter')}",
        f"  checkpoints: {checkpoints} ({every}at the end, the last {config.keep_checkpoints} kept); "
        f"resume {config.resume}: {resume}",
        f"  metrics: {storage.join(config.output, 'metrics.json')}",
    ]
    return plan


def _read(plan: TrainPlan, what: str, reader: Any) -> Any:
    """`reader()`, or None with the reason in the plan: a dry run shows what it can."""
    try:
        return reader()
    except TrainError as error:
        plan.problems.append(str(error))
    except Exception as error:  # storage or credentials: unknown from here, not a fault of the settings
        plan.lines.append(f"{what}: unknown here ({type(error).__name__}: {error})")
    return None


def _plan_memory(
    plan: TrainPlan,
    config: TrainConfig,
    placement: Placement,
    shape: ModelShape | None,
    weight_bytes: int | None,
    precision: str,
    sharding: str,
) -> None:
    plan.lines.append("memory:")
    if config.gradient_checkpointing:
        plan.lines.append("  gradient_checkpointing: every decoder layer recomputes its activations")
        return
    if not (config.fused and placement.device_type == "cuda"):
        plan.lines.append("  no activation checkpointing (it is planned on GPUs with the fused path)")
        return
    if shape is None or weight_bytes is None or not placement.gpu_bytes:
        plan.lines.append("  unknown here: the run plans it from the model shape and the GPU's memory")
        return
    per_process = weight_bytes // (placement.world if sharding == "fsdp" else 1)
    layers, memory = checkpointed_layers(
        config,
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        on_gpu=True,
        bytes_per_value=BYTES_PER_VALUE[precision],
        weight_bytes=per_process,
        gpu_bytes=placement.gpu_bytes,
    )
    assert memory is not None  # fused on a GPU: always planned
    plan.lines += [
        f"  micro batch: up to {config.micro_batch_size} x {config.max_length} = "
        f"{config.micro_batch_size * config.max_length} tokens",
        f"  weights per GPU {_gib(per_process)}; {_gib(memory.available_bytes)} left for activations; "
        f"{_gib(memory.activation_bytes_per_layer)} of activations per layer",
        f"  activation checkpointing on {layers} of {shape.num_layers} layers",
    ]
    if memory.available_bytes <= 0:
        plan.problems.append(
            f"the weights ({_gib(per_process)} per GPU) leave no room on a {_gib(placement.gpu_bytes)} GPU: "
            "use more GPUs with sharding: fsdp"
        )


def _plan_steps_and_tokens(plan: TrainPlan, config: TrainConfig, placement: Placement) -> None:
    stats = _read(plan, "data", lambda: read_data_stats(config.data))
    if stats is None:
        plan.lines.append("steps: unknown here (they follow from the number of training records)")
        return
    plan.lines += [
        f"data: {config.data}",
        f"  {stats.train_records} training and {stats.val_records} validation records ({stats.source})",
    ]
    if not stats.train_records:
        plan.problems.append(f"{config.data}: no training records: nothing to train on")
        return
    try:
        steps = plan_steps(config, stats.train_records, placement.world)
    except TrainError as error:
        plan.problems.append(str(error))
        return
    epochs = steps.total_steps / steps.steps_per_epoch
    plan.lines += [
        "steps:",
        f"  {steps.micro_batches_per_step} micro batches of {config.micro_batch_size} per optimizer step "
        f"({steps.accumulation} per process), {steps.steps_per_epoch} steps per epoch",
        f"  {steps.total_steps} optimizer steps ({epochs:.2f} epochs), {steps.warmup_steps} of warmup; "
        f"records whose response is cut off by max_length are skipped at run time",
    ]
    if stats.mean_record_chars is not None:
        per_record = min(stats.mean_record_chars / CHARS_PER_TOKEN, config.max_length)
        sequences = steps.total_steps * steps.micro_batches_per_step * config.micro_batch_size
        plan.lines.append(
            f"  about {per_record:,.0f} tokens per record (mean {stats.mean_record_chars:,.0f} characters, "
            f"~{CHARS_PER_TOKEN} per token): about {_count(per_record * sequences)} tokens over the run"
        )


def describe_plan(config: TrainConfig, placement: Placement | None = None) -> str:
    """The plan as text; by default for this process on this machine (WORLD_SIZE processes)."""
    if placement is None:
        placement = local_placement(config.device, "in-process", int(os.environ.get("WORLD_SIZE", "1")))
    return build_plan(config, placement).text()
