"""Curation benchmark: llmft curate beside NeMo Curator and datasketch, on planted truth.

    python bench/curate_bench.py [--records 200000] [--work /tmp/curate-bench] [--repeats 2]
        [--nemo-python .venv-bench/bin/python] [--json docs/curation_bench.json]

One run on this machine:
1. generates the data set (bench/curate_data.py; cached in --work by size and seed);
2. times llmft curate with only parse, quality filters and exact dedup on ("filters"), and
   with every stage at its default ("full"), each in a fresh process;
3. times NeMo Curator's equivalent heuristic filters (bench/curate_nemo.py, in its own
   virtual environment: NeMo Curator pins other versions than llmft);
4. times the near-dedup stage alone, llmft's and datasketch's recipe (bench/curate_near_dedup.py),
   on the records the "filters" run kept;
5. scores against the planted truth: near-dup removal and exact dedup precision/recall,
   PII redaction recall per type and precision, prose numbers left intact, contamination
   left between train and val, and the quality filters' (llmft's and NeMo's) catch.

Each timing is the best of --repeats runs; the runs of step 2 and 3 go in rounds, every
tool once per round, so a busy spell on a shared machine does not slow one tool only.
Prints markdown tables and writes the figures,
the machine and the versions to --json.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import curate_data  # noqa: E402 - a sibling script, found through the path set above

from components.curate import formats, pii  # noqa: E402
from components.curate.ngrams import word_string  # noqa: E402

PII_TYPES = curate_data.PII_TYPES
QUALITY_REASONS = (
    "copies_prompt",
    "trivial_response",
    "too_many_symbols",
    "repeated_lines",
    "repeated_ngrams",
)
# The main process's peak RSS is VmHWM, its own address space's: ru_maxrss of a process
# started by fork and exec also counts its parent's RSS at the fork (this script's).
LLMFT_RUN = """
import json, re, resource, sys, time
from components.curate.curate import CurateConfig, curate
config = CurateConfig.model_validate(json.loads(sys.argv[1]))
started = time.perf_counter()
result = curate(config)
seconds = time.perf_counter() - started
main, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
with open("/proc/self/status") as status:
    peak_kib = int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1))
print(json.dumps({
    "seconds": seconds,
    "cpu_seconds": {"main": main.ru_utime + main.ru_stime, "workers": workers.ru_utime + workers.ru_stime},
    "peak_rss_mib": {"main": peak_kib / 1024, "largest_worker": workers.ru_maxrss / 1024},
    "result": result.model_dump(),
}))
"""
NEMO_EXECUTORS = ("xenna", "ray_data", "ray_actor_pool")


# --- running -----------------------------------------------------------------------------


def load_average() -> float:
    return os.getloadavg()[0]


def best_of(repeats: int, runs: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The fastest of `repeats` runs of each, by name.

    The runs go in rounds, each tool once per round: on a shared machine a busy spell then
    slows one run of every tool rather than every run of one. A failed run (an "error" in
    its outcome) is reported instead of a time.
    """
    outcomes: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for number in range(repeats):
        for name, run in runs.items():
            print(f"{name}, run {number + 1} of {repeats} ...", flush=True)
            load = load_average()
            outcome = run()
            outcome["load_average_before"] = round(load, 2)
            outcomes[name].append(outcome)
    best: dict[str, dict[str, Any]] = {}
    for name, done in outcomes.items():
        failed = [outcome for outcome in done if "error" in outcome]
        if failed:
            best[name] = failed[0]
            continue
        best[name] = min(done, key=lambda outcome: outcome["seconds"])
        best[name]["all_seconds"] = [round(outcome["seconds"], 2) for outcome in done]
    return best


