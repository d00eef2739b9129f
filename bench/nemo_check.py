"""Check the `nemo` training backend on a real GPU, beside the `hf` backend on the same data.

    python bench/nemo_check.py --out results/   (on a machine with a CUDA GPU and nemo-automodel)

Builds the same small Llama-architecture model as bench/gpu_check.py (random weights, the
tokenizer trained on the sample data; nothing is downloaded), curates the sample dataset,
then trains it with backend="nemo" (NeMo AutoModel's fine-tuning recipe, through
`components.train.train`, exactly as the pipeline's train step does) and with
backend="hf" on the same settings, and evaluates base vs each tuned adapter with our
evaluate step (the nemo adapter must load back through PEFT like the hf one).
Writes nemo_check.json (loss curves, scores, versions, GPU name) to --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.gpu_check import SMALL_LLAMA, train_config
from bench.versions import package_versions
from components.curate.curate import CurateConfig, curate
from components.evaluate.evaluate import EvaluateConfig, evaluate
from components.sample.tiny_model import TinyModelConfig, build_tiny_model
from components.train.train import train

VERSIONED = ("torch", "transformers", "peft", "nemo_automodel", "torchao", "megatron-fsdp", "datasets")


def train_and_score(backend: str, base: str, data: str, work: Path) -> dict:
    started = time.perf_counter()
    result = train(train_config(base, data, work / backend, backend=backend, save_every_steps=60))
    wall_s = time.perf_counter() - started
    scores = evaluate(
        EvaluateConfig(
            base_model=base,
            adapter=result.adapter,
            data=data,
            output=str(work / f"evaluate-{backend}"),
            device="cuda",
            max_eval_records=64,
            max_new_tokens=4,
        )
    )
    curve = json.loads((work / backend / "metrics.json").read_text())["loss_curve"]
    return {
        "wall_s": round(wall_s, 1),
        "steps": result.steps,
        "first_loss": curve[0][1],
        "final_loss": result.final_loss,
        "loss_curve": curve,
        "base": scores.base.model_dump(),
        "tuned": scores.tuned.model_dump(),
        "gate_passed": scores.passed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="nemo-check")
    parser.add_argument("--work", default="/tmp/llmft-nemo-check")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"gpu": torch.cuda.get_device_name(0), "versions": package_versions(VERSIONED)}

    base = str(work / "base")
    build_tiny_model(TinyModelConfig(output=base, **SMALL_LLAMA))
    data = str(work / "curated")
    curate(CurateConfig(inputs=["components/sample/instructions.jsonl"], output=data))
    for backend in ("nemo", "hf"):
        report[backend] = train_and_score(backend, base, data, work)
        (out / "nemo_check.json").write_text(json.dumps(report, indent=2))
    summary = {
        backend: {key: report[backend][key] for key in ("wall_s", "first_loss", "final_loss", "gate_passed")}
        | {"tuned_exact_match": report[backend]["tuned"]["exact_match"]}
        for backend in ("nemo", "hf")
    }
    print(json.dumps({"gpu": report["gpu"], "versions": report["versions"], **summary}, indent=2))


if __name__ == "__main__":
    main()
