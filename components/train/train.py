"""LoRA supervised fine-tuning with the `hf` backend (transformers + PEFT).

One readable loop: deterministic shuffling per epoch, gradient accumulation up to the
global batch size, AdamW with linear warmup and cosine decay, loss on response tokens
only, periodic checkpoints (adapter + optimizer + scheduler + position), and the final
adapter saved in Hugging Face PEFT format so evaluate and export load it with
`PeftModel.from_pretrained`.

Output layout under `config.output`:
    adapter/            the LoRA adapter (adapter_config.json, adapter_model.safetensors) + tokenizer
    checkpoints/step-N/ the last `keep_checkpoints` checkpoints, each complete with a manifest
    metrics.json        loss curve, validation curve, throughput
"""

from __future__ import annotations

import json
import logging
import math
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components import storage
from components.records import Record, read_records
from components.tracking import NULL_TRACKER, Tracker
from components.train.data import EncodedExample, collate, encode_record
from components.train.loss import response_loss_sum, validation_loss

log = logging.getLogger(__name__)

LLAMA_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainError(ValueError):
    """The training inputs or settings cannot work; the message says which and why."""


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, description="LoRA rank: size of the low-rank update matrices.")
    alpha: int = Field(32, ge=1, description="LoRA alpha: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: list(LLAMA_LORA_TARGETS),
        description="Names of the linear layers that get adapters (Llama names by default).",
    )


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(description="Base model: Hugging Face checkpoint directory (path or s3://).")
    data: str = Field(description="Curated dataset directory (train.jsonl, val.jsonl) written by curate.")
    output: str = Field(description="Directory (path or s3://) for the adapter, checkpoints and metrics.")
    backend: Literal["hf", "nemo"] = Field("hf", description="Training backend: hf (transformers + PEFT).")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings.")
    epochs: float = Field(3.0, gt=0, description="Passes over the training set (fractions allowed).")
    max_steps: int = Field(0, ge=0, description="Stop after this many optimizer steps (0: use epochs).")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate of AdamW.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps with linear warmup.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    micro_batch_size: int = Field(4, ge=1, description="Sequences per forward pass on each device.")
    global_batch_size: int = Field(16, ge=1, description="Sequences per optimizer step (accumulated).")
    max_length: int = Field(1024, ge=8, description="Longest tokenized example; longer ones are cut.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Compute precision: auto = bf16 on GPUs that support it, else fp32."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    save_every_steps: int = Field(0, ge=0, description="Checkpoint every N steps (0: only at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep.")
    log_every_steps: int = Field(10, ge=1, description="Log loss and learning rate every N steps.")
    seed: int = Field(42, description="Seed for adapter init and data order.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train.")


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

    def summary(self) -> str:
        return (
            f"trained {self.steps} steps ({self.epochs:.2f} epochs): loss {self.first_loss:.3f} -> "
            f"{self.final_loss:.3f}, val loss {self.val_loss:.3f}, "
            f"{self.tokens_per_second:,.0f} response tokens/s, {self.runtime_s:.0f} s\n"
            f"adapter: {self.adapter}"
        )


def require_single_process(num_nodes: int, gpus_per_node: int) -> None:
    """This release trains in one process on one device; refuse settings that ask for more."""
    if num_nodes != 1 or gpus_per_node > 1:
        raise TrainError(
            f"num_nodes={num_nodes}, gpus_per_node={gpus_per_node}: this release trains on one device "
            "(num_nodes=1, gpus_per_node<=1); multi-GPU and multi-node training (torchrun, PyTorchJob) "
            "are not available yet"
        )


def _device(choice: str) -> Any:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise TrainError("device=cuda was requested but no CUDA GPU is visible")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def _dtype(precision: str, device: Any) -> Any:
    import torch

    if precision == "auto":
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if use_bf16 else torch.float32
    if precision in ("bf16", "fp16") and device.type == "cpu":
        raise TrainError(f"precision={precision} needs a GPU; use fp32 or auto on CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


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


def _save_checkpoint(
    model: Any, optimizer: Any, scheduler: Any, step: int, epoch: int, output: str, keep: int
) -> None:
    import torch

    checkpoints = storage.join(output, "checkpoints")
    with tempfile.TemporaryDirectory() as staging:
        model.save_pretrained(staging)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "step": step,
                "epoch": epoch,
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
            },
            Path(staging) / "trainer_state.pt",
        )
        storage.publish_dir(
            staging,
            storage.join(checkpoints, f"step-{step:08d}"),
            producer="llmft.train",
            metadata={"step": step, "epoch": epoch},
        )
    for stale in sorted(storage.list_dirs(checkpoints))[:-keep]:
        storage.remove_dir(storage.join(checkpoints, stale))


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
    model: Any, group: list[list[EncodedExample]], pad_id: int, device: Any
) -> tuple[float, int]:
    """Backward over one step's micro batches; returns the step's loss per response token."""
    group_tokens = sum(example.response_tokens for batch in group for example in batch)
    step_loss = 0.0
    for examples in group:
        batch = {k: v.to(device) for k, v in collate(examples, pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # Divide by the whole step's token count, so every response token weighs the same
        # however the step is split into micro batches.
        loss_sum, _ = response_loss_sum(logits, batch["labels"])
        loss = loss_sum / group_tokens
        loss.backward()
        step_loss += loss.item()
    return step_loss, group_tokens


def train(config: TrainConfig, tracker: Tracker = NULL_TRACKER) -> TrainResult:
    if config.backend != "hf":
        raise TrainError(
            f"backend={config.backend!r} is not available in this release: use backend='hf' "
            "(the NeMo AutoModel backend is planned; see components/train/README.md)"
        )
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = _device(config.device)
    dtype = _dtype(config.precision, device)

    data_dir = storage.localize_dir(config.data)
    train_records = list(read_records(data_dir / "train.jsonl"))
    val_records = list(read_records(data_dir / "val.jsonl"))
    if not train_records:
        raise TrainError(f"{data_dir / 'train.jsonl'} holds no records: nothing to train on")

    model_dir = storage.localize_dir(config.base_model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
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
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    trainable, total = model.get_nb_trainable_parameters()
    log.info(
        "LoRA r=%d on %s: %s trainable of %s parameters",
        config.lora.r,
        config.lora.target_modules,
        f"{trainable:,}",
        f"{total:,}",
    )

    train_examples = _encode(tokenizer, train_records, config.max_length, "train")
    val_examples = _encode(tokenizer, val_records, config.max_length, "val")
    micro_batches_per_epoch = math.ceil(len(train_examples) / config.micro_batch_size)
    # A dataset smaller than one global batch still makes one optimizer step per epoch.
    accumulation = min(max(config.global_batch_size // config.micro_batch_size, 1), micro_batches_per_epoch)
    steps_per_epoch = max(micro_batches_per_epoch // accumulation, 1)
    total_steps = config.max_steps or max(int(config.epochs * steps_per_epoch), 1)
    warmup = int(config.warmup_ratio * total_steps)

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, warmup))
    pad_id = tokenizer.pad_token_id
    log.info(
        "training %d examples for %d steps (micro batch %d x %d accumulation, %s on %s)",
        len(train_examples),
        total_steps,
        config.micro_batch_size,
        accumulation,
        dtype,
        device,
    )

    loss_curve: list[tuple[int, float]] = []
    step, epoch, tokens = 0, 0, 0
    model.train()
    progress = tqdm(total=total_steps, desc="train", unit="step", disable=None)
    while step < total_steps:
        for group in _step_groups(train_examples, config.micro_batch_size, accumulation, config.seed + epoch):
            step_loss, group_tokens = _accumulate_gradients(model, group, pad_id, device)
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += group_tokens
            loss_curve.append((step, step_loss))
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.3f}")
            if step % config.log_every_steps == 0 or step in (1, total_steps):
                learning_rate = scheduler.get_last_lr()[0]
                log.info("step %d/%d  loss %.4f  lr %.2e", step, total_steps, step_loss, learning_rate)
                tracker.log_metrics({"train_loss": step_loss, "learning_rate": learning_rate}, step=step)
            if config.save_every_steps and step % config.save_every_steps == 0:
                _save_checkpoint(
                    model, optimizer, scheduler, step, epoch, config.output, config.keep_checkpoints
                )
            if step >= total_steps:
                break
        else:
            epoch += 1  # only a pass that ran to its end counts as a finished epoch
    progress.close()

    val_loss, _ = validation_loss(model, val_examples, config.micro_batch_size, pad_id, device)
    tracker.log_metrics({"val_loss": val_loss}, step=step)
    runtime = time.perf_counter() - started
    if not (config.save_every_steps and step % config.save_every_steps == 0):
        _save_checkpoint(model, optimizer, scheduler, step, epoch, config.output, config.keep_checkpoints)

    adapter_uri = storage.join(config.output, "adapter")
    with tempfile.TemporaryDirectory() as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        metadata = {"base_model": config.base_model, "steps": step}
        storage.publish_dir(staging, adapter_uri, producer="llmft.train", metadata=metadata)
    first_window = [loss for _, loss in loss_curve[: max(len(loss_curve) // 10, 1)]]
    last_window = [loss for _, loss in loss_curve[-max(len(loss_curve) // 10, 1) :]]
    result = TrainResult(
        adapter=adapter_uri,
        output=config.output,
        steps=step,
        epochs=step / steps_per_epoch,
        first_loss=sum(first_window) / len(first_window),
        final_loss=sum(last_window) / len(last_window),
        val_loss=val_loss,
        train_tokens=tokens,
        tokens_per_second=tokens / runtime,
        runtime_s=runtime,
    )
    # NaN (no validation records) is not valid JSON: it is written as null.
    finite_val = val_loss if math.isfinite(val_loss) else None
    metrics = {
        **result.model_dump(),
        "val_loss": finite_val,
        "loss_curve": loss_curve,
        "eval_curve": [(step, finite_val)] if finite_val is not None else [],
    }
    storage.write_text(storage.join(config.output, "metrics.json"), json.dumps(metrics, indent=2))
    return result
