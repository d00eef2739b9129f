"""Training speed as users get it: `llmft train` through the command line, beside its inner loop.

    python bench/train_cli_speed.py data --work W          # any machine: tokenizer, data, `llmft curate`
    python bench/train_cli_speed.py run --work W --out R     # one GPU: checkpoint, `llmft train`, inner loop

`data` writes instruction data the way teams write it (chat records with a system prompt,
a few prompt templates, log-normal prompt and response lengths with a long tail, mean about
500 tokens with the checkpoint's tokenizer) and curates it with `llmft curate`, defaults and all.

`run` saves a checkpoint of the Llama-3.1-8B shape with random bf16 weights and that tokenizer
(a plain Hugging Face directory, as `save_pretrained` leaves it), then:
- `cli` rows: `llmft train` in a subprocess with the command's own defaults plus the flags the
  row names, timed from the command's start to its exit (`wall_s`); steady-state throughput
  comes from the command's own per-step log (all tokens and response tokens per second over
  the logged windows after the first), setup is the time until its first step's log line.
- `loop` row: the functions `components.train.train` runs for one step (`_step_groups`,
  `_packed_micro_batches`, `_accumulate_packed`, clipping, AdamW), on the same curated
  examples and the same settings, model built straight on the GPU: what `bench/train_speed.py`
  measures, on this data.

Prints a table and writes train_cli_speed.json (GPU, versions, command) to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPE = "llama-3.1-8b"
SYSTEM_PROMPTS = [
    "You are a support assistant for an online store. Answer politely, stay factual and keep "
    "answers short unless the customer asks for detail.",
    "You are a careful analyst. Read the material the user gives you and answer only from it; "
    "say so when the material does not contain the answer.",
    "You help engineers write clear documentation. Use plain words, short sentences and concrete examples.",
]
TEMPLATES = [
    "Read the following customer message and write a helpful reply that resolves the issue. Message: {body}",
    "Summarize the text below for a busy manager in a few sentences. Text: {body}",
    "Answer the question using the context. Context: {body}\nQuestion: what should happen next?",
    "{body}",
]


def _words(rng: random.Random, vocabulary: list[str], count: int) -> str:
    sentences, sentence = [], []
    for _ in range(count):
        sentence.append(rng.choice(vocabulary))
        if len(sentence) >= rng.randint(8, 20):
            sentences.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    if sentence:
        sentences.append(" ".join(sentence).capitalize() + ".")
    return " ".join(sentences)


def make_raw_data(path: Path, records: int, seed: int, vocabulary: list[str]) -> None:
    """Chat records with long-tailed lengths (words: log-normal prompt body and response)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(records):
            body = _words(rng, vocabulary, min(max(int(rng.lognormvariate(3.9, 0.9)), 5), 1400))
            answer = _words(rng, vocabulary, min(max(int(rng.lognormvariate(3.7, 1.0)), 3), 1200))
            messages = [
                {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)},
                {"role": "user", "content": rng.choice(TEMPLATES).format(body=body)},
                {"role": "assistant", "content": answer},
            ]
            handle.write(json.dumps({"messages": messages}) + "\n")


def data_command(args: argparse.Namespace) -> None:
    from components.records import read_records
    from components.sample.tiny_model import TinyModelConfig, build_tokenizer
    from components.train.data import encode_record

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(TinyModelConfig(output=str(work / "tokenizer")))
    tokenizer.save_pretrained(work / "tokenizer")
    sample = Path(__file__).resolve().parent.parent / "components/sample/instructions.jsonl"
    vocabulary = sorted(set(re.findall(r"[a-z]+", sample.read_text(encoding="utf-8").lower())))
    make_raw_data(work / "raw.jsonl", args.records, args.seed, vocabulary)
    curated = work / "curated"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "curate",
            "--input",
            str(work / "raw.jsonl"),
            "--output",
            str(curated),
        ],
        check=True,
    )
    lengths = [
        len(encode_record(tokenizer, record, 10**6).input_ids)
        for record in read_records(curated / "train.jsonl")
    ]
    lengths.sort()
    print(
        f"train records {len(lengths)}: tokens mean {sum(lengths) / len(lengths):.0f}, "
        f"median {lengths[len(lengths) // 2]}, p99 {lengths[int(len(lengths) * 0.99)]}, max {lengths[-1]}"
    )


def save_checkpoint(work: Path, destination: Path, manifest: bool) -> None:
    import torch
    from train_speed import SHAPES  # bench/ is on sys.path when this file runs
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[SHAPE]))
    model.save_pretrained(destination)
    AutoTokenizer.from_pretrained(work / "tokenizer").save_pretrained(destination)
    del model
    torch.cuda.empty_cache()
    if manifest:
        from components import storage

        storage.publish_dir(destination, str(destination), producer="bench")


STEP_LINE = re.compile(r"step (\d+)/(\d+) .* ([\d.]+) tokens/s \(([\d.]+) response tokens/s\)")


