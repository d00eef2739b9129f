"""Check the `hf` training backend on real GPUs: one GPU, torchrun over two, and a killed run resuming.

    python bench/gpu_check.py --out results/   (on a machine with 2 CUDA GPUs)

Builds a small Llama-architecture model (random weights, ~30M parameters, the tokenizer
trained on the sample data; nothing is downloaded), curates the sample dataset, then:
1. trains on one GPU in bf16 and evaluates base vs tuned on that GPU (adapter loads back);
2. trains the same settings with torchrun on two GPUs;
3. starts the one-GPU run again, kills it (SIGKILL) after its second checkpoint, resumes it
   with `resume: auto`, and compares its loss curve with the uninterrupted run's.
Writes gpu_check.json (figures, versions, GPU names) to --out and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from components import storage
from components.curate.curate import CurateConfig, curate
from components.evaluate.evaluate import EvaluateConfig, evaluate
from components.sample.tiny_model import TinyModelConfig, build_tiny_model
from components.train.launch import CONFIG_ENV, run_torchrun
from components.train.train import LoraSettings, TrainConfig, train

SMALL_LLAMA = {
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_layers": 8,
    "num_heads": 8,
    "num_kv_heads": 4,
    "vocab_size": 512,
    "max_positions": 512,
}


def train_config(base: str, data: str, output: Path, **overrides) -> TrainConfig:
    settings = {
        "base_model": base,
        "data": data,
        "output": str(output),
        "max_steps": 120,
        "learning_rate": 1e-3,
        "micro_batch_size": 8,
        "global_batch_size": 32,
        "max_length": 128,
        "precision": "bf16",
        "save_every_steps": 40,
        "keep_checkpoints": 5,
        "log_every_steps": 20,
        "device": "cuda",
        "lora": LoraSettings(r=16, alpha=32, dropout=0.0),
    }
    return TrainConfig(**{**settings, **overrides})


def kill_after_checkpoint(config: TrainConfig, checkpoint_count: int, timeout_s: float = 300) -> int:
    """Run one-GPU training in a child process and SIGKILL it once `checkpoint_count` checkpoints exist."""
    env = {**os.environ, CONFIG_ENV: config.model_dump_json(), "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen([sys.executable, "-m", "components.train.launch"], env=env)
    checkpoints = Path(config.output) / "checkpoints"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.poll() is None:
        complete = [d for d in checkpoints.glob("step-*") if (d / storage.MANIFEST_NAME).exists()]
        if len(complete) >= checkpoint_count:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    child.wait(timeout=60)
    return child.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="gpu-check")
    parser.add_argument("--work", default="/tmp/llmft-gpu-check")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch": torch.__version__,
    }
    import peft
    import transformers

    report |= {"transformers": transformers.__version__, "peft": peft.__version__}

    base = str(work / "base")
    manifest = build_tiny_model(TinyModelConfig(output=base, **SMALL_LLAMA))
    report["base_parameters"] = sum(f.size for f in manifest.files if f.path.endswith(".safetensors")) // 4
    data = str(work / "curated")
    curate(CurateConfig(inputs=["components/sample/instructions.jsonl"], output=data))

    started = time.perf_counter()
    one = train(train_config(base, data, work / "one-gpu"))
    report["one_gpu"] = {**one.model_dump(), "wall_s": time.perf_counter() - started}
    scores = evaluate(
        EvaluateConfig(
            base_model=base,
            adapter=one.adapter,
            data=data,
            output=str(work / "evaluate"),
            device="cuda",
            max_eval_records=64,
            max_new_tokens=4,
        )
    )
    report["evaluate"] = {
        "base": scores.base.model_dump(),
        "tuned": scores.tuned.model_dump(),
        "passed": scores.passed,
    }

    if torch.cuda.device_count() >= 2:
        started = time.perf_counter()
        two = run_torchrun(train_config(base, data, work / "two-gpu"), nproc_per_node=2)
        report["two_gpus"] = {**two.model_dump(), "wall_s": time.perf_counter() - started}

    resumed_config = train_config(base, data, work / "resumed")
    report["killed_returncode"] = kill_after_checkpoint(resumed_config, checkpoint_count=2)
    killed_at = sorted(p.name for p in (work / "resumed" / "checkpoints").glob("step-*"))
    resumed = train(resumed_config)
    curve_one = json.loads((work / "one-gpu" / "metrics.json").read_text())["loss_curve"]
    metrics_resumed = json.loads((work / "resumed" / "metrics.json").read_text())
    curve_resumed = metrics_resumed["loss_curve"]
    report["resume"] = {
        "checkpoints_when_killed": killed_at,
        "resumed_from": metrics_resumed.get("resumed_from"),
        "final_loss_uninterrupted": one.final_loss,
        "final_loss_resumed": resumed.final_loss,
        "max_abs_loss_difference": max(
            abs(a[1] - b[1]) for a, b in zip(curve_one, curve_resumed, strict=True)
        ),
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
