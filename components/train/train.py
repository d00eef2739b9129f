"""LoRA supervised fine-tuning with the `hf` backend (transformers + PEFT).

One readable loop: deterministic shuffling per epoch, gradient accumulation up to the
global batch size, AdamW with linear warmup and cosine decay, loss on response tokens
only, periodic checkpoints (adapter + optimizer + scheduler + position + RNG) that a
restarted run resumes from exactly, and the final adapter saved in Hugging Face PEFT
format so evaluate and export load it with `PeftModel.from_pretrained`.

Under torchrun (WORLD_SIZE > 1) the same loop is data parallel: each rank runs its share
of every step's micro batches, so a step still covers `global_batch_size` sequences; rank 0
alone writes outputs and logs metrics. The model is either replicated on every rank
(DistributedDataParallel) or sharded over the ranks (FSDP2) for a base model too big for one
GPU; `sharding` picks, and checkpoints hold whole state dicts, so a run resumes under either.

Output layout under `config.output`:
    adapter/            the LoRA adapter (adapter_config.json, adapter_model.safetensors) + tokenizer
    checkpoints/step-N/ the last `keep_checkpoints` checkpoints, each complete with a manifest
                        (or under `config.checkpoint_uri`)
    metrics.json        loss curve, validation curve, throughput
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from components import jsonout, storage
from components.model_source import BASE_MODEL_HELP, resolve_model
from components.records import Record, read_records
from components.tracking import NULL_TRACKER, Tracker
from components.train import distributed
from components.train.data import IGNORE_INDEX, EncodedExample, collate, encode_record
from components.train.loss import response_loss_sum, validation_loss
from components.train.plan import (
    TrainError,
    checkpointed_layers,
    plan_steps,
    resolve_device,
    resolve_precision,
)

log = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.pt"
LLAMA_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    r: int = Field(16, ge=1, description="LoRA rank: size of the low-rank update matrices.")
    alpha: int = Field(32, ge=1, description="LoRA alpha: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LLAMA_LORA_TARGETS),
        description="Names of the linear layers that get adapters (Llama names by default).",
    )


class TrainConfig(BaseModel):
    # inf or nan in a float setting (--learning-rate inf) trains a model of NaN weights: refused here.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    base_model: str = Field(min_length=1, description=BASE_MODEL_HELP)
    data: str = Field(
        min_length=1, description="Curated dataset directory (train.jsonl, val.jsonl) written by curate."
    )
    output: str = Field(
        min_length=1, description="Directory (path or s3://) for the adapter, checkpoints and metrics."
    )
    backend: Literal["hf", "nemo"] = Field(
        "hf", description="Training backend: hf (transformers + PEFT) or nemo (NeMo AutoModel, GPU only)."
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings.")
    epochs: float = Field(3.0, gt=0, description="Passes over the training set (fractions allowed).")
    max_steps: int = Field(0, ge=0, description="Stop after this many optimizer steps (0: use epochs).")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate of AdamW.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps with linear warmup.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    micro_batch_size: int = Field(4, ge=1, description="Sequences per forward pass on each device.")
    global_batch_size: int = Field(64, ge=1, description="Sequences per optimizer step (accumulated).")
    max_length: int = Field(2048, ge=8, description="Longest tokenized example; longer ones are cut.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Compute precision: auto = bf16 on GPUs that support it, else fp32."
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute every decoder layer's activations in backward: less memory, about a third "
        "more compute. false: on a GPU with the fused path, only the layers whose activations would not "
        "fit are recomputed, picked from the model shape, the micro batch and the GPU's memory.",
    )
    fused: bool = Field(
        True,
        description="Padding-free packed micro batches (each up to micro_batch_size x max_length tokens), "
        "fused LoRA layers and a fused loss: the same loss as the plain path, within float rounding, "
        "with less time and memory. false: the plain transformers + PEFT forward on padded batches.",
    )
    save_every_steps: int = Field(200, ge=0, description="Checkpoint every N steps (0: only at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep.")
    checkpoint_uri: str | None = Field(
        None, description="Where checkpoints go (path or s3://); default: <output>/checkpoints."
    )
    resume: Literal["auto", "never"] = Field(
        "auto",
        description="auto: continue from the newest complete checkpoint if there is one; "
        "never: start from step 0 (existing checkpoints are removed).",
    )
    log_every_steps: int = Field(10, ge=1, description="Log loss and learning rate every N steps.")
    max_nonfinite_steps: int = Field(
        0,
        ge=0,
        description="Steps whose loss or gradient norm is not finite (nan, inf) that may be skipped (no "
        "optimizer update) before training stops with an error; 0: stop at the first. Counted over "
        "this run (a resumed run counts afresh).",
    )
    seed: int = Field(42, description="Seed for adapter init and data order.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train.")
    sharding: Literal["auto", "ddp", "fsdp"] = Field(
        "auto",
        description="Several GPUs (torchrun) only. ddp: every GPU holds the whole model; fsdp: the "
        "model is sharded over the GPUs, for a base model that does not fit one; auto: fsdp when "
        "the base model's weights take half of one GPU's memory or more, else ddp (always ddp on CPUs).",
    )

    @field_validator("global_batch_size")
    @classmethod
    def _whole_micro_batches(cls, value: int, info: ValidationInfo) -> int:
        # An optimizer step accumulates whole micro batches: global 3 with micro 4 would train
        # on batches of 4 while the run reports 3.
        micro = info.data.get("micro_batch_size")
        if micro is None or value % micro == 0:
            return value
        lower = value // micro * micro
        examples = " or ".join(str(size) for size in (lower, lower + micro) if size > 0)
        raise ValueError(
            f"global batch {value} is not a whole number of micro batches of {micro} "
            f"(--micro-batch-size, micro_batch_size): make --global-batch-size a multiple of it, "
            f"e.g. {examples}"
        )


class TrainResult(BaseModel):
    adapter: str
    output: str
    steps: int
    epochs: float
    first_loss: float
    final_loss: float
    val_loss: float
    train_tokens: int
    tokens_per_second: float
    runtime_s: float
    # Every token the model was trained on, prompts included (train_tokens and tokens_per_second
    # count response tokens only, the ones that carry the loss).
    all_tokens: int = 0
    all_tokens_per_second: float = math.nan
    # Seconds in the training loop; runtime_s adds loading the model and data, validation and saving.
    train_loop_s: float = math.nan

    def summary(self) -> str:
        return (
            f"trained {self.steps} steps ({self.epochs:.2f} epochs): loss {self.first_loss:.3f} -> "
            f"{self.final_loss:.3f}, val loss {self.val_loss:.3f}, "
            f"{self.all_tokens_per_second:,.0f} tokens/s ({self.tokens_per_second:,.0f} response tokens/s) "
            f"over {self.train_loop_s:.0f} s of training, {self.runtime_s:.0f} s in all\n"
            f"adapter: {self.adapter}"
        )


def _checkpointed_layers(
    config: TrainConfig, model: Any, device: Any, dtype: Any, weight_bytes: int, sharding: str
) -> int:
    """How many decoder layers recompute their activations (see plan.checkpointed_layers)."""
    import torch

    layers = distributed.decoder_layers(model)
    shape = model.config
    on_gpu = device.type == "cuda"
    count, plan = checkpointed_layers(
        config,
        num_layers=len(layers),
        hidden_size=shape.hidden_size,
        intermediate_size=getattr(shape, "intermediate_size", 4 * shape.hidden_size),
        on_gpu=on_gpu,
        bytes_per_value=torch.finfo(dtype).bits // 8,
        weight_bytes=weight_bytes // (distributed.world_size() if sharding == "fsdp" else 1),
        gpu_bytes=torch.cuda.get_device_properties(device).total_memory if on_gpu else 0,
    )
    if plan and plan.checkpointed_layers:
        log.info(
            "activation checkpointing on %d of %d layers: %.1f GiB of activations per layer would not "
            "fit the %.1f GiB left beside the weights",
            plan.checkpointed_layers,
            len(layers),
            plan.activation_bytes_per_layer / 2**30,
            plan.available_bytes / 2**30,
        )
    return count


def _encode(tokenizer: Any, records: list[Record], max_length: int, split: str) -> list[EncodedExample]:
    examples = [encode_record(tokenizer, record, max_length) for record in records]
    kept = [example for example in examples if example.response_tokens > 0]
    if len(kept) < len(examples):
        log.warning(
            "%s: %d examples have no response tokens left after truncation to %d tokens; skipped",
            split,
            len(examples) - len(kept),
            max_length,
        )
    return kept


def _lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


@dataclass
class Progress:
    """Where training stands: saved in every checkpoint and restored on resume."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # optimizer steps already done in the current epoch
    tokens: int = 0  # response tokens trained on so far
    all_tokens: int = 0  # every token trained on so far, prompts included
    loss_curve: list[tuple[int, float]] = field(default_factory=list)