def run_cli(name: str, checkpoint: Path, work: Path, out: Path, flags: list[str]) -> dict:
    """`llmft train` as a user runs it; throughput from its own step log."""
    output = out / f"run-{name}"
    command = [
        sys.executable, "-m", "pipelines.cli", "train",
        "--base-model", str(checkpoint), "--data", str(work / "curated"), "--output", str(output),
        *flags,
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    log_lines, windows, first_step_at = [], [], None
    assert process.stdout is not None
    for line in process.stdout:
        log_lines.append(line)
        match = STEP_LINE.search(line)
        if match:
            if first_step_at is None:
                first_step_at = time.perf_counter() - started
            windows.append((int(match[1]), float(match[3]), float(match[4])))
    process.wait()
    wall = time.perf_counter() - started
    (out / f"cli-{name}.log").write_text("".join(log_lines))
    if process.returncode:
        return {"row": f"cli {name}", "flags": flags, "error": "".join(log_lines[-5:])}
    metrics = json.loads((output / "metrics.json").read_text())
    steady = [window for window in windows if window[0] > 1][1:]  # windows after the first full one
    return {
        "row": f"cli {name}",
        "flags": flags,
        "wall_s": wall,
        "setup_s": first_step_at,
        "steps": metrics["steps"],
        "tokens_per_s": sum(w[1] for w in steady) / len(steady) if steady else math.nan,
        "response_tokens_per_s": sum(w[2] for w in steady) / len(steady) if steady else math.nan,
        "summary_all_tokens_per_s": metrics.get("all_tokens_per_second"),
        "summary_response_tokens_per_s": metrics["tokens_per_second"],
        "peak_gib": metrics.get("gpu_memory_gib"),
    }


def run_loop(work: Path, micro_batch: int, global_batch: int, max_length: int, steps: int) -> dict:
    """The train step's own functions on the curated examples, without the command around them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from train_speed import LORA_TARGETS, SHAPES
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from components.records import read_records
    from components.train import distributed
    from components.train import train as train_loop
    from components.train.acceleration import use_liger_kernels
    from components.train.data import encode_record
    from components.train.fused_lora import fuse_lora_layers
    from components.train.fused_loss import PackedCausalLM
    from components.train.packing import register_packed_attention

    device = distributed.setup(torch.device("cuda"))
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    examples = [encode_record(tokenizer, r, max_length) for r in read_records(work / "curated/train.jsonl")]
    attention = register_packed_attention()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[SHAPE], attn_implementation=attention))
    torch.set_default_dtype(torch.float32)
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, lora)
    fuse_lora_layers(peft_model)
    use_liger_kernels(model)
    packed_model = distributed.wrap(PackedCausalLM(peft_model), device, "none")
    packed_model.train()
    parameters = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, fused=True)
    accumulation = global_batch // micro_batch
    groups = list(train_loop._step_groups(examples, micro_batch, accumulation, 42))
    warmup = 3
    timed_tokens = timed_response = 0
    for index, group in enumerate(groups[: warmup + steps]):
        if index == warmup:
            torch.cuda.synchronize()
            started = time.perf_counter()
        step_tokens = sum(e.response_tokens for batch in group for e in batch)
        packed, most = train_loop._packed_micro_batches(group, accumulation, micro_batch * max_length)
        train_loop._accumulate_packed(packed_model, packed, most, step_tokens, tokenizer.pad_token_id, device)
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= warmup:
            timed_tokens += sum(len(e.input_ids) for batch in group for e in batch)
            timed_response += step_tokens
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {
        "row": "loop",
        "flags": [f"micro {micro_batch}", f"global {global_batch}", f"max_length {max_length}"],
        "steps": steps,
        "tokens_per_s": timed_tokens / elapsed,
        "response_tokens_per_s": timed_response / elapsed,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


def table(rows: list[dict]) -> str:
    lines = ["| row | flags | tokens/s | response tokens/s | setup s | wall s | peak GiB |", "|" + "---|" * 7]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['row']} | {' '.join(row['flags'])} | error | | | | |")
            continue
        lines.append(
            f"| {row['row']} | {' '.join(row['flags'])} | {row['tokens_per_s']:,.0f} | "
            f"{row['response_tokens_per_s']:,.0f} | {row.get('setup_s') or 0:.0f} | "
            f"{row.get('wall_s') or 0:.0f} | {row.get('peak_gib') or 0:.1f} |"
        )
    return "\n".join(lines)


def run_command(args: argparse.Namespace) -> None:
    import torch
    from versions import package_versions

    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint)
    if not (checkpoint / "config.json").exists():
        started = time.perf_counter()
        save_checkpoint(work, checkpoint, args.manifest)
        print(f"saved {checkpoint} in {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    for spec in args.cli:
        name, _, flags = spec.partition(":")
        rows.append(run_cli(name, checkpoint, work, out, flags.split()))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    if args.loop:
        micro, global_batch, max_length = (int(v) for v in args.loop.split(","))
        rows.append(run_loop(work, micro, global_batch, max_length, args.loop_steps))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    report = {
        "gpu": torch.cuda.get_device_name(0),
        "versions": package_versions(("torch", "transformers", "peft", "liger-kernel", "triton")),
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    (out / "train_cli_speed.json").write_text(json.dumps(report, indent=2))
    print(table(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="write and curate the instruction data")
    data.add_argument("--work", required=True)
    data.add_argument("--records", type=int, default=12000)
    data.add_argument("--seed", type=int, default=0)
    run = commands.add_parser("run", help="on one GPU: llmft train through the CLI, and the inner loop")
    run.add_argument("--work", required=True)
    run.add_argument("--out", required=True)
    run.add_argument("--checkpoint", default="/tmp/llmft-cli-speed-8b")
    run.add_argument(
        "--cli", action="append", default=[], metavar="NAME:FLAGS", help="a `llmft train` row (repeatable)"
    )
    run.add_argument("--loop", default="", metavar="MICRO,GLOBAL,MAX_LENGTH", help="the inner-loop row")
    run.add_argument("--loop-steps", type=int, default=20)
    run.add_argument("--manifest", action="store_true", help="give the checkpoint an llmft manifest")
    args = parser.parse_args()
    data_command(args) if args.command == "data" else run_command(args)


if __name__ == "__main__":
    main()
