"""The few torch.distributed helpers the train loop needs for data parallel training.

A process is one rank of a data parallel job when torchrun (or a PyTorchJob, which sets
the same variables) launched it with WORLD_SIZE > 1. Every helper also works in a plain
single process, where it does nothing (or returns its input), so the train loop reads
the same either way.

Two ways to spread the model over the ranks (`Sharding`; "none" in a single process):

- ddp: every rank holds the whole model, DistributedDataParallel all-reduces the LoRA gradients;
- fsdp: FSDP2 (`fully_shard`) splits every weight, the frozen base weights included, into one
  shard per rank and gathers a layer's weights just for its forward and backward, so a base
  model too big for one GPU trains on several.

Checkpoints hold whole (unsharded) state dicts either way, so a run may resume with the other.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, Literal

log = logging.getLogger(__name__)

# Rank 0 writes checkpoints (possibly to S3) while the other ranks wait at a barrier or at
# the next gradient all-reduce; the default timeout (10 minutes for NCCL) is too tight for
# a slow upload, and a real hang still ends.
_TIMEOUT = timedelta(minutes=30)

# How the model is spread over the ranks; "none" in a single process.
Sharding = Literal["none", "ddp", "fsdp"]

# sharding=auto picks FSDP when the base model's weights take at least this share of one
# GPU's memory: the rest must hold activations, the LoRA weights, their gradients and AdamW
# state, and the CUDA context; DDP is faster where the model fits with room to spare.
FSDP_MEMORY_SHARE = 0.5


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    """True in a process that torchrun started as one rank of several."""
    return world_size() > 1


def is_main() -> bool:
    """Rank 0: the one process that writes outputs and logs metrics."""
    return rank() == 0


def setup(device: Any) -> Any:
    """Join the process group; returns the device this rank trains on.

    NCCL on GPUs, each rank on the GPU named by LOCAL_RANK; gloo on CPUs. A no-op outside
    torchrun.
    """
    import torch
    import torch.distributed as dist

    if not is_distributed():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=_TIMEOUT)
    log.info(
        "rank %d of %d (local rank %d) on %s, backend %s", rank(), world_size(), local_rank(), device, backend
    )
    return device


def teardown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if is_distributed():
        dist.barrier()


def _reduce_device() -> Any:
    import torch
    import torch.distributed as dist

    # NCCL reduces only tensors on this rank's GPU; gloo reduces CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum each value over all ranks (in float64, so token counts stay exact)."""
    import torch
    import torch.distributed as dist

    if not is_distributed():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_gather(value: Any) -> list[Any]:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    import torch.distributed as dist

    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def decide_sharding(
    requested: Literal["auto", "ddp", "fsdp"],
    world: int,
    device_type: str,
    model_bytes: int,
    gpu_bytes: int | None,
) -> Sharding:
    """The sharding a job of `world` processes uses (pure; `choose_sharding` and the dry-run plan
    both ask it): "none" in one process, `requested` unless auto, else ddp on CPUs and fsdp when
    the base model's weights take FSDP_MEMORY_SHARE of one GPU's memory or more."""
    if world <= 1:
        return "none"
    if requested != "auto":
        return requested
    if device_type != "cuda" or not gpu_bytes:
        return "ddp"
    return "fsdp" if model_bytes / gpu_bytes >= FSDP_MEMORY_SHARE else "ddp"


def choose_sharding(requested: Literal["auto", "ddp", "fsdp"], device: Any, model_bytes: int) -> Sharding:
    """DDP or FSDP for this job ("none" in a single process); `auto` takes FSDP when the base
    model would crowd one GPU.

    `model_bytes` is the base model's weights in the training dtype. The choice is logged
    with its reason.
    """
    import torch

    if not is_distributed():
        if requested != "auto":
            log.info("sharding=%s: one process holds the whole model; it applies under torchrun", requested)
        return "none"
    if requested != "auto":
        log.info("sharding: %s (as configured)", requested)
        return requested
    if device.type != "cuda":
        log.info("sharding=auto: ddp (on CPUs the model lives in host memory; FSDP saves GPU memory)")
        return "ddp"
    gpu_bytes = torch.cuda.get_device_properties(device).total_memory
    choice = decide_sharding(requested, world_size(), device.type, model_bytes, gpu_bytes)
    log.info(
        "sharding=auto: %s (the base model's weights, %.1f GiB, take %.0f%% of one GPU's %.1f GiB; "
        "fsdp from %.0f%%)",
        choice,
        model_bytes / 2**30,
        100 * model_bytes / gpu_bytes,
        gpu_bytes / 2**30,
        100 * FSDP_MEMORY_SHARE,
    )
    return choice


