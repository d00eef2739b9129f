"""Training throughput of the hf backend on one GPU, beside transformers + PEFT and Liger.

    python bench/train_speed.py --out results/ [--rows 0,3,5] [--profile]

Every row runs in a process of its own (a clean GPU, and Liger's patches of transformers'
Llama classes stay in their row). Models have the shapes of Llama-3.2-1B and Llama-3.1-8B
with random bf16 weights (nothing is downloaded); LoRA r=16, alpha 32, no dropout, on
q,k,v,o,gate,up,down; fused AdamW. Fixed-length rows train on random tokens, every token
scored; the `dataset` rows train on instruction-shaped examples with long-tailed lengths,
loss on responses only, where padding is what the packed path saves.

- `peft`: transformers + PEFT as a user writes it: padded micro batches, `model(labels=...)`.
- `liger`: the same after `apply_liger_kernel_to_llama()` (fused linear cross-entropy, RMSNorm,
  SwiGLU, RoPE kernels).
- `llmft`: llmft's own training step, the functions `components.train.train` runs:
  packed micro batches (`_accumulate_packed`), fused LoRA, fused loss, varlen attention.

Prints one table and writes train_speed.json (with the GPU, versions and command) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SEQ = 2048
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHAPES = {
    "llama-3.2-1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
        "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
    },
    "llama-3.1-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
    },
}


@dataclass(frozen=True)
class Row:
    stack: str  # peft | liger | llmft
    shape: str
    micro_batch: int  # sequences per micro batch (llmft: token budget = micro_batch x SEQ)
    checkpointing: bool
    data: str = "fixed"  # fixed: random tokens, SEQ long | dataset: long-tailed instruction examples
    gpus: int = 1  # llmft only: >1 runs the row under torchrun, data parallel (DDP), as train() does


ROWS = [
    Row("peft", "llama-3.1-8b", 4, True),
    Row("peft", "llama-3.1-8b", 1, False),
    Row("liger", "llama-3.1-8b", 4, True),
    Row("liger", "llama-3.1-8b", 2, False),
    Row("llmft", "llama-3.1-8b", 4, True),
    Row("llmft", "llama-3.1-8b", 2, False),
    Row("llmft", "llama-3.1-8b", 3, False),
    Row("llmft", "llama-3.1-8b", 4, False),
    Row("peft", "llama-3.2-1b", 8, False),
    Row("liger", "llama-3.2-1b", 8, False),
    Row("llmft", "llama-3.2-1b", 8, False),
    Row("llmft", "llama-3.2-1b", 16, False),
    Row("peft", "llama-3.2-1b", 8, False, "dataset"),
    Row("llmft", "llama-3.2-1b", 8, False, "dataset"),
    Row("llmft", "llama-3.1-8b", 4, False, gpus=2),
    Row("llmft", "llama-3.2-1b", 8, False, gpus=2),
]


def build_model(row: Row, attention: str | None):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**SHAPES[row.shape], attn_implementation=attention or "sdpa")
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(previous)
    if row.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
    )
    return get_peft_model(model, lora)


def fixed_examples(count: int, vocab: int, rng: random.Random):
    from components.train.data import EncodedExample

    examples = []
    for _ in range(count):
        ids = [rng.randrange(vocab) for _ in range(SEQ)]
        examples.append(EncodedExample(input_ids=ids, labels=list(ids)))
    return examples


def dataset_examples(count: int, vocab: int, rng: random.Random):
    """Instruction-shaped examples: log-normal prompt and response lengths (mean ~330 tokens
    in all, a long tail cut at SEQ), loss on the response only."""
    from components.train.data import IGNORE_INDEX, EncodedExample

    examples = []
    for _ in range(count):
        prompt = min(max(int(rng.lognormvariate(5.0, 0.9)), 8), SEQ // 2)
        response = min(max(int(rng.lognormvariate(4.6, 1.0)), 2), SEQ - prompt)
        ids = [rng.randrange(vocab) for _ in range(prompt + response)]
        examples.append(EncodedExample(input_ids=ids, labels=[IGNORE_INDEX] * prompt + ids[prompt:]))
    return examples


def padded_size(examples: list, micro_batch: int) -> int:
    """Tokens in the padded micro batches of one step, pads included."""
    sizes = 0
    for start in range(0, len(examples), micro_batch):
        batch = examples[start : start + micro_batch]
        sizes += len(batch) * max(len(e.input_ids) for e in batch)
    return sizes


def run_row(row: Row, steps: int, warmup: int, profile_dir: Path | None) -> dict:
    import torch

    from components.train import distributed
    from components.train import train as train_loop
    from components.train.acceleration import use_liger_kernels
    from components.train.data import collate
    from components.train.fused_lora import fuse_lora_layers
    from components.train.fused_loss import PackedCausalLM
    from components.train.packing import pack, register_packed_attention

    device = distributed.setup(torch.device("cuda"))  # under torchrun: this rank's GPU, NCCL joined
    if row.stack == "liger":
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama()
    attention = register_packed_attention() if row.stack == "llmft" else None
    peft_model = build_model(row, attention)
    model = peft_model
    if row.stack == "llmft":
        fuse_lora_layers(peft_model)
        use_liger_kernels(peft_model.get_base_model())  # as train() does on a GPU
        model = distributed.wrap(PackedCausalLM(peft_model), device, "ddp" if row.gpus > 1 else "none")
    model.train()
    parameters = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, fused=True)
    vocab = SHAPES[row.shape]["vocab_size"]
    rng = random.Random(distributed.rank())  # each rank its own data, like its share of a global batch
    global_batch = row.micro_batch if row.data == "fixed" else 64

    def make_step_examples():
        if row.data == "fixed":
            return fixed_examples(global_batch, vocab, rng)
        return dataset_examples(global_batch, vocab, rng)

    def step(examples) -> float:
        # The whole step's tokens, all ranks' (their shares are equal in size here).
        step_tokens = sum(example.response_tokens for example in examples) * distributed.world_size()
        if row.stack == "llmft":
            packed = pack(examples, row.micro_batch * SEQ)
            loss = train_loop._accumulate_packed(model, packed, len(packed), step_tokens, 0, device)
        else:
            loss = 0.0
            for start in range(0, len(examples), row.micro_batch):
                batch = {
                    k: v.to(device) for k, v in collate(examples[start : start + row.micro_batch], 0).items()
                }
                out = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    labels=batch["labels"],
                )
                tokens = int((batch["labels"][:, 1:] != -100).sum())
                (out.loss * tokens / step_tokens).backward()
                loss += out.loss.item() * tokens / step_tokens
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    batches = [make_step_examples() for _ in range(warmup + steps)]
    for examples in batches[:warmup]:
        step(examples)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    losses = [step(examples) for examples in batches[warmup:]]
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    timed = batches[warmup:]
    tokens = sum(len(e.input_ids) for examples in timed for e in examples) * distributed.world_size()
    # What the GPU computed: padded micro batches include their padding.
    computed = (
        tokens if row.stack == "llmft" else sum(padded_size(examples, row.micro_batch) for examples in timed)
    )
    result = {
        **asdict(row),
        "steps": steps,
        "tokens_per_s": tokens / elapsed,
        "computed_tokens_per_s": computed / elapsed,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }
    if profile_dir is not None:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for examples in batches[warmup : warmup + 2]:
                step(examples)
            torch.cuda.synchronize()
        checkpointing = "-ckpt" if row.checkpointing else ""
        name = f"profile-{row.stack}-{row.shape}-{row.data}-{row.micro_batch}{checkpointing}.txt"
        (profile_dir / name).write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))
    return result


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in ("torch", "transformers", "peft", "liger-kernel", "triton"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def table(results: list[dict]) -> str:
    lines = [
        "| stack | GPUs | model shape | data | micro-batch | activation ckpt | tokens/s | peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(
                f"| {r['stack']} | {r.get('gpus', 1)} | {r['shape']} | {r['data']} | {r['micro_batch']} | "
                f"{'yes' if r['checkpointing'] else 'no'} | failed: {r['error'][:80]} | |"
            )
            continue
        lines.append(
            f"| {r['stack']} | {r.get('gpus', 1)} | {r['shape']} | {r['data']} | {r['micro_batch']} | "
            f"{'yes' if r['checkpointing'] else 'no'} | {r['tokens_per_s']:,.0f} | {r['peak_gib']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="train-speed")
    parser.add_argument("--rows", default="all", help="comma-separated row indexes, or all")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="write a kernel profile per llmft row")
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)  # child process: run this one row
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.row is not None:
        from components.train import distributed

        row = ROWS[args.row]
        profile_dir = out if args.profile and row.stack == "llmft" and row.gpus == 1 else None
        result = run_row(row, args.steps, args.warmup, profile_dir)
        if distributed.is_main():
            print("RESULT " + json.dumps(result), flush=True)
        distributed.teardown()
        return

    import torch

    indexes = range(len(ROWS)) if args.rows == "all" else [int(i) for i in args.rows.split(",")]
    results = []
    for index in indexes:
        gpus = ROWS[index].gpus
        launcher = (
            ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}"] if gpus > 1 else []
        )
        command = [
            sys.executable,
            *launcher,
            __file__,
            "--row",
            str(index),
            "--out",
            str(out),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
        ] + (["--profile"] if args.profile else [])
        process = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        found = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
        if found:
            results.append(json.loads(found[-1][len("RESULT ") :]))
        else:
            results.append(
                {
                    **asdict(ROWS[index]),
                    "error": process.stderr.strip().splitlines()[-1]
                    if process.stderr.strip()
                    else f"exit {process.returncode}",
                }
            )
            (out / f"row{index}-stderr.txt").write_text(process.stderr[-20000:])
        print(table(results[-1:]).splitlines()[-1], flush=True)
    report = {
        "gpu": torch.cuda.get_device_name(0),
        "versions": versions(),
        "command": " ".join(sys.argv),
        "seq": SEQ,
        "rows": results,
    }
    (out / "train_speed.json").write_text(json.dumps(report, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
