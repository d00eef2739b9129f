"""Build the tiny Llama-architecture base model the local run fine-tunes.

Nothing is downloaded: a byte-level BPE tokenizer is trained on the sample data and a
LlamaForCausalLM is initialised from a config with a fixed seed, then both are saved as
an ordinary Hugging Face checkpoint directory (config.json, model.safetensors,
tokenizer files) with an llmft manifest. Every later step loads it with the same
`from_pretrained` path it uses for a real model.

The weights are random: the base model cannot do the sample tasks, so the tuned model
beating it in evaluation is the LoRA adapter's doing.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from components import storage
from components.prompt import render_prompt
from components.sample.dataset import SAMPLE_PATH

SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>"]


@dataclass(frozen=True)
class TinyModelConfig:
    output: str
    data_path: str = str(SAMPLE_PATH)
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = 256
    # Wider than Llama's 0.02: the final norm and output layer stay frozen under LoRA, and
    # at 0.02 their random weights cannot produce a confident next-token distribution.
    initializer_range: float = 0.2
    seed: int = 0


def _texts(data_path: str) -> Iterator[str]:
    """Every string in the sample file, whatever its record format; bad lines are skipped here."""
    for line in Path(data_path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        for value in record.values():
            if isinstance(value, str):
                yield value
            elif isinstance(value, list):
                yield from (m.get("content", "") for m in value if isinstance(m, dict))
    yield render_prompt("")


def build_tokenizer(config: TinyModelConfig):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_texts(config.data_path), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )


def build_tiny_model(config: TinyModelConfig) -> storage.Manifest:
    """Write the tokenizer and randomly initialised model to `config.output` (path or s3://)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(config)
    torch.manual_seed(config.seed)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        max_position_embeddings=config.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=config.initializer_range,
    )
    model = LlamaForCausalLM(model_config)
    with tempfile.TemporaryDirectory() as staging:
        local = staging if storage.is_s3(config.output) else config.output
        model.save_pretrained(local, safe_serialization=True)
        tokenizer.save_pretrained(local)
        return storage.publish_dir(
            local,
            config.output,
            producer="llmft.sample.tiny_model",
            metadata={"seed": config.seed, "architecture": "LlamaForCausalLM"},
        )