def _resume_settings(config: TrainConfig, base_model_digest: str, data_digest: str) -> dict[str, Any]:
    """The settings a checkpoint can only be continued with: they fix the data order and tensor shapes."""
    return {
        "seed": config.seed,
        "micro_batch_size": config.micro_batch_size,
        "global_batch_size": config.global_batch_size,
        "max_length": config.max_length,
        "lora.r": config.lora.r,
        "lora.target_modules": sorted(config.lora.target_modules),
        "base_model digest": base_model_digest,
        "data digest": data_digest,
    }


def _rng_state(device: Any) -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict[str, Any], device: Any) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _checkpoint_names(root: str) -> list[str]:
    """Checkpoint directory names under `root`, oldest first (step numbers are zero-padded)."""
    return sorted(name for name in storage.list_dirs(root) if name.startswith("step-"))


def _save_checkpoint(
    root: str,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    progress: Progress,
    settings: dict[str, Any],
    sharding: distributed.Sharding,
    device: Any,
    keep: int,
) -> None:
    """Rank 0 writes `root`/step-N (its manifest last) and drops the oldest beyond `keep`.

    Every rank calls it: under FSDP the adapter and optimizer state are gathered from all ranks.
    """
    import torch

    # Whole tensors keyed by parameter name, whatever the sharding: a checkpoint written under
    # FSDP resumes under DDP or in one process, and the other way round.
    adapter_state = distributed.full_state_dict(model)
    optimizer_state = distributed.full_optimizer_state_dict(model, optimizer)
    # Each rank draws dropout masks from its own RNG stream: keep every rank's, so each resumes its own.
    rng = distributed.all_gather(_rng_state(device))
    if distributed.is_main():
        with tempfile.TemporaryDirectory() as staging:
            model.save_pretrained(staging, state_dict=adapter_state)
            state = {
                **asdict(progress),
                "optimizer": optimizer_state,
                "scheduler": scheduler.state_dict(),
                "rng": rng,
            }
            torch.save(state, Path(staging) / TRAINER_STATE)
            metadata = {
                "step": progress.step,
                "epoch": progress.epoch,
                "world_size": distributed.world_size(),
                "sharding": sharding,
                "settings": settings,
            }
            storage.publish_dir(
                staging,
                storage.join(root, f"step-{progress.step:08d}"),
                producer="llmft.train",
                metadata=metadata,
            )
        for stale in _checkpoint_names(root)[:-keep]:
            storage.remove_dir(storage.join(root, stale))
    # No rank runs ahead (or exits) while rank 0 is still writing.
    distributed.barrier()