def decoder_layers(model: Any) -> list[Any]:
    """The model's repeated transformer blocks (`LlamaDecoderLayer`, `Qwen2DecoderLayer`, ...)."""
    return [module for module in model.modules() if type(module).__name__.endswith("DecoderLayer")]


def wrap(model: Any, device: Any, sharding: Sharding, compute_dtype: Any = None) -> Any:
    """The model on `device`, ready for data parallel training with `sharding`.

    - none (one process): the model itself, moved to `device`;
    - ddp: the model in DistributedDataParallel. DDP registers only parameters that require
      gradients, so with LoRA only the adapter weights are all-reduced;
    - fsdp: the model itself, sharded in place with FSDP2 (see `shard`).

    Call it before building the optimizer: FSDP replaces the parameters with sharded ones.
    """
    from torch.nn.parallel import DistributedDataParallel

    if sharding == "none":
        return model.to(device)
    if sharding == "fsdp":
        return shard(model, device, compute_dtype)
    model.to(device)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(model: Any, device: Any, compute_dtype: Any = None) -> Any:
    """Shard `model` (on the CPU) over all ranks with FSDP2; its shards land on `device`.

    Each decoder layer becomes one FSDP unit (its weights are gathered for its forward and
    backward only, then freed), and the root takes what is left (embeddings, final norm,
    output layer). `fully_shard` moves each unit to `device` as it shards it, so while sharding
    a rank's device never holds more than its shards and one whole layer.

    With a 16-bit `compute_dtype`, layers compute in it while gradients are reduced in float32:
    the LoRA weights (PEFT keeps them in float32) and AdamW stay in float32, as on one GPU.
    """
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world_size(),))
    precision = MixedPrecisionPolicy()
    if compute_dtype is not None and compute_dtype != torch.float32:
        precision = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    layers = decoder_layers(model)
    if not layers:
        log.warning(
            "fsdp: no *DecoderLayer modules in %s: the whole model is one FSDP unit, gathered whole "
            "for every forward (no memory saved over DDP during compute)",
            type(model).__name__,
        )
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=precision)
    fully_shard(model, mesh=mesh, mp_policy=precision)
    log.info("fsdp: %d decoder layers and the root sharded over %d ranks", len(layers), world_size())
    return model


def is_sharded(model: Any) -> bool:
    """True for a model that `shard` sharded: its forward needs every rank (see `wrap`)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(model: Any, sync: bool) -> Iterator[None]:
    """Inside, a backward reduces gradients over the ranks only when `sync` is true.

    Gradient accumulation needs the reduction once per optimizer step, after the last
    micro batch; the earlier backwards only add to the local gradients. DDP's `no_sync`
    skips its all-reduce, FSDP's `set_requires_gradient_sync(False)` its reduce-scatter.
    """
    from torch.nn.parallel import DistributedDataParallel

    if sync:
        yield
    elif isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
    elif is_sharded(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def full_state_dict(model: Any) -> dict[str, Any]:
    """The trainable parameters (the LoRA weights) whole, on the CPU, keyed like `model.state_dict()`.

    Every rank must call it: under FSDP it gathers each parameter's shards, to rank 0 only
    (the other ranks get an empty dict). The frozen base weights are left out, so a sharded
    70B base model is never gathered.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return get_model_state_dict(model, options=options)


def full_optimizer_state_dict(model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimizer's state whole, on the CPU, keyed by parameter name (as `full_state_dict`).

    Parameter names, not the optimizer's parameter indices, and whole tensors, not shards: the
    same checkpoint loads under DDP, FSDP or in one process. Every rank must call it.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_full_optimizer_state_dict(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Load what `full_optimizer_state_dict` returned; under FSDP each rank keeps its shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
