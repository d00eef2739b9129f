"""LoRA linear layers computed as one autograd function, in the base model's dtype.

PEFT computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` op by op. With a bf16 base
and float32 adapter weights (PEFT's default), that casts `x` to float32 for every adapter
(q, k and v each keep their own float32 copy for backward), writes the adapter output and
its scaled copy, and adds it to the base output in a separate pass. Here the adapter runs
in the input's dtype and its product is accumulated into the base output by the GEMM
itself (`addmm_`), and backward does the same for the input gradient. The adapter weights
stay float32 parameters (AdamW updates float32 masters); only their bf16 copies take part
in the matmuls, so results agree with PEFT's within bf16 rounding, and exactly in float32.

`fuse_lora_layers` switches PEFT's `lora.Linear` modules of a model to this forward; the
modules, their parameters and the saved adapter stay PEFT's own. Layers it cannot compute
the same way (several active adapters, DoRA and other variants, merged weights, LoRA bias)
keep PEFT's forward.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


class _LoraLinear(torch.autograd.Function):
    """y = x W^T + b + s (d A^T) B^T, where d is x after dropout (`dropped`; None without dropout)."""

    @staticmethod
    def forward(ctx, x, dropped, weight, bias, lora_a, lora_b, scaling):  # type: ignore[override]
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        d2 = x2 if dropped is None else dropped.reshape(-1, shape[-1])
        a = lora_a.to(x.dtype)
        b = lora_b.to(x.dtype)
        projected = d2 @ a.t()  # (tokens, r): the only activation the adapter adds
        out = F.linear(x2, weight, bias)
        out.addmm_(projected, b.t(), alpha=scaling)
        ctx.save_for_backward(x2 if ctx.needs_input_grad[2] else None, d2, weight, a, b, projected)
        ctx.scaling = scaling
        ctx.same_input = dropped is None
        ctx.shape = shape
        ctx.param_dtypes = (lora_a.dtype, lora_b.dtype)
        return out.reshape(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x2, d2, weight, a, b, projected = ctx.saved_tensors
        scaling = ctx.scaling
        g = grad_out.reshape(-1, grad_out.shape[-1])
        grad_projected = (g @ b) * scaling  # (tokens, r)
        grad_b = (g.t() @ projected).mul_(scaling).to(ctx.param_dtypes[1])
        grad_a = (grad_projected.t() @ d2).to(ctx.param_dtypes[0])
        grad_x = grad_dropped = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_x = g @ weight
            if ctx.same_input:
                grad_x.addmm_(grad_projected, a)  # the adapter's share of the input gradient, in place
            else:
                grad_dropped = (grad_projected @ a).reshape(ctx.shape)
            grad_x = grad_x.reshape(ctx.shape)
        grad_weight = None
        if ctx.needs_input_grad[2]:
            grad_weight = g.t() @ x2
        grad_bias = g.sum(0) if ctx.needs_input_grad[3] else None
        return grad_x, grad_dropped, grad_weight, grad_bias, grad_a, grad_b, None


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Forward of one fused PEFT lora.Linear (bound to the module by `fuse_lora_layers`).

    The adapter's name was fixed when the layer was fused: a step runs this hundreds of
    times, and PEFT's active-adapter lookups would cost more host time than the kernels.
    """
    name = self._llmft_adapter
    if args or kwargs or self.merged or self.disable_adapters or self.active_adapters != [name]:
        return type(self).forward(self, x, *args, **kwargs)
    dropout = self.lora_dropout[name]
    # None: the adapter reads x itself (passing x twice would stop torch.compile from tracing).
    dropped = dropout(x) if self.training and not isinstance(dropout, torch.nn.Identity) else None
    base = self.base_layer
    return _LoraLinear.apply(
        x,
        dropped,
        base.weight,
        base.bias,
        self.lora_A[name].weight,
        self.lora_B[name].weight,
        self.scaling[name],
    )


def _fusable(module: Any) -> bool:
    adapters = list(module.active_adapters)
    if len(adapters) != 1 or module.merged:
        return False
    name = adapters[0]
    return (
        name in module.lora_A
        and name not in module.lora_variant  # DoRA and other variants compute something else
        and module.lora_A[name].bias is None
        and module.lora_B[name].bias is None
        and isinstance(module.base_layer, torch.nn.Linear)
    )


def fuse_lora_layers(model: Any) -> int:
    """Give every PEFT lora.Linear of `model` that allows it the fused forward; returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    fused = skipped = 0
    for module in model.modules():
        if type(module) is not LoraLinear:
            continue
        if _fusable(module):
            module._llmft_adapter = module.active_adapters[0]
            module.forward = types.MethodType(_fused_forward, module)
            fused += 1
        else:
            skipped += 1
    if skipped:
        log.info(
            "fused LoRA: %d layers fused, %d keep PEFT's forward (variants, biases or merges)", fused, skipped
        )
    return fused
