"""Triton kernels for the decoder's elementwise work on CUDA GPUs, from Liger.

Left to PyTorch's eager kernels, a Llama layer's RMSNorms (in float32), rotary embeddings
and SwiGLU are dozens of memory-bound kernels that together take a quarter of a LoRA
step on an H100 and keep float32 copies of activations for backward. Liger computes each
in one fused kernel with the same arithmetic (float32 inside). Measured on one H100 with
the fused path (docs/benchmarks.md): Llama-3.1-8B shape 10.8k -> 13.7k tokens/s with less
memory; torch.compile of the decoder layers gave 11.5k.

Only the norm, rotary and SwiGLU kernels are used: the loss is llmft's own fused one.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

LIGER_KERNELS = {
    "rope": True,
    "rms_norm": True,
    "swiglu": True,
    "cross_entropy": False,
    "fused_linear_cross_entropy": False,
}


def use_liger_kernels(model: Any) -> bool:
    """Swap `model`'s norms, rotary embeddings and MLP activations for Liger's kernels.

    Returns False, with a warning, where liger-kernel is not installed (it is in the train
    image: the `gpu` extra). Liger patches module instances; its rotary kernel replaces the
    function in the model family's transformers module, for the rest of the process.
    """
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        log.warning("liger-kernel is not installed (pip install 'llmft[gpu]'): training without its kernels")
        return False
    _apply_liger_kernel_to_instance(model=model, **LIGER_KERNELS)
    return True