def _newest_complete_checkpoint(root: str) -> tuple[str, storage.Manifest] | None:
    """The newest checkpoint under `root` with its manifest; newer unfinished ones are skipped."""
    for name in reversed(_checkpoint_names(root)):
        uri = storage.join(root, name)
        try:
            return uri, storage.require_complete(uri)
        except storage.IncompleteDirectoryError as error:
            log.warning("ignoring checkpoint %s: %s", uri, error)
    return None


def _check_resume_settings(uri: str, saved: dict[str, Any] | None, current: dict[str, Any]) -> None:
    """Refuse a checkpoint made with settings that change the data order or tensor shapes."""
    if saved is None:
        raise TrainError(
            f"cannot resume from {uri}: its manifest records no training settings (an earlier llmft "
            "wrote it); set resume: never to start over, or point checkpoint_uri elsewhere"
        )
    differing = [name for name in current if saved.get(name) != current[name]]
    if differing:
        changes = "; ".join(
            f"{name}: checkpoint {saved.get(name)!r}, this run {current[name]!r}" for name in differing
        )
        raise TrainError(
            f"cannot resume from {uri}: it was made with different settings ({changes}). They decide "
            "the data order and tensor shapes, so continuing would mix two different trainings. Run "
            "with the checkpoint's settings, point checkpoint_uri elsewhere, or set resume: never to "
            "start over"
        )


