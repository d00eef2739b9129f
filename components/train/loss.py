"""The one loss: cross-entropy summed over response tokens, shared by train and evaluate."""

from __future__ import annotations

import math
from typing import Any

from components.train.data import IGNORE_INDEX, EncodedExample, collate


def response_loss_sum(logits: Any, labels: Any) -> tuple[Any, int]:
    """(summed cross-entropy, token count) over the positions whose next token is a response token.

    Only the scored positions go to float32: full-vocabulary logits for a whole batch in
    float32 would dominate memory on large vocabularies.
    """
    import torch

    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    selected = logits[:, :-1][mask].float()
    loss = torch.nn.functional.cross_entropy(selected, targets[mask], reduction="sum")
    return loss, int(mask.sum().item())


def validation_loss(
    model: Any,
    examples: list[EncodedExample],
    batch_size: int,
    pad_id: int,
    device: Any,
    desc: str = "val loss",
) -> tuple[float, int]:
    """(mean loss per response token, token count) over all examples, in eval mode."""
    import torch
    from tqdm.auto import tqdm

    # Longest first: padding shrinks, and an out-of-memory batch fails at once, not at the end.
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    was_training = model.training
    model.eval()
    total_loss, total_tokens = 0.0, 0
    with torch.inference_mode():
        for indices in tqdm(batches, desc=desc, unit="batch", disable=None):
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in indices], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss, tokens = response_loss_sum(logits, batch["labels"])
            total_loss += loss.item()
            total_tokens += tokens
    model.train(was_training)
    return (total_loss / total_tokens if total_tokens else math.nan), total_tokens
