"""NeMo Curator's heuristic filters over the benchmark data, timed; run by bench/curate_bench.py.

    .venv-bench/bin/python bench/curate_nemo.py --input DIR --output DIR [--workers 2]

Runs in its own virtual environment (NeMo Curator 1.4 pins other versions than llmft) and
prints one JSON line: records in and kept, and the wall time of `Pipeline.run` (including
Ray's start) and of a one-record run of the same pipeline (the fixed start cost), so the
caller can report both.

The pipeline: JsonlReader -> ScoreFilter with the heuristic filters closest to curate's
quality stage -> JsonlWriter, on Cosmos-Xenna (NeMo Curator's default executor) in batch
mode, the mode it asks for on a machine with fewer CPUs than its streaming mode needs.
Filters, with curate's rule they stand in for:

- NonAlphaNumericFilter(0.5): too_many_symbols and trivial_response (NeMo counts
  whitespace as non-alphanumeric, so its ratio runs higher than curate's on the same text);
- RepeatedLinesFilter(0.5): repeated_lines (kept while distinct/total lines >= 0.5);
- RepeatingDuplicateNGramsFilter(n=3, 0.5): repeated_ngrams (NeMo measures characters);
- WordCountFilter(1, 4000): empty_response and too_long.

NeMo Curator's exact and fuzzy deduplication run on GPUs only (cuDF), so no dedup here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any


def build_pipeline(input_dir: Path, output_dir: Path) -> Any:
    from nemo_curator.pipeline import Pipeline
    from nemo_curator.stages.text.filters import ScoreFilter
    from nemo_curator.stages.text.filters.heuristic.repetition.repetition import (
        RepeatedLinesFilter,
        RepeatingDuplicateNGramsFilter,
    )
    from nemo_curator.stages.text.filters.heuristic.string import NonAlphaNumericFilter, WordCountFilter
    from nemo_curator.stages.text.io.reader import JsonlReader
    from nemo_curator.stages.text.io.writer import JsonlWriter

    pipeline = Pipeline(name="curate_bench_filters")
    pipeline.add_stage(JsonlReader(file_paths=str(input_dir), files_per_partition=1, fields=["id", "text"]))
    filters = [
        NonAlphaNumericFilter(max_non_alpha_numeric_to_text_ratio=0.5),
        RepeatedLinesFilter(max_repeated_line_fraction=0.5),
        RepeatingDuplicateNGramsFilter(n=3, max_repeating_duplicate_ngram_ratio=0.5),
        WordCountFilter(min_words=1, max_words=4000),
    ]
    pipeline.add_stage(ScoreFilter(filter_obj=filters, text_field="text"))
    pipeline.add_stage(JsonlWriter(path=str(output_dir)))
    return pipeline


def count_lines(directory: Path) -> int:
    return sum(sum(1 for _ in path.open("rb")) for path in sorted(directory.glob("*.jsonl")))


def make_executor(name: str) -> Any:
    if name == "xenna":
        from nemo_curator.backends.xenna import XennaExecutor

        return XennaExecutor(config={"execution_mode": "batch"})
    if name == "ray_data":
        from nemo_curator.backends.ray_data import RayDataExecutor

        return RayDataExecutor()
    from nemo_curator.backends.ray_actor_pool import RayActorPoolExecutor

    return RayActorPoolExecutor()


def timed_run(input_dir: Path, output_dir: Path, executor: str) -> float:
    shutil.rmtree(output_dir, ignore_errors=True)
    pipeline = build_pipeline(input_dir, output_dir)
    started = time.perf_counter()
    pipeline.run(make_executor(executor))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", type=Path, required=True, help="directory of {id, text} JSONL parts")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--executor", choices=("xenna", "ray_data", "ray_actor_pool"), default="xenna")
    args = parser.parse_args()

    tiny = args.output.parent / "nemo-tiny-input"
    tiny.mkdir(parents=True, exist_ok=True)
    first = next(iter(sorted(args.input.glob("*.jsonl")))).open().readline()
    (tiny / "part-00.jsonl").write_text(first)
    startup_s = timed_run(tiny, args.output.parent / "nemo-tiny-output", args.executor)
    seconds = timed_run(args.input, args.output, args.executor)
    result = {
        "records": count_lines(args.input),
        "kept": count_lines(args.output),
        "seconds": round(seconds, 2),
        "one_record_seconds": round(startup_s, 2),
        "executor": args.executor,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
