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

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

LIGER_KERNELS = {
    "rope": True,
    "rms_norm": True,
    "swiglu": True,
    "cross_entropy": False,
    "fused_linear_cross_entropy": False,
}
# The one module-level function the patched model instance still looks up at call time.
ROTARY_FUNCTION = "apply_rotary_pos_emb"


def use_liger_kernels(model: Any) -> bool:
    """Swap `model`'s norms, rotary embeddings and MLP activations for Liger's kernels.

    Returns False, with a warning, where liger-kernel is not installed (it is in the train
    image: the `gpu` extra). Liger patches the module instances and, besides, replaces the
    norm and MLP classes and the rotary function in the model family's transformers module,
    which would reach every model the process builds later, on any device (its Triton
    kernels fail on CPU tensors). So the classes are put back, and the rotary function
    becomes one that takes Liger's kernel for CUDA tensors and transformers' own otherwise.
    """
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        log.warning("liger-kernel is not installed (pip install 'llmft[gpu]'): training without its kernels")
        return False
    module = sys.modules[type(model).__module__]
    before = dict(vars(module))
    _apply_liger_kernel_to_instance(model=model, **LIGER_KERNELS)
    for name, value in list(vars(module).items()):
        if name not in before:
            delattr(module, name)
        elif value is not before[name]:
            restored = _rotary_for_cuda_only(value, before[name]) if name == ROTARY_FUNCTION else before[name]
            setattr(module, name, restored)
    return True


def _rotary_for_cuda_only(kernel: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    original = getattr(original, "transformers_rotary", original)  # patched again: wrap the real one

    @functools.wraps(original)
    def apply_rotary_pos_emb(query: Any, key: Any, *args: Any, **kwargs: Any) -> Any:
        return (kernel if query.is_cuda else original)(query, key, *args, **kwargs)

    apply_rotary_pos_emb.transformers_rotary = original  # type: ignore[attr-defined]
    return apply_rotary_pos_emb
