"""Turn canonical records into token ids with the loss on response tokens only.

Training and evaluation both use `encode_record` and `collate`, so validation loss is
computed on exactly the tokens training optimises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.prompt import render_prompt
from components.records import Record

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]

    @property
    def response_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def encode_record(tokenizer: Any, record: Record, max_length: int) -> EncodedExample:
    """Prompt tokens are masked with IGNORE_INDEX; the response and EOS carry the loss.

    Prompt and response are tokenised separately so the mask boundary is exact even
    where a tokenizer would merge across it. Over-long examples lose prompt tokens from
    the left first (the instruction's end sits next to the answer), then response tokens
    from the right.
    """
    prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt_ids = tokenizer(render_prompt(record.prompt, record.system), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(record.response, add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    room_for_prompt = max(max_length - len(prefix) - len(response_ids), 0)
    prompt_ids = prompt_ids[len(prompt_ids) - room_for_prompt :] if room_for_prompt else []
    input_ids = (prefix + prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * (len(prefix) + len(prompt_ids)) + response_ids)[:max_length]
    return EncodedExample(input_ids=input_ids, labels=labels)


def prompt_ids(tokenizer: Any, record: Record) -> list[int]:
    """The ids a model generates from (BOS + rendered prompt), as in `encode_record`."""
    prefix = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return (
        prefix + tokenizer(render_prompt(record.prompt, record.system), add_special_tokens=False)["input_ids"]
    )


def collate(examples: list[EncodedExample], pad_token_id: int) -> dict[str, Any]:
    """Right-pad a batch; padding is masked out of both attention and loss."""
    import torch

    longest = max(len(example.input_ids) for example in examples)
    input_ids, labels, attention = [], [], []
    for example in examples:
        padding = longest - len(example.input_ids)
        input_ids.append(example.input_ids + [pad_token_id] * padding)
        labels.append(example.labels + [IGNORE_INDEX] * padding)
        attention.append([1] * len(example.input_ids) + [0] * padding)
    return {
        "input_ids": torch.tensor(input_ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(attention),
    }
