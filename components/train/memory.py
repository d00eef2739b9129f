"""How many decoder layers must recompute their activations for a micro batch to fit the GPU.

Activation checkpointing costs a second forward of every checkpointed layer (about a third
more compute), so it pays only where memory demands it. On the fused path a Llama-style
layer keeps about (10 x hidden + 2 x intermediate) values per token for backward (measured
on an H100 with the Llama-3.1-8B shape: 36.1, 44.8 and 53.3 GiB at 4k, 6k and 8k tokens,
8.6 GiB per 2k tokens over 32 layers), so the layers that fit run without checkpointing
and only the rest recompute.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
# Held back for the allocator's fragmentation, the loss chunks, optimizer state and CUDA's own use.
HEADROOM_BYTES = 6 * GIB


@dataclass(frozen=True)
class MemoryPlan:
    checkpointed_layers: int
    activation_bytes_per_layer: int
    available_bytes: int


def plan_checkpointing(
    *,
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    tokens_per_micro_batch: int,
    bytes_per_value: int,
    weight_bytes: int,
    gpu_bytes: int,
) -> MemoryPlan:
    """The fewest layers to checkpoint so weights and saved activations fit in `gpu_bytes`.

    A checkpointed layer keeps only its input (hidden_size values per token).
    """
    per_layer = tokens_per_micro_batch * (10 * hidden_size + 2 * intermediate_size) * bytes_per_value
    kept_when_checkpointed = tokens_per_micro_batch * hidden_size * bytes_per_value
    available = gpu_bytes - weight_bytes - HEADROOM_BYTES
    for checkpointed in range(num_layers + 1):
        needed = (num_layers - checkpointed) * per_layer + checkpointed * kept_when_checkpointed
        if needed <= available:
            return MemoryPlan(checkpointed, per_layer, available)
    return MemoryPlan(num_layers, per_layer, available)
