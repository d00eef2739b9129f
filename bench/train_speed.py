"""Training throughput of the hf backend beside transformers + PEFT, Liger and the nemo backend.

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
- `nemo`: the `nemo` backend: NeMo AutoModel's fine-tuning recipe with the YAML that
  `components.train.nemo_backend.recipe_config` writes for a checkpoint of the shape with
  random weights (saved once per shape under --models), changed only in its data (AutoModel's
  own mock data: random tokens, SEQ long, every token scored) and without checkpoints.
  Throughput comes from the recipe's per-step log (training.jsonl). Like the backend, it runs
  AutoModel with the interpreter LLMFT_NEMO_PYTHON names (else this one), as AutoModel pins
  its own transformers.

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
    stack: str  # peft | liger | llmft | nemo
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
    Row("nemo", "llama-3.1-8b", 4, True),
    Row("nemo", "llama-3.1-8b", 2, False),
    Row("nemo", "llama-3.2-1b", 8, False),
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


def save_base_checkpoint(shape: str, destination: Path) -> None:
    """A Hugging Face checkpoint of the shape with random bf16 weights and a small tokenizer
    (AutoModel's recipe loads both from the model directory; the mock data ignores the tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from components.sample.tiny_model import TinyModelConfig, build_tokenizer

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape]))
    model.save_pretrained(destination)
    build_tokenizer(TinyModelConfig(output=str(destination))).save_pretrained(destination)


def nemo_recipe(row: Row, steps: int, model_dir: Path, work: Path) -> dict:
    """The recipe the `nemo` backend writes for this row's settings, with the benchmark's data."""
    from components.train.nemo_backend import recipe_config
    from components.train.train import LoraSettings, TrainConfig

    config = TrainConfig(
        base_model=str(model_dir),
        data=str(work),
        output=str(work / "output"),
        backend="nemo",
        lora=LoraSettings(r=16, alpha=32, dropout=0.0, target_modules=LORA_TARGETS),
        micro_batch_size=row.micro_batch,
        global_batch_size=row.micro_batch * row.gpus,
        max_length=SEQ,
        precision="bf16",
        gradient_checkpointing=row.checkpointing,
        learning_rate=1e-5,
        warmup_ratio=0.0,
    )
    recipe = recipe_config(
        config, model_dir, work / "unused.jsonl", work / "unused.jinja", work / "checkpoints", steps, row.gpus
    )
    recipe["dataset"] = {
        "_target_": "nemo_automodel.components.datasets.llm.mock_iterable_dataset.MockIterableDataset",
        "vocab_size": SHAPES[row.shape]["vocab_size"],
        "seq_len": SEQ,
        "batch_size": row.micro_batch,
        "num_samples": steps * 4,
    }
    # The mock dataset yields whole micro batches.
    recipe["dataloader"] = {"_target_": "torch.utils.data.DataLoader", "batch_size": None}
    recipe["checkpoint"] = {**recipe["checkpoint"], "enabled": False}
    return recipe


def run_nemo_row(row: Row, steps: int, warmup: int, models: Path) -> dict:
    """Run AutoModel's recipe for warmup + steps steps; throughput over the last `steps`."""
    import tempfile

    import yaml

    from components.train.nemo_backend import recipe_command

    model_dir = models / row.shape
    if not model_dir.is_dir():  # one checkpoint per shape, saved by a process of its own
        partial = models / f"{row.shape}.partial"
        saved = subprocess.run(
            [sys.executable, __file__, "--save-base", row.shape, "--out", str(partial)],
            capture_output=True,
            text=True,
        )
        if saved.returncode != 0:
            raise RuntimeError(f"saving the {row.shape} checkpoint failed\n{saved.stderr[-20000:]}")
        partial.rename(model_dir)  # only a whole checkpoint gets the name that is reused
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        recipe = nemo_recipe(row, warmup + steps, model_dir, work)
        config_path = work / "recipe.yaml"
        config_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        process = subprocess.run(
            recipe_command(config_path, row.gpus),
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log = work / "checkpoints" / "training.jsonl"
        logged = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    if process.returncode != 0 or len(logged) < warmup + steps:
        raise RuntimeError(
            f"NeMo AutoModel exited with {process.returncode} after logging {len(logged)} of "
            f"{warmup + steps} steps: {(process.stderr.strip().splitlines() or ['no output'])[-1]}\n"
            + process.stderr[-20000:]
        )
    timed = logged[warmup:]
    # Each step logs its tokens (labels less the mock data's final -100) and tokens/s since the
    # previous step; SEQ tokens per sequence were computed, as in the other fixed rows.
    seconds = sum(step["num_tokens_per_step"] / step["tps"] for step in timed)
    return {
        **asdict(row),
        "steps": steps,
        "tokens_per_s": len(timed) * row.micro_batch * row.gpus * SEQ / seconds,
        "peak_gib": max(step["mem"] for step in logged),
        "loss_first": timed[0]["loss"],
        "loss_last": timed[-1]["loss"],
    }


def nemo_versions() -> dict[str, str]:
    """Versions as the nemo rows' interpreter sees them (AutoModel pins its own transformers)."""
    names = ("nemo_automodel", "transformers", "torch")
    probe = f"import json, importlib.metadata as m\nprint(json.dumps({{n: m.version(n) for n in {names!r}}}))"
    from components.train.nemo_backend import nemo_python

    process = subprocess.run([nemo_python(), "-c", probe], capture_output=True, text=True, check=False)
    return json.loads(process.stdout) if process.returncode == 0 else {"error": process.stderr[-300:]}


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
    parser.add_argument(
        "--models", default="/tmp/llmft-train-speed", help="where the nemo rows' random checkpoints are saved"
    )
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)  # child process: run this one row
    parser.add_argument("--save-base", help=argparse.SUPPRESS)  # child process: save this shape to --out
    args = parser.parse_args()
    if args.save_base:
        save_base_checkpoint(args.save_base, Path(args.out))
        return
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
    from versions import package_versions  # bench/versions.py: this script's folder is on sys.path

    indexes = range(len(ROWS)) if args.rows == "all" else [int(i) for i in args.rows.split(",")]
    results = []
    for index in indexes:
        if ROWS[index].stack == "nemo":
            try:
                results.append(run_nemo_row(ROWS[index], args.steps, args.warmup, Path(args.models)))
            except RuntimeError as error:
                message = str(error)
                results.append({**asdict(ROWS[index]), "error": message.splitlines()[0]})
                (out / f"row{index}-stderr.txt").write_text(message)
            print(table(results[-1:]).splitlines()[-1], flush=True)
            continue
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
        "versions": package_versions(("torch", "transformers", "peft", "liger-kernel", "triton")),
        "nemo_versions": nemo_versions() if any(r["stack"] == "nemo" for r in results) else None,
        "command": " ".join(sys.argv),
        "seq": SEQ,
        "rows": results,
    }
    (out / "train_speed.json").write_text(json.dumps(report, indent=2))
    print(table(results))


if __name__ == "__main__":
    main()