def _load_adapter(uri: str, model: Any) -> None:
    """Restore the checkpoint's adapter weights into the PEFT model, before `distributed.wrap`:
    PEFT loads whole tensors, which FSDP's sharded parameters would not take."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(storage.localize_dir(uri) / "adapter_model.safetensors"))


def _load_trainer_state(uri: str, model: Any, optimizer: Any, scheduler: Any, device: Any) -> Progress:
    """Restore optimizer, scheduler and this rank's RNG (after `distributed.wrap`, with the
    optimizer of the wrapped model); return the saved progress."""
    import torch

    state = torch.load(storage.localize_dir(uri) / TRAINER_STATE, map_location="cpu", weights_only=True)
    if any(isinstance(key, int) for key in state["optimizer"]["state"]):
        # llmft before FSDP support saved AdamW's own state_dict, keyed by parameter position:
        # whole tensors in the unsharded optimizer's order, so only an unsharded model takes it.
        if distributed.is_sharded(model):
            raise TrainError(
                f"cannot resume from {uri} with sharding=fsdp: an earlier llmft wrote it, with the "
                "optimizer state in a form FSDP cannot load; resume it with sharding: ddp"
            )
        optimizer.load_state_dict(state["optimizer"])
    else:
        distributed.load_full_optimizer_state_dict(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    if len(rng) == distributed.world_size():
        _restore_rng(rng[distributed.rank()], device)
    else:
        log.warning(
            "%s was written by %d ranks and this run has %d: the data order and batches continue "
            "exactly, dropout randomness does not",
            uri,
            len(rng),
            distributed.world_size(),
        )
        _restore_rng(rng[0], device)
    return Progress(
        step=state["step"],
        epoch=state["epoch"],
        position=state["position"],
        tokens=state["tokens"],
        all_tokens=state.get("all_tokens", 0),  # absent from checkpoints of an earlier llmft
        loss_curve=[(int(step), float(loss)) for step, loss in state["loss_curve"]],
    )


def _checkpoint_to_resume(
    config: TrainConfig, checkpoints: str, settings: dict[str, Any], total_steps: int
) -> str | None:
    """With resume=auto, the newest complete checkpoint this run can continue (None: from step 0).

    Refuses a checkpoint with other settings, or past this run's last step; with resume=never,
    removes the checkpoints of an earlier run.
    """
    found = _newest_complete_checkpoint(checkpoints) if config.resume == "auto" else None
    if found:
        uri, manifest = found
        _check_resume_settings(uri, manifest.metadata.get("settings"), settings)
        if manifest.metadata["step"] > total_steps:
            raise TrainError(
                f"{uri} is at step {manifest.metadata['step']}, past this run's {total_steps} steps: "
                "raise max_steps or epochs, or set resume: never to start over"
            )
        return uri
    if config.resume == "never" and distributed.is_main() and _checkpoint_names(checkpoints):
        # An earlier run's checkpoints would be pruned in place of this run's, and a later
        # resume=auto would continue from them: they go now.
        log.warning("resume=never: removing the checkpoints of an earlier run in %s", checkpoints)
        for name in _checkpoint_names(checkpoints):
            storage.remove_dir(storage.join(checkpoints, name))
    elif config.resume == "auto":
        log.info("no complete checkpoint in %s: training from step 0", checkpoints)
    return None


def _step_groups(
    examples: list[EncodedExample], micro_batch_size: int, accumulation: int, seed: int
) -> Iterator[list[list[EncodedExample]]]:
    """One epoch of optimizer steps: a seeded shuffle cut into micro batches, `accumulation` per step.

    A remainder too small for a whole step is left out of this epoch (the next shuffle differs).
    """
    import torch

    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    batches = [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]
    for start in range(0, len(batches) - accumulation + 1, accumulation):
        yield [[examples[i] for i in batch] for batch in batches[start : start + accumulation]]


def _accumulate_gradients(
    model: Any, micro_batches: list[list[EncodedExample]], step_tokens: int, pad_id: int, device: Any
) -> float:
    """Backward over this rank's micro batches of one step; returns their loss per token of the step.

    `step_tokens` counts the response tokens of the whole step, all ranks' micro batches.
    """
    step_loss = 0.0
    for index, examples in enumerate(micro_batches):
        batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
        # Under DDP, gradients are all-reduced in the backward of the last micro batch only.
        with distributed.gradient_sync(model, sync=index == len(micro_batches) - 1):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss_sum, _ = response_loss_sum(logits, batch["labels"])
            # Divide by the whole step's token count, so every response token weighs the same
            # however the step is split into micro batches and ranks. DDP averages gradients
            # over ranks; the world size factor turns that average back into the sum.
            loss = loss_sum * distributed.world_size() / step_tokens
            loss.backward()
        step_loss += loss_sum.item() / step_tokens
    return step_loss


def _packed_micro_batches(
    group: list[list[EncodedExample]], accumulation: int, token_budget: int
) -> tuple[list[list[EncodedExample]], int]:
    """This rank's share of a step packed into micro batches, and the most any rank gets.

    Every rank packs every rank's share (all hold the same step), so all know how many
    forwards the busiest rank runs without asking each other.
    """
    from components.train import packing

    shares = [
        packing.pack(
            [example for batch in group[r * accumulation : (r + 1) * accumulation] for example in batch],
            token_budget,
        )
        for r in range(distributed.world_size())
    ]
    return shares[distributed.rank()], max(len(share) for share in shares)


def _accumulate_packed(
    model: Any,
    micro_batches: list[list[EncodedExample]],
    most_micro_batches: int,
    step_tokens: int,
    pad_id: int,
    device: Any,
) -> float:
    """`_accumulate_gradients` on packed micro batches (the model is a PackedCausalLM).

    Under FSDP every rank must run as many forwards and backwards (each gathers and reduces
    the layers' weights): a rank with fewer micro batches runs empty ones, whose loss is zero.
    """
    from components.train import packing

    step_loss = 0.0
    filler = EncodedExample(input_ids=[pad_id], labels=[IGNORE_INDEX])
    runs = most_micro_batches if distributed.is_sharded(model) else len(micro_batches)
    for index in range(runs):
        examples = micro_batches[index] if index < len(micro_batches) else [filler]
        batch = packing.packed_batch(examples).to(device)
        with distributed.gradient_sync(model, sync=index == runs - 1):
            loss_sum = model(**vars(batch))
            (loss_sum * distributed.world_size() / step_tokens).backward()
        step_loss += loss_sum.detach()  # read once per step: .item() would wait for the GPU
    return float(step_loss) / step_tokens


def _packed_validation_loss(
    model: Any, examples: list[EncodedExample], token_budget: int, pad_id: int, device: Any
) -> float:
    """`_validation_loss` through the PackedCausalLM: mean loss per response token of the validation set."""
    import torch

    from components.train import packing

    shares = [
        packing.pack(examples[r :: distributed.world_size()], token_budget)
        for r in range(distributed.world_size())
    ]
    micro_batches = shares[distributed.rank()]
    runs = max(len(share) for share in shares) if distributed.is_sharded(model) else len(micro_batches)
    filler = EncodedExample(input_ids=[pad_id], labels=[IGNORE_INDEX])
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    with torch.no_grad():
        for index in range(runs):
            batch = packing.packed_batch(micro_batches[index] if index < len(micro_batches) else [filler])
            loss_sum += model(**vars(batch.to(device)))
    model.train(was_training)
    tokens = sum(example.response_tokens for share in micro_batches for example in share)
    total_loss, total_tokens = distributed.all_reduce_sum([float(loss_sum), tokens])
    return total_loss / total_tokens if total_tokens else math.nan


def _validation_loss(
    model: Any, examples: list[EncodedExample], batch_size: int, pad_id: int, device: Any
) -> float:
    """Mean loss per response token of the validation set; each rank scores its share."""
    import torch

    share = examples[distributed.rank() :: distributed.world_size()]
    mean, tokens = validation_loss(model, share, batch_size, pad_id, device)
    if distributed.is_sharded(model):
        # Every FSDP forward gathers each layer's weights from all ranks, so all ranks must run
        # as many forwards: a rank with fewer batches (its share is one example shorter) runs
        # empty ones, whose output nobody reads.
        most_batches = math.ceil(math.ceil(len(examples) / distributed.world_size()) / batch_size)
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            for _ in range(most_batches - math.ceil(len(share) / batch_size)):
                model(input_ids=torch.full((1, 1), pad_id, device=device))
        model.train(was_training)
    loss_sum, total_tokens = distributed.all_reduce_sum([mean * tokens if tokens else 0.0, tokens])
    return loss_sum / total_tokens if total_tokens else math.nan


def _as_float(norm: Any) -> float:
    """clip_grad_norm_'s total norm as a float (under FSDP a DTensor: made whole first).

    Reading it waits for the GPU, but only for the norm: the step's loss was read already.
    """
    full_tensor = getattr(norm, "full_tensor", None)
    return float(full_tensor() if full_tensor else norm)


def _check_nonfinite(
    config: TrainConfig,
    skipped: list[int],
    loss: float,
    grad_norm: float,
    updates: int,
    resumed_from: str | None,
    checkpoints: str,
) -> None:
    """After a step with a non-finite loss or gradient norm (its number last in `skipped`): log that
    it is skipped, or raise TrainError once more than `max_nonfinite_steps` were, with the likely cause."""
    step = skipped[-1]
    values = f"the loss is {loss} and the gradient norm is {grad_norm}"
    if len(skipped) <= config.max_nonfinite_steps:
        log.warning(
            "step %d: %s; skipped without an update (%d of max_nonfinite_steps %d)",
            step,
            values,
            len(skipped),
            config.max_nonfinite_steps,
        )
        return
    if updates == 0:
        # Nothing this run did changed the weights: they came in that way.
        loaded = f"the checkpoint {resumed_from}" if resumed_from else f"--base-model {config.base_model}"
        cause = (
            f"before any update of this run, so {loaded} already computes non-finite values: check its "
            "weights for nan or inf"
        )
    else:
        cause = (
            f"after {updates} update{'s' if updates > 1 else ''}: training diverged; the likely cause is "
            f"a learning rate too high for this model (learning_rate {config.learning_rate:g}: try it 10 "
            "times lower)"
        )
    if config.precision == "fp16":
        cause += ", or fp16 overflowing (use precision bf16 or fp32)"
    count = (
        f" ({len(skipped)} such steps: {', '.join(map(str, skipped[-10:]))}; max_nonfinite_steps "
        f"{config.max_nonfinite_steps})"
        if config.max_nonfinite_steps
        else ""
    )
    # Checkpoints saved after some updates may hold weights already on their way to NaN.
    restart = (
        f"; the newest checkpoint in {checkpoints} may hold diverging weights: rerun with resume: never"
        if updates
        else ""
    )
    raise TrainError(f"step {step}: {values}{count}, {cause}. No adapter was written{restart}")


def train(config: TrainConfig, tracker: Tracker = NULL_TRACKER) -> TrainResult:
    """Train a LoRA adapter; under torchrun, one rank of a data parallel job."""
    storage.check_apart(
        {"output": config.output, "checkpoint_uri": config.checkpoint_uri},
        {"data": config.data, "base_model": config.base_model},
    )
    if config.backend == "nemo":
        return _train_with_nemo(config, tracker)
    device = distributed.setup(resolve_device(config.device))
    try:
        # A launcher hands every rank the same tracker; only rank 0 logs, so metrics are not repeated.
        return _train(config, device, tracker if distributed.is_main() else NULL_TRACKER)
    finally:
        distributed.teardown()


def _train_with_nemo(config: TrainConfig, tracker: Tracker) -> TrainResult:
    """The `nemo` backend: NeMo AutoModel trains on every visible GPU; its adapter is published
    in the same place and format as the hf backend's (see nemo_backend.py)."""
    import torch

    from components.train import nemo_backend

    nemo_backend.require_nemo_automodel()  # before any download: fail fast where AutoModel cannot run
    started = time.perf_counter()
    records = sum(1 for _ in read_records(storage.localize_dir(config.data) / "train.jsonl"))
    if not records:
        raise TrainError(f"{config.data}: train.jsonl holds no records: nothing to train on")
    micro_batches_per_step = max(config.global_batch_size // config.micro_batch_size, 1)
    steps_per_epoch = max(math.ceil(records / config.micro_batch_size) // micro_batches_per_step, 1)
    total_steps = config.max_steps or max(int(config.epochs * steps_per_epoch), 1)
    # AutoModel resumes from its own checkpoints; they need a local (or mounted) directory.
    if config.checkpoint_uri and not storage.is_s3(config.checkpoint_uri):
        workdir = Path(config.checkpoint_uri)
    else:
        digest = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]
        workdir = Path(tempfile.gettempdir()) / "llmft-nemo" / digest
    checkpoint_dir = nemo_backend.run_recipe(config, total_steps, max(torch.cuda.device_count(), 1), workdir)
    curve, tokens, all_tokens = nemo_backend.read_losses(checkpoint_dir)
    for step, loss in curve:
        tracker.log_metrics({"train_loss": loss}, step=step)
    adapter_uri = storage.join(config.output, "adapter")
    nemo_backend.publish_adapter(
        nemo_backend.latest_adapter_dir(checkpoint_dir),
        config.base_model,
        adapter_uri,
        total_steps,
        lineage=resolve_model(config.base_model).lineage(),  # resolved by run_recipe: cached, no download
    )
    runtime = time.perf_counter() - started
    window = max(len(curve) // 10, 1)
    losses = [loss for _, loss in curve] or [math.nan]
    result = TrainResult(
        adapter=adapter_uri,
        output=config.output,
        steps=total_steps,
        epochs=total_steps / steps_per_epoch,
        first_loss=sum(losses[:window]) / len(losses[:window]),
        final_loss=sum(losses[-window:]) / len(losses[-window:]),
        val_loss=math.nan,  # scored by evaluate, with the same loss as the hf backend
        train_tokens=tokens,
        # AutoModel runs as one subprocess: its start-up and saving count as training time here.
        tokens_per_second=tokens / runtime,
        runtime_s=runtime,
        all_tokens=all_tokens,
        all_tokens_per_second=all_tokens / runtime,
        train_loop_s=runtime,
    )
    metrics_file = {
        **result.model_dump(),
        "val_loss": None,
        "loss_curve": curve,
        "eval_curve": [],
        "backend": "nemo",
    }
    storage.write_text(storage.join(config.output, "metrics.json"), jsonout.dumps(metrics_file, indent=2))
    return result


def _train(config: TrainConfig, device: Any, tracker: Tracker) -> TrainResult:
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.train.acceleration import use_liger_kernels
    from components.train.fused_lora import fuse_lora_layers
    from components.train.fused_loss import PackedCausalLM
    from components.train.packing import register_packed_attention

    started = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    dtype = resolve_precision(config.precision, device)
    world, rank = distributed.world_size(), distributed.rank()

    data_dir = storage.localize_dir(config.data)
    train_records = list(read_records(data_dir / "train.jsonl"))
    val_records = list(read_records(data_dir / "val.jsonl"))
    if not train_records:
        raise TrainError(f"{data_dir / 'train.jsonl'} holds no records: nothing to train on")

    base = resolve_model(config.base_model)  # an llmft dir, a plain HF checkpoint (path or s3://) or hf://
    model_dir = base.local_dir
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Loaded on the CPU; `distributed.wrap` moves it to the device (FSDP one shard at a time),
    # after get_peft_model, so the LoRA init draws from the CPU random stream on any device.
    attention = register_packed_attention() if config.fused else None
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attention)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    sharding = distributed.choose_sharding(config.sharding, device, weight_bytes)
    missing = [
        name
        for name in config.lora.target_modules
        if not any(module.endswith(name) for module, _ in model.named_modules())
    ]
    if missing:
        raise TrainError(
            f"lora target_modules {missing} are not layers of {config.base_model} "
            f"({type(model).__name__}); check the model's module names"
        )
    checkpointed = _checkpointed_layers(config, model, device, dtype, weight_bytes, sharding)
    if checkpointed:
        # Non-reentrant: the variant FSDP and DDP support (transformers 4 defaulted to reentrant).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        for layer in distributed.decoder_layers(model)[checkpointed:]:
            layer.gradient_checkpointing = False
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    if config.fused:
        fuse_lora_layers(peft_model)
        if device.type == "cuda":
            use_liger_kernels(model)
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info(
        "LoRA r=%d on %s: %s trainable of %s parameters",
        config.lora.r,
        config.lora.target_modules,
        f"{trainable:,}",
        f"{total:,}",
    )

    train_examples = _encode(tokenizer, train_records, config.max_length, "train")
    val_examples = _encode(tokenizer, val_records, config.max_length, "val")
    step_plan = plan_steps(config, len(train_examples), world)
    micro_batches_per_step = step_plan.micro_batches_per_step
    accumulation = step_plan.accumulation  # micro batches per step on each rank
    steps_per_epoch = step_plan.steps_per_epoch
    total_steps = step_plan.total_steps
    warmup = step_plan.warmup_steps

    pad_id = tokenizer.pad_token_id
    # A packed micro batch holds no more tokens than a padded one of max_length sequences.
    token_budget = config.micro_batch_size * config.max_length

    checkpoints = config.checkpoint_uri or storage.join(config.output, "checkpoints")
    settings = _resume_settings(config, base.digest, storage.read_manifest(config.data).digest)
    resumed_from = _checkpoint_to_resume(config, checkpoints, settings, total_steps)
    if resumed_from:
        _load_adapter(resumed_from, peft_model)
    # Under FSDP, `peft_model` itself is sharded in place: from here on its parameters are shards.
    model = distributed.wrap(
        PackedCausalLM(peft_model) if config.fused else peft_model, device, sharding, dtype
    )
    parameters = [p for p in peft_model.parameters() if p.requires_grad]
    # The fused (single-kernel) AdamW on GPUs: one launch for all adapter tensors. Not under FSDP,
    # whose sharded parameters it has not been verified with here.
    optimizer = torch.optim.AdamW(
        parameters,
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        fused=device.type == "cuda" and sharding != "fsdp",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup))
    progress = Progress()
    if resumed_from:
        progress = _load_trainer_state(resumed_from, peft_model, optimizer, scheduler, device)
        log.info(
            "resuming from %s: step %d, epoch %d, %d steps into the epoch",
            resumed_from,
            progress.step,
            progress.epoch,
            progress.position,
        )
    log.info(
        "training %d examples for %d steps (micro batch %d x %d accumulation x %d ranks, %s on %s)",
        len(train_examples),
        total_steps,
        config.micro_batch_size,
        accumulation,
        world,
        dtype,
        device,
    )

    def save_checkpoint() -> None:
        _save_checkpoint(
            checkpoints,
            peft_model,
            optimizer,
            scheduler,
            progress,
            settings,
            sharding,
            device,
            config.keep_checkpoints,
        )

    model.train()
    tokens_before, all_tokens_before = progress.tokens, progress.all_tokens
    last_saved = progress.step if resumed_from else -1
    loop_started = time.perf_counter()
    window_tokens, window_all_tokens, window_started = 0, 0, loop_started
    updates, skipped = 0, []  # optimizer updates of this run; steps skipped for a non-finite loss or gradient
    # Rank 0 draws the progress bar; disable=None draws it only on a terminal.
    bar = tqdm(
        total=total_steps, initial=progress.step, desc="train", unit="step", disable=True if rank else None
    )
    while progress.step < total_steps:
        groups = _step_groups(
            train_examples, config.micro_batch_size, micro_batches_per_step, config.seed + progress.epoch
        )
        # islice skips the steps of this epoch that a resumed checkpoint already covers.
        for group in itertools.islice(groups, progress.position, None):
            # Every rank builds the same shuffle, so each knows the whole step's token count
            # and takes its own slice of the step's micro batches.
            step_tokens = sum(example.response_tokens for batch in group for example in batch)
            if config.fused:
                packed, most = _packed_micro_batches(group, accumulation, token_budget)
                rank_loss = _accumulate_packed(model, packed, most, step_tokens, pad_id, device)
            else:
                share = group[rank * accumulation : (rank + 1) * accumulation]
                rank_loss = _accumulate_gradients(model, share, step_tokens, pad_id, device)
            step_loss = distributed.all_reduce_sum([rank_loss])[0]
            # Every rank sees the same (all-reduced) loss and gradient norm, so all skip or stop together.
            grad_norm = _as_float(torch.nn.utils.clip_grad_norm_(parameters, 1.0))
            if math.isfinite(step_loss) and math.isfinite(grad_norm):
                optimizer.step()
                scheduler.step()
                updates += 1
            else:
                # One non-finite gradient makes every weight NaN after the update: no update at all.
                skipped.append(progress.step + 1)
                _check_nonfinite(config, skipped, step_loss, grad_norm, updates, resumed_from, checkpoints)
            optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress.position += 1
            step_all_tokens = sum(len(example.input_ids) for batch in group for example in batch)
            progress.tokens += step_tokens
            progress.all_tokens += step_all_tokens
            if skipped[-1:] != [progress.step]:
                progress.loss_curve.append((progress.step, step_loss))
            window_tokens += step_tokens
            window_all_tokens += step_all_tokens
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            if progress.step % config.log_every_steps == 0 or progress.step in (1, total_steps):
                now = time.perf_counter()
                metrics = {
                    "train_loss": step_loss,
                    "learning_rate": scheduler.get_last_lr()[0],
                    "tokens_per_second": window_tokens / (now - window_started),
                    "all_tokens_per_second": window_all_tokens / (now - window_started),
                }
                if device.type == "cuda":
                    metrics["gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                log.info(
                    "step %d/%d  loss %.4f  lr %.2e  %.0f tokens/s (%.0f response tokens/s)",
                    progress.step,
                    total_steps,
                    step_loss,
                    metrics["learning_rate"],
                    metrics["all_tokens_per_second"],
                    metrics["tokens_per_second"],
                )
                tracker.log_metrics(metrics, step=progress.step)
                window_tokens, window_all_tokens, window_started = 0, 0, now
            if config.save_every_steps and progress.step % config.save_every_steps == 0:
                save_checkpoint()
                last_saved = progress.step
            if progress.step >= total_steps:
                break
        else:
            # Only a pass that ran to its end counts as a finished epoch.
            progress.epoch += 1
            progress.position = 0
    bar.close()
    loop_seconds = time.perf_counter() - loop_started
    if skipped and not updates:
        raise TrainError(
            f"all {len(skipped)} steps of this run had a non-finite loss or gradient norm "
            f"(max_nonfinite_steps {config.max_nonfinite_steps}), so nothing was trained: check the "
            f"weights of {resumed_from or config.base_model} for nan or inf"
        )

    if config.fused:
        val_loss = _packed_validation_loss(model, val_examples, token_budget, pad_id, device)
    else:
        val_loss = _validation_loss(peft_model, val_examples, config.micro_batch_size, pad_id, device)
    if val_examples and not math.isfinite(val_loss):
        # The training losses were finite, but the updated weights are not usable.
        raise TrainError(
            f"the validation loss after step {progress.step} is {val_loss}: the adapter's weights are "
            f"not finite (learning_rate {config.learning_rate:g} may be too high, or precision "
            f"{config.precision} overflows); no adapter was written"
        )
    tracker.log_metrics({"val_loss": val_loss}, step=progress.step)
    runtime = time.perf_counter() - started
    if last_saved != progress.step:
        save_checkpoint()

    adapter_uri = storage.join(config.output, "adapter")
    loss_curve = progress.loss_curve
    first_window = [loss for _, loss in loss_curve[: max(len(loss_curve) // 10, 1)]]
    last_window = [loss for _, loss in loss_curve[-max(len(loss_curve) // 10, 1) :]]
    result = TrainResult(
        adapter=adapter_uri,
        output=config.output,
        steps=progress.step,
        epochs=progress.step / steps_per_epoch,
        first_loss=sum(first_window) / len(first_window),
        final_loss=sum(last_window) / len(last_window),
        val_loss=val_loss,
        train_tokens=progress.tokens,
        # This process's training loop: steps an earlier, interrupted attempt trained do not count,
        # nor do loading, validation and saving (runtime_s holds those).
        tokens_per_second=(progress.tokens - tokens_before) / loop_seconds,
        runtime_s=runtime,
        all_tokens=progress.all_tokens,
        all_tokens_per_second=(progress.all_tokens - all_tokens_before) / loop_seconds,
        train_loop_s=loop_seconds,
    )
    adapter_state = distributed.full_state_dict(peft_model)  # every rank: FSDP gathers the shards
    if distributed.is_main():
        with tempfile.TemporaryDirectory() as staging:
            peft_model.save_pretrained(staging, state_dict=adapter_state)
            tokenizer.save_pretrained(staging)
            metadata = {**base.lineage(), "steps": progress.step}
            storage.publish_dir(staging, adapter_uri, producer="llmft.train", metadata=metadata)
        # NaN (no validation records) is not valid JSON: it is written as null.
        finite_val = val_loss if math.isfinite(val_loss) else None
        metrics_file = {
            **result.model_dump(),
            "val_loss": finite_val,
            "loss_curve": loss_curve,
            "eval_curve": [(progress.step, finite_val)] if finite_val is not None else [],
            "world_size": world,
            "sharding": sharding,
            "resumed_from": resumed_from,
            "skipped_steps": skipped,  # a non-finite loss or gradient norm: no update (max_nonfinite_steps)
        }
        if device.type == "cuda":
            # Rank 0's peak over this attempt: what sharding saves shows here.
            metrics_file["gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        storage.write_text(storage.join(config.output, "metrics.json"), jsonout.dumps(metrics_file, indent=2))
    # Every rank returns once the adapter and metrics exist.
    distributed.barrier()
    return result
