"""The few torch.distributed helpers the train loop needs for data parallel training.

A process is one rank of a data parallel job when torchrun (or a PyTorchJob, which sets
the same variables) launched it with WORLD_SIZE > 1. Every helper also works in a plain
single process, where it does nothing (or returns its input), so the train loop reads
the same either way.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

log = logging.getLogger(__name__)

# Rank 0 writes checkpoints (possibly to S3) while the other ranks wait at a barrier or at
# the next gradient all-reduce; the default timeout (10 minutes for NCCL) is too tight for
# a slow upload, and a real hang still ends.
_TIMEOUT = timedelta(minutes=30)


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


def wrap(model: Any, device: Any) -> Any:
    """The model in DistributedDataParallel on several ranks; the model itself otherwise.

    DDP registers only parameters that require gradients, so with LoRA only the adapter
    weights are all-reduced.
    """
    from torch.nn.parallel import DistributedDataParallel

    if not is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def gradient_sync(model: Any, sync: bool) -> Iterator[None]:
    """Inside, a DDP backward all-reduces gradients only when `sync` is true.

    Gradient accumulation needs the all-reduce once per optimizer step, after the last
    micro batch; the earlier backwards only add to the local gradients.
    """
    from torch.nn.parallel import DistributedDataParallel

    if sync or not isinstance(model, DistributedDataParallel):
        yield
        return
    with model.no_sync():
        yield
