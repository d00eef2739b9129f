"""Padding-free micro batches: examples packed end to end, each attending only to itself.

A padded micro batch spends compute on pad tokens; instruction data with long-tailed lengths
wastes most of it. Here a micro batch is one row of concatenated examples: positions restart
at 0 for every example, attention is causal within each example and never crosses into
another (`packed_attention`, through the cumulative lengths `cu_seq_lens`), and each
position's target is the next token of the same example, so the last token of one example
is never trained to predict the first token of the next. The loss is therefore exactly the
padded batch's loss.

`packed_attention` is registered with transformers as the attention implementation
"llmft_packed": variable-length flash attention on CUDA in fp16 or bf16
(`torch.nn.attention.varlen`), one causal scaled-dot-product attention per example elsewhere
(CPUs, and fp32 on a GPU, which the flash kernel does not take).
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from components.train.data import IGNORE_INDEX, EncodedExample

ATTENTION_NAME = "llmft_packed"
FLASH_DTYPES = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # (1, tokens)
    position_ids: torch.Tensor  # (1, tokens), restarting at 0 for every example
    targets: torch.Tensor  # (1, tokens): the next token of the same example, else IGNORE_INDEX
    cu_seq_lens: torch.Tensor  # (examples + 1,) int32 cumulative lengths
    max_length: int  # longest example

    def to(self, device: Any) -> PackedBatch:
        return PackedBatch(
            input_ids=self.input_ids.to(device, non_blocking=True),
            position_ids=self.position_ids.to(device, non_blocking=True),
            targets=self.targets.to(device, non_blocking=True),
            cu_seq_lens=self.cu_seq_lens.to(device, non_blocking=True),
            max_length=self.max_length,
        )


def pack(examples: list[EncodedExample], token_budget: int) -> list[list[EncodedExample]]:
    """Split `examples`, in order, into groups of at most `token_budget` tokens each.

    Order is kept so the packing is deterministic; an example longer than the budget gets a
    group of its own (the budget bounds memory like a padded batch of max_length sequences,
    and no example is longer than max_length).
    """
    groups: list[list[EncodedExample]] = []
    current: list[EncodedExample] = []
    used = 0
    for example in examples:
        length = len(example.input_ids)
        if current and used + length > token_budget:
            groups.append(current)
            current, used = [], 0
        current.append(example)
        used += length
    if current:
        groups.append(current)
    return groups


def packed_batch(examples: list[EncodedExample]) -> PackedBatch:
    """One row of concatenated examples with per-example positions and targets."""
    input_ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    cumulative = [0]
    for example in examples:
        length = len(example.input_ids)
        input_ids += example.input_ids
        positions += range(length)
        # labels[t + 1] is the target of position t; an example's last position has none.
        targets += [*example.labels[1:], IGNORE_INDEX]
        cumulative.append(cumulative[-1] + length)
    return PackedBatch(
        input_ids=torch.tensor([input_ids]),
        position_ids=torch.tensor([positions]),
        targets=torch.tensor([targets]),
        cu_seq_lens=torch.tensor(cumulative, dtype=torch.int32),
        max_length=max(len(example.input_ids) for example in examples),
    )


@dataclass(frozen=True)
class _Varlen:
    """torch's variable-length flash attention and how this release spells its arguments."""

    attention: Any
    causal: dict[str, Any]
    takes_scale: bool


def _find_varlen() -> _Varlen | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.10
        return None
    parameters = inspect.signature(varlen_attn).parameters
    # torch 2.10 takes is_causal; later releases express causality as the window (-1, 0).
    causal: dict[str, Any] = {"is_causal": True} if "is_causal" in parameters else {"window_size": (-1, 0)}
    return _Varlen(varlen_attn, causal, "scale" in parameters)


# Looked up once, not inside the attention call that torch.compile traces.
_VARLEN = _find_varlen()


def packed_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed example; (batch, heads, tokens, dim) in,
    (batch, tokens, heads, dim) out, as transformers' attention functions do.

    Without `cu_seq_lens_q` (an ordinary right-padded batch, such as the validation pass)
    it is plain causal attention: with right padding, real tokens never see the pads.
    """
    if dropout:
        raise ValueError("llmft_packed attention has no attention dropout; the model config sets it")
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    groups = query.shape[1] // key.shape[1]
    if cu_seq_lens is None:
        out = F.scaled_dot_product_attention(
            query, key, value, is_causal=query.shape[2] > 1, scale=scaling, enable_gqa=groups > 1
        )
        return out.transpose(1, 2).contiguous(), None
    if query.shape[0] != 1:
        raise ValueError(f"packed attention takes one packed row, got a batch of {query.shape[0]}")
    if query.is_cuda and _VARLEN is not None and query.dtype in FLASH_DTYPES:
        # (tokens, heads, dim); fewer key/value heads (GQA) go in as they are: the flash kernel
        # shares each among its query heads.
        q, k, v = (tensor[0].transpose(0, 1) for tensor in (query, key, value))
        extra = dict(_VARLEN.causal)
        if _VARLEN.takes_scale:
            extra["scale"] = scaling
        elif scaling is not None and abs(scaling - query.shape[-1] ** -0.5) > 1e-6:
            raise ValueError(f"this torch's varlen_attn has no scale argument; the model scales by {scaling}")
        max_length = kwargs["max_length_q"]
        out = _VARLEN.attention(
            q.contiguous(),
            k.contiguous(),
            v.contiguous(),
            cu_seq_lens,
            cu_seq_lens,
            max_length,
            max_length,
            **extra,
        )
        return out.unsqueeze(0), None
    bounds = cu_seq_lens.tolist()
    pieces = [
        F.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            is_causal=True,
            scale=scaling,
            enable_gqa=groups > 1,
        )
        for start, end in itertools.pairwise(bounds)
    ]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def register_packed_attention() -> str:
    """Make "llmft_packed" an attention implementation transformers models can load with."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, packed_attention)
    return ATTENTION_NAME
