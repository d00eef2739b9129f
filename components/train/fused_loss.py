"""The response-token loss without full-vocabulary logits, and the model that computes it.

The output layer of a LoRA model is frozen, so the only gradient the loss needs is the
hidden states'. `linear_cross_entropy_sum` computes it chunk by chunk during the forward
(softmax minus one-hot, times the output weight) while each chunk's logits exist, and
backward only scales it: peak memory is one chunk of float32 logits rather than a whole
micro batch's (a 128k vocabulary and 8k tokens would take 4 GiB in float32), and only the
positions that carry a target are projected at all.
"""

from __future__ import annotations

from typing import Any

import torch

from components.train.data import IGNORE_INDEX

# Rows per chunk such that a chunk's float32 logits take about 1 GiB.
LOGIT_CHUNK_ELEMENTS = 2**28


class _LinearCrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows):  # type: ignore[override]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            # One fused pass: the hidden dtype's logits in, float32 log-probabilities out.
            log_probs = torch.log_softmax(hidden[rows] @ weight.t(), dim=-1, dtype=torch.float32)
            chunk_targets = targets[rows]
            total -= log_probs.gather(1, chunk_targets[:, None]).sum()
            if grad_hidden is not None:
                probs = log_probs.exp_()  # softmax, in place
                probs[torch.arange(probs.shape[0], device=probs.device), chunk_targets] -= 1.0
                grad_hidden[rows] = probs.to(hidden.dtype) @ weight
        ctx.save_for_backward(grad_hidden)
        return total

    @staticmethod
    def backward(ctx, grad_total):  # type: ignore[override]
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_total.to(grad_hidden.dtype), None, None, None


def linear_cross_entropy_sum(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int = 0
) -> torch.Tensor:
    """Summed cross-entropy of `hidden` (rows, dim) projected by the frozen `weight` (vocab, dim)."""
    if weight.requires_grad:
        raise ValueError("the fused loss needs a frozen output layer (LoRA does not train it)")
    rows = chunk_rows or max(LOGIT_CHUNK_ELEMENTS // weight.shape[0], 1)
    return _LinearCrossEntropySum.apply(hidden, weight, targets, rows)


class PackedCausalLM(torch.nn.Module):
    """A PEFT causal LM whose forward takes a PackedBatch's fields and returns its summed response loss.

    Decoder and fused loss run in one module, so DDP and FSDP wrap it like the model itself
    (their hooks see every parameter the step uses).
    """

    def __init__(self, peft_model: Any) -> None:
        super().__init__()
        self.peft_model = peft_model
        causal_lm = peft_model.get_base_model()
        config = causal_lm.config
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "logits_scaling", 1.0) != 1.0:
            raise ValueError(
                f"{config.model_type}: the fused loss takes plain logits (no soft-capping or scaling)"
            )
        if causal_lm.get_output_embeddings().bias is not None:
            raise ValueError(f"{type(causal_lm).__name__}: the fused loss takes an output layer without bias")

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        targets: torch.Tensor,
        cu_seq_lens: torch.Tensor,
        max_length: int,
    ) -> torch.Tensor:
        """The summed loss of one PackedBatch, passed as `model(**vars(batch))`: DDP hands plain
        tensors and ints to the wrapped forward as they are."""
        causal_lm = self.peft_model.get_base_model()
        decoder = getattr(causal_lm, causal_lm.base_model_prefix)
        output_layer = causal_lm.get_output_embeddings()
        hidden = decoder(
            input_ids=input_ids,
            position_ids=position_ids,
            cu_seq_lens_q=cu_seq_lens,
            cu_seq_lens_k=cu_seq_lens,
            max_length_q=max_length,
            max_length_k=max_length,
        ).last_hidden_state
        scored = targets[0] != IGNORE_INDEX
        return linear_cross_entropy_sum(hidden[0][scored], output_layer.weight, targets[0][scored])