def run_llmft(inputs: list[Path], output: Path, options: dict[str, Any]) -> dict[str, Any]:
    # Into an empty directory, as the NeMo runs write theirs: overwriting the previous run's
    # 150 MB of outputs would add the kernel's freeing of their pages to the timed run.
    shutil.rmtree(output, ignore_errors=True)
    config = {"inputs": [str(path) for path in inputs], "output": str(output), **options}
    process = subprocess.run(
        [sys.executable, "-c", LLMFT_RUN, json.dumps(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    if process.returncode != 0:
        raise RuntimeError(f"llmft curate failed:\n{process.stderr[-3000:]}")
    outcome = json.loads(process.stdout.strip().splitlines()[-1])
    records = outcome["result"]["input_records"]
    return {**outcome, "records": records, "records_per_s": round(records / outcome["seconds"])}


def end_session(session: int) -> None:
    """Stop every process left in `session`: Ray leaves actors (NodeResourceMonitor) running after a run."""
    for attempt, signal_number in enumerate((signal.SIGTERM, signal.SIGKILL)):
        left = [
            int(entry.name)
            for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and _session_of(entry) == session
        ]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal_number)
        if not left:
            return
        if attempt == 0:
            time.sleep(3)


def _session_of(entry: Path) -> int | None:
    try:
        # Fields after the command (which may hold spaces) start after its closing parenthesis.
        return int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, IndexError, ValueError):
        return None


def run_nemo(python: Path, data: Path, work: Path, executor: str) -> dict[str, Any]:
    command = [
        str(python),
        str(HERE / "curate_nemo.py"),
        "--executor",
        executor,
        "--input",
        str(data / "nemo"),
    ]
    command.append("--output")
    # A session of its own, so everything Ray starts can be found and stopped afterwards.
    process = subprocess.Popen(
        [*command, str(work / "nemo-output")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_nemo_env(),
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate()
    finally:
        end_session(process.pid)
    process = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    if process.returncode != 0:
        return {"error": process.stderr[-3000:], "command": " ".join([*command, str(work / "nemo-output")])}
    outcome = json.loads(process.stdout.strip().splitlines()[-1])
    records, seconds, startup = outcome["records"], outcome["seconds"], outcome["one_record_seconds"]
    return {
        **outcome,
        "records_per_s": round(records / seconds),
        "records_per_s_without_start": round(records / max(seconds - startup, 1e-9)),
    }


def _nemo_env() -> dict[str, str]:
    # Keep Ray from printing its dashboard hints and from phoning home.
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "1"}


def run_near_dedup(method: str, records: Path, out: Path) -> dict[str, Any]:
    command = [sys.executable, str(HERE / "curate_near_dedup.py"), "--records", str(records)]
    command += ["--method", method, "--out", str(out)]
    started = time.perf_counter()
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f"near-dedup {method} failed:\n{process.stderr[-3000:]}")
    outcome = json.loads(out.read_text())
    outcome["wall_seconds"] = time.perf_counter() - started
    outcome["records_per_s"] = round(outcome["records"] / outcome["seconds"])
    return outcome


# --- truth and scoring -------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def load_truth(data: Path) -> dict[str, dict[str, Any]]:
    return {f"{row['source']}:{row['line']}": row for row in read_jsonl(data / "truth.jsonl")}


def outcome_by_place(out: Path) -> dict[str, tuple[str, Any]]:
    """source:line -> ("train" | "val", record) or ("rejected", reject entry)."""
    places: dict[str, tuple[str, Any]] = {}
    for split in ("train", "val"):
        for record in read_jsonl(out / f"{split}.jsonl"):
            places[f"{record['source']}:{record['line']}"] = (split, record)
    for reject in read_jsonl(out / "rejects.jsonl"):
        places[f"{reject['source']}:{reject['line']}"] = ("rejected", reject)
    return places


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def score_groups(
    removed: dict[str, str], groups: dict[str, str], reached: set[str], data: Path
) -> dict[str, Any]:
    """Precision and recall of duplicate removal against planted groups.

    `removed` maps each removed record to the one it duplicates; `groups` maps planted
    members to their group; `reached` are the records that reached the stage. Of a group
    whose r members reached it, r - 1 must go; a removal is right when both records are
    of the same group and the group still has a member to spare. Removals outside the
    planted truth are checked on the texts: how many pairs are in fact identical after
    normalization, and how many have a true 5-word-shingle Jaccard similarity of 0.8 or more
    (the generator can make accidental duplicates, e.g. two copies of a base that changed
    only its case and punctuation).
    """
    expected: Counter[str] = Counter(groups[place] for place in reached if place in groups)
    right: Counter[str] = Counter()
    unplanted = []
    for place, partner in removed.items():
        group = groups.get(place)
        if group is not None and groups.get(partner) == group and right[group] < expected[group] - 1:
            right[group] += 1
        else:
            unplanted.append((place, partner))
    true_positives = sum(right.values())
    should = sum(max(count - 1, 0) for count in expected.values())
    lines = input_lines(data, {place for pair in unplanted for place in pair})
    identical = similar = 0
    for place, partner in unplanted:
        first, second = parse(lines[place]), parse(lines[partner])
        identical += int(formats.identity_digest(first) == formats.identity_digest(second))
        similar += int(jaccard(first, second) >= 0.8)
    return {
        "removed": len(removed),
        "should_remove": should,
        "true_positives": true_positives,
        "precision": ratio(true_positives, len(removed)),
        "recall": ratio(true_positives, should),
        "unplanted_removals": len(unplanted),
        "unplanted_identical_after_normalization": identical,
        "unplanted_jaccard_at_least_0.8": similar,
    }


def input_lines(data: Path, places: set[str]) -> dict[str, bytes]:
    found = {}
    for path in sorted((data / "inputs").glob("part-*.jsonl")):
        with path.open("rb") as handle:
            for line, raw in enumerate(handle, start=1):
                if f"{path}:{line}" in places:
                    found[f"{path}:{line}"] = raw
    return found


def parse(raw: bytes) -> formats.ParsedRecord:
    parsed = formats.parse_line(raw)
    return pii.redact_record(parsed)[0]  # curate compares records after redaction


def shingles(record: formats.ParsedRecord, size: int = 5) -> set[bytes]:
    words = word_string(record.prompt + "\n" + record.response).split(b" ")
    return {b" ".join(words[i : i + size]) for i in range(max(len(words) - size + 1, 1))}


def jaccard(first: formats.ParsedRecord, second: formats.ParsedRecord) -> float:
    a, b = shingles(first), shingles(second)
    return len(a & b) / len(a | b) if a | b else 1.0


def near_groups(truth: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {
        place: f"n{row['cluster']}"
        for place, row in truth.items()
        if row["kind"] in ("near_base", "near_duplicate")
    }


def exact_groups(truth: dict[str, dict[str, Any]]) -> dict[str, str]:
    groups = {}
    by_key = {row["key"]: place for place, row in truth.items()}
    for place, row in truth.items():
        if row["kind"] == "exact_duplicate":
            groups[place] = groups[by_key[row["of"]]] = f"x{row['of']}"
    return groups


def _where(detail: str) -> str:
    match = re.search(r"kept from (.+:\d+)$", detail)
    assert match, detail
    return match.group(1)


def score_curate(out: Path, truth: dict[str, dict[str, Any]], data: Path) -> dict[str, Any]:
    """Near-dup, exact dedup, PII, prose numbers, contamination and quality, from one curate output."""
    places = outcome_by_place(out)
    stage_order = ("parse", "quality", "pii", "decontamination", "dedup", "near_dedup")
    rejected_before: dict[str, set[str]] = defaultdict(set)
    for place, (fate, entry) in places.items():
        if fate == "rejected":
            for stage in stage_order[stage_order.index(entry["stage"]) + 1 :]:
                rejected_before[stage].add(place)
    everything = set(places)
    near_removed = {
        place: _where(entry["detail"])
        for place, (fate, entry) in places.items()
        if fate == "rejected" and entry["reason"] == "near_duplicate"
    }
    exact_removed = {
        place: _where(entry["detail"])
        for place, (fate, entry) in places.items()
        if fate == "rejected" and entry["reason"] == "duplicate"
    }
    # val_contaminated is checked after near-dedup, so those records reached it too.
    reached_near = everything - rejected_before["near_dedup"]
    reached_exact = everything - rejected_before["dedup"]
    return {
        "near_dedup": score_groups(near_removed, near_groups(truth), reached_near, data),
        "exact_dedup": score_groups(exact_removed, exact_groups(truth), reached_exact, data),
        "pii": score_pii(places, truth),
        "contamination": score_contamination(places, truth),
        "quality": score_quality({p for p, (fate, e) in places.items() if fate == "rejected"}, places, truth),
    }


def record_text(record: dict[str, Any]) -> str:
    return "\n".join((record["prompt"], record["response"], record["system"]))


def score_pii(places: dict[str, tuple[str, Any]], truth: dict[str, dict[str, Any]]) -> dict[str, Any]:
    planted: Counter[str] = Counter()
    removed: Counter[str] = Counter()
    typed: Counter[str] = Counter()
    placeholders: Counter[str] = Counter()
    prose_total = prose_damaged = 0
    records_scored = 0
    examples_missed: dict[str, list[str]] = defaultdict(list)
    for place, (fate, record) in places.items():
        if fate == "rejected":
            continue
        text = record_text(record)
        for pii_type in PII_TYPES:
            placeholders[pii_type] += text.count(f"[{pii_type}]")
        row = truth[place]
        if row["kind"] == "pii":
            records_scored += 1
            for value in row["planted"]:
                pii_type = value["type"]
                planted[pii_type] += 1
                if value["value"] not in text:
                    removed[pii_type] += 1
                    typed[pii_type] += int(f"[{pii_type}]" in text)
                elif len(examples_missed[pii_type]) < 3:
                    examples_missed[pii_type].append(value["value"])
        elif row["kind"] == "prose_numbers":
            for number in row["numbers"]:
                prose_total += 1
                prose_damaged += int(number not in text)
    per_type = {}
    for pii_type in PII_TYPES:
        # Placeholders beyond the planted values of that type are false positives.
        false_positives = max(placeholders[pii_type] - typed[pii_type], 0)
        per_type[pii_type] = {
            "planted": planted[pii_type],
            "recall": ratio(removed[pii_type], planted[pii_type]),
            "recall_typed": ratio(typed[pii_type], planted[pii_type]),
            "placeholders": placeholders[pii_type],
            "precision": ratio(typed[pii_type], typed[pii_type] + false_positives),
            "missed_examples": examples_missed.get(pii_type, []),
        }
    return {
        "records_scored": records_scored,
        "by_type": per_type,
        "prose_numbers": {"planted": prose_total, "damaged": prose_damaged},
    }


def score_contamination(
    places: dict[str, tuple[str, Any]], truth: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    pairs: dict[int, dict[str, str]] = defaultdict(dict)
    for place, row in truth.items():
        if row["kind"] == "contaminated":
            fate, entry = places[place]
            pairs[row["pair"]][row["side"]] = entry["reason"] if fate == "rejected" else fate
    straddling = dropped = leaked = 0
    for sides in pairs.values():
        fates = set(sides.values())
        if "val" in fates and ("train" in fates or "val_contaminated" in fates):
            straddling += 1
            dropped += int("val_contaminated" in fates)
            leaked += int("train" in fates)
    return {
        "pairs": len(pairs),
        "split_across_train_and_val": straddling,
        "train_side_dropped": dropped,
        "left_in_train": leaked,
        "recall": ratio(dropped, straddling),
    }


def score_quality(
    rejected: set[str], places: dict[str, Any], truth: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Share of planted low-quality records rejected, and of ordinary records rejected by quality filters."""
    junk = {place for place, row in truth.items() if row["kind"] == "low_quality"}
    quality_rejects = {
        place
        for place in rejected
        if places[place][1]["reason"] in QUALITY_REASONS or places[place][1]["reason"] == "too_long"
    }
    return {
        "planted": len(junk),
        "caught": len(junk & rejected),
        "recall": ratio(len(junk & rejected), len(junk)),
        "other_records_rejected_by_filters": len(quality_rejects - junk),
    }


def score_nemo(work: Path, data: Path, truth: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The same quality score for NeMo's output (rows are "part:line" of the inputs)."""
    inputs = sorted((data / "inputs").glob("part-*.jsonl"))
    kept = {row["id"] for path in (work / "nemo-output").glob("*.jsonl") for row in read_jsonl(path)}
    offered = {row["id"] for path in sorted((data / "nemo").glob("*.jsonl")) for row in read_jsonl(path)}
    removed_places = {
        f"{inputs[int(part)]}:{line}" for part, line in (key.split(":") for key in offered - kept)
    }
    junk = {place for place, row in truth.items() if row["kind"] == "low_quality"}
    return {
        "planted": len(junk),
        "caught": len(junk & removed_places),
        "recall": ratio(len(junk & removed_places), len(junk)),
        "other_records_rejected_by_filters": len(removed_places - junk),
    }


def score_near_dedup_stage(
    outcome: dict[str, Any], records: Path, truth: dict[str, dict[str, Any]], data: Path
) -> dict:
    reached = {f"{record['source']}:{record['line']}" for record in read_jsonl(records)}
    return score_groups(outcome["removed"], near_groups(truth), reached, data)


def true_jaccard_of_planted_pairs(data: Path, truth: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Exact 5-word-shingle Jaccard similarity between each planted near duplicate and its base."""
    wanted = {place for place, row in truth.items() if row["kind"] in ("near_base", "near_duplicate")}
    records = {place: parse(raw) for place, raw in input_lines(data, wanted).items()}
    bases = {truth[place]["cluster"]: place for place in wanted if truth[place]["kind"] == "near_base"}
    values = sorted(
        jaccard(records[place], records[bases[truth[place]["cluster"]]])
        for place in wanted
        if truth[place]["kind"] == "near_duplicate"
    )
    return {
        "pairs": len(values),
        "min": round(values[0], 3),
        "p05": round(values[len(values) // 20], 3),
        "median": round(values[len(values) // 2], 3),
        "below_0.8": sum(1 for value in values if value < 0.8),
    }


# --- machine and report ------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    memory_kib = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    versions = {name: importlib.metadata.version(name) for name in ("numpy", "datasketch", "pydantic")}
    return {
        "cpu_model": cpu,
        "nproc": int(nproc),
        "memory_gib": round(memory_kib / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def nemo_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; "
        "names = ('nemo-curator', 'ray', 'cosmos-xenna', 'pandas', 'pyarrow'); "
        "print(json.dumps({n: m.version(n) for n in names}))"
    )
    process = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return json.loads(process.stdout) if process.returncode == 0 else {"error": process.stderr[-500:]}


def markdown(results: dict[str, Any]) -> str:
    filters, full = results["llmft_filters"], results["llmft_full"]
    rows = [
        "| run | records | best wall s (runs) | records/s | CPU s (main + workers) "
        "| peak RSS MiB (main, worker) |",
        "|---|---|---|---|---|---|",
    ]
    for name, outcome in (
        ("llmft curate, filters + exact dedup", filters),
        ("llmft curate, all stages", full),
    ):
        cpu, rss = outcome["cpu_seconds"], outcome["peak_rss_mib"]
        rows.append(
            f"| {name} | {outcome['records']:,} | {outcome['seconds']:.1f} ({outcome['all_seconds']}) | "
            f"{outcome['records_per_s']:,} | {cpu['main']:.1f} + {cpu['workers']:.1f} | "
            f"{rss['main']:.0f}, {rss['largest_worker']:.0f} |"
        )
    for executor, nemo in results["nemo_filters"].get("by_executor", {}).items():
        if "error" in nemo:
            rows.append(f"| NeMo Curator filters ({executor}) | failed | | | | |")
            continue
        rows.append(
            f"| NeMo Curator filters ({executor}) | {nemo['records']:,} | {nemo['seconds']:.1f} "
            f"({nemo['all_seconds']}; start {nemo['one_record_seconds']:.1f}) | {nemo['records_per_s']:,} "
            f"({nemo['records_per_s_without_start']:,} without start) | | |"
        )
    ratios = results.get("ratios", {})
    if ratios:
        rows += ["", "| ratio | value |", "|---|---|"]
        rows += [f"| {name} | {value}x |" for name, value in ratios.items()]
    stage_ours, stage_peer = results["near_dedup_stage"]["llmft"], results["near_dedup_stage"]["datasketch"]
    rows += [
        "",
        "| near-dedup stage | records | s | records/s | precision | recall |",
        "|---|---|---|---|---|---|",
    ]
    for name, outcome in (("llmft", stage_ours), ("datasketch MinHashLSH recipe", stage_peer)):
        score = outcome["score"]
        rows.append(
            f"| {name} | {outcome['records']:,} | {outcome['seconds']:.1f} | {outcome['records_per_s']:,} | "
            f"{score['precision']} | {score['recall']} |"
        )
    pii = results["scores"]["full"]["pii"]
    rows += ["", "| PII type | planted | recall | typed | precision |", "|---|---|---|---|---|"]
    for pii_type, score in pii["by_type"].items():
        rows.append(
            f"| {pii_type} | {score['planted']} | {score['recall']} | {score['recall_typed']} | "
            f"{score['precision']} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--work", type=Path, default=Path("/tmp/curate-bench"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--nemo-python", type=Path, default=ROOT / ".venv-bench" / "bin" / "python")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "curation_bench.json")
    args = parser.parse_args()

    data = args.work / f"data-{args.records}-{args.seed}"
    if not (data / "truth.jsonl").exists():
        print(f"generating {args.records:,} records in {data} ...", flush=True)
        curate_data.write(curate_data.generate(args.records, args.seed), data, parts=4)
    inputs = sorted((data / "inputs").glob("part-*.jsonl"))
    truth = load_truth(data)
    results: dict[str, Any] = {
        "command": "python bench/curate_bench.py " + " ".join(sys.argv[1:]),
        "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "data": {
            "records": args.records,
            "seed": args.seed,
            "bytes": sum(path.stat().st_size for path in inputs),
            "planted": dict(Counter(row["kind"] for row in truth.values())),
            "near_duplicate_true_jaccard": true_jaccard_of_planted_pairs(data, truth),
        },
    }

    filters_options = {"pii": "off", "near_dedup": False, "decontamination_ngram": 0}
    filters_out, full_out = args.work / "llmft-filters", args.work / "llmft-full"
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "llmft_filters": lambda: run_llmft(inputs, filters_out, filters_options),
        "llmft_full": lambda: run_llmft(inputs, full_out, {}),
    }
    results["nemo_filters"] = {"versions": {}, "by_executor": {}}
    if args.nemo_python.exists():
        results["nemo_filters"]["versions"] = nemo_versions(args.nemo_python)
        for executor in NEMO_EXECUTORS:
            runs[f"nemo_{executor}"] = lambda executor=executor: run_nemo(
                args.nemo_python, data, args.work, executor
            )
    else:
        results["nemo_filters"]["error"] = f"{args.nemo_python} not found: install NeMo Curator there"
    timed = best_of(args.repeats, runs)
    results["llmft_filters"], results["llmft_full"] = timed["llmft_filters"], timed["llmft_full"]
    for executor in NEMO_EXECUTORS:
        if f"nemo_{executor}" in timed:
            results["nemo_filters"]["by_executor"][executor] = timed[f"nemo_{executor}"]
    done = {name: run for name, run in results["nemo_filters"]["by_executor"].items() if "error" not in run}
    if done:
        fastest = min(done, key=lambda name: done[name]["seconds"])
        steady = max(done, key=lambda name: done[name]["records_per_s_without_start"])
        ours = results["llmft_filters"]["records_per_s"]
        results["ratios"] = {
            f"llmft filters+dedup vs NeMo fastest end to end ({fastest})": round(
                ours / done[fastest]["records_per_s"], 2
            ),
            f"llmft filters+dedup vs NeMo fastest without its start ({steady})": round(
                ours / done[steady]["records_per_s_without_start"], 2
            ),
        }
        if "xenna" in done:
            results["ratios"]["llmft filters+dedup vs NeMo default executor end to end (xenna)"] = round(
                ours / done["xenna"]["records_per_s"], 2
            )

    print("near-dedup stage: llmft and datasketch ...", flush=True)
    stage_input = args.work / "near-dedup-input.jsonl"
    with stage_input.open("wb") as handle:
        for split in ("train", "val"):
            handle.write((filters_out / f"{split}.jsonl").read_bytes())
    stage: dict[str, Any] = {}
    for method in ("llmft", "datasketch"):
        output = args.work / f"near-{method}.json"
        outcome = best_of(
            args.repeats if method == "llmft" else 1,
            {method: lambda method=method, output=output: run_near_dedup(method, stage_input, output)},
        )[method]
        outcome["score"] = score_near_dedup_stage(outcome, stage_input, truth, data)
        del outcome["removed"]
        stage[method] = outcome
    results["near_dedup_stage"] = stage

    results["scores"] = {
        "full": score_curate(full_out, truth, data),
        "filters": score_curate(filters_out, truth, data),
    }
    if done:
        # Every executor runs the same filters; score the output of the last one run.
        results["scores"]["nemo_quality"] = score_nemo(args.work, data, truth)
    for outcome in (results["llmft_filters"], results["llmft_full"]):
        outcome["result"] = {
            key: outcome["result"][key] for key in ("train_records", "val_records", "rejected_by_reason")
        }
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
