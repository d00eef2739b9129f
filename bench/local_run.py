"""Time `llmft local` end to end (cold: fresh work directory, tiny model built too).

    python bench/local_run.py [--repeats 3] [--workdir /tmp/llmft-bench]

Prints one markdown row per run and a summary with the machine and package versions, for
docs/benchmarks.md. The target (issue: whole pipeline) is under 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

STEPS = ("curate", "train", "evaluate", "export", "build", "rollout", "finalize")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _step_seconds(run_dir: Path, started: float) -> dict[str, float]:
    """Each step's end time from its summary file; differences give per-step durations."""
    ends = {
        step: (run_dir / "summaries" / f"{step}.json").stat().st_mtime
        for step in STEPS
        if (run_dir / "summaries" / f"{step}.json").exists()
    }
    durations, previous = {}, started
    for step in STEPS:
        if step in ends:
            durations[step] = ends[step] - previous
            previous = ends[step]
    return durations


def run_once(workdir: Path) -> tuple[float, dict[str, float], bool]:
    shutil.rmtree(workdir, ignore_errors=True)
    started = time.time()
    process = subprocess.run(["llmft", "local", "--workdir", str(workdir)], capture_output=True, text=True)
    seconds = time.time() - started
    runs = list((workdir / "storage" / "runs").glob("*"))
    steps = _step_seconds(runs[0], started) if runs else {}
    return seconds, steps, process.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/llmft-bench")
    args = parser.parse_args()

    totals = []
    print("| run | total s | " + " | ".join(STEPS) + " | ok |")
    print("|---|---|" + "---|" * len(STEPS) + "---|")
    for index in range(args.repeats):
        seconds, steps, ok = run_once(Path(args.workdir))
        totals.append(seconds)
        cells = " | ".join(f"{steps[s]:.1f}" if s in steps else "-" for s in STEPS)
        print(f"| {index + 1} | {seconds:.1f} | {cells} | {'yes' if ok else 'NO'} |", flush=True)
    versions = {
        name: importlib.metadata.version(name)
        for name in ("kfp", "torch", "transformers", "peft", "mlflow", "nvidia-pytriton")
    }
    print(
        json.dumps(
            {
                "median_total_s": round(statistics.median(totals), 1),
                "cores": os.cpu_count(),
                "cpu": _cpu_model(),
                "python": sys.version.split()[0],
                **versions,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
