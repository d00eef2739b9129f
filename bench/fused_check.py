"""Check on a GPU that the fused training path learns what the plain path learns.

    python bench/fused_check.py --out results/   (on a machine with a CUDA GPU)

Trains the small Llama of bench/gpu_check.py on the curated sample data with the same
settings and data order, bf16, LoRA dropout 0, learning rate 2e-4 (the default):
- `fused: false` (transformers + PEFT on padded micro batches of 8);
- `fused: false` with micro batches of 4: the same arithmetic rounded differently, so its
  distance from the first run is the bf16 noise floor of the plain path itself;
- `fused: true` (packed micro batches, fused LoRA, fused loss, varlen attention, Liger).
Compares the first 50 steps' losses of each with the first run; writes fused_check.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.gpu_check import SMALL_LLAMA, train_config
from components.curate.curate import CurateConfig, curate
from components.sample.tiny_model import TinyModelConfig, build_tiny_model
from components.train.train import LoraSettings, train

STEPS = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="fused-check")
    parser.add_argument("--work", default="/tmp/llmft-fused-check")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = str(work / "base")
    build_tiny_model(TinyModelConfig(output=base, **SMALL_LLAMA))
    data = str(work / "curated")
    curate(CurateConfig(inputs=["components/sample/instructions.jsonl"], output=data))
    runs = {"plain": {"fused": False}, "plain_micro4": {"fused": False, "micro_batch_size": 4}, "fused": {}}
    curves = {}
    for name, overrides in runs.items():
        output = work / name
        config = train_config(
            base,
            data,
            output,
            **{"fused": True, "max_steps": STEPS, "learning_rate": 2e-4, "save_every_steps": 0, **overrides},
            resume="never",
            lora=LoraSettings(r=16, alpha=32, dropout=0.0),
        )
        result = train(config)
        curve = json.loads((output / "metrics.json").read_text())["loss_curve"]
        curves[name] = {"losses": [loss for _, loss in curve], "val_loss": result.val_loss}

    def distance(name: str) -> dict[str, float]:
        pairs = list(zip(curves["plain"]["losses"], curves[name]["losses"], strict=True))
        relative = [abs(a - b) / abs(a) for a, b in pairs]
        return {"max_abs": max(abs(a - b) for a, b in pairs), "max_rel": max(relative)}

    report = {
        "gpu": torch.cuda.get_device_name(0),
        "steps": STEPS,
        "runs": curves,
        "noise_floor_plain_micro4_vs_plain": distance("plain_micro4"),
        "fused_vs_plain": distance("fused"),
    }
    (out / "fused_check.json").write_text(json.dumps(report, indent=2))
    summary = {k: report[k] for k in ("gpu", "noise_floor_plain_micro4_vs_plain", "fused_vs_plain")}
    summary |= {name: (run["losses"][0], run["losses"][-1], run["val_loss"]) for name, run in curves.items()}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
