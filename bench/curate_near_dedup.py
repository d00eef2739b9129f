"""The near-dedup stage alone, llmft's or datasketch's recipe, timed; run by bench/curate_bench.py.

    python bench/curate_near_dedup.py --records kept.jsonl --method llmft|datasketch --out removed.json

Reads canonical records (curate's train/val lines after exact dedup), loads them, then
times only the stage: shingling (word 5-grams of prompt + response, words as curate
defines them), MinHash with 128 permutations, LSH at Jaccard 0.8 and the choice of what
to remove. Writes {"seconds", "records", "removed": {"source:line": "source:line of the
record it duplicates"}} to --out.

- llmft: `components.curate.minhash` as curate runs it (one process): vectorized n-gram
  hashing and signatures per batch of 2048 records, band keys salted with the system prompt,
  candidates verified on their signatures, the smallest record id of each group kept.
- datasketch: the library's documented recipe used straightforwardly: `MinHash.generator`
  over each record's set of shingle bytes (SHA-1 based hashing, the library default) and a
  `MinHashLSH(threshold=0.8, num_perm=128)` queried before each insert; a record whose query
  returns any earlier record is removed as its duplicate.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH

from components.curate.minhash import lsh_params, select_near_duplicates
from components.curate.ngrams import word_string
from components.curate.screen import Sketcher, SketchSettings

SHINGLE, NUM_PERM, THRESHOLD = 5, 128, 0.8
BATCH = 2048


def load(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def llmft(records: list[dict[str, str]]) -> dict[str, str]:
    bands, rows = lsh_params(THRESHOLD, NUM_PERM)
    sketcher = Sketcher(SketchSettings(SHINGLE, NUM_PERM, bands, rows))
    signatures, keys, keyed = [], [], []
    for start in range(0, len(records), BATCH):
        batch = records[start : start + BATCH]
        words = [word_string(record["prompt"] + "\n" + record["response"]) for record in batch]
        batch_signatures, batch_keys, signed = sketcher.sign(words, [record["system"] for record in batch])
        signatures.append(batch_signatures[signed])
        keys.append(batch_keys[signed])
        keyed.extend((start + np.flatnonzero(signed)).tolist())
    ids = np.array([int(records[index]["id"], 16) for index in keyed], dtype=np.uint64)
    ranks = np.empty(len(keyed), dtype=np.int64)
    ranks[np.lexsort((np.arange(len(keyed)), ids))] = np.arange(len(keyed))
    near = select_near_duplicates(np.concatenate(keys), np.concatenate(signatures), ranks, THRESHOLD)
    return {
        place(records[keyed[index]]): place(records[keyed[int(near.kept_by[index])]])
        for index in np.flatnonzero(near.kept_by >= 0).tolist()
    }


def datasketch_recipe(records: list[dict[str, str]]) -> dict[str, str]:
    shingle_sets = []
    for record in records:
        words = word_string(record["prompt"] + "\n" + record["response"]).split(b" ")
        shingle_sets.append(
            {b" ".join(words[i : i + SHINGLE]) for i in range(max(len(words) - SHINGLE + 1, 1))}
        )
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    removed = {}
    for index, minhash in enumerate(MinHash.generator(shingle_sets, num_perm=NUM_PERM)):
        found = lsh.query(minhash)
        if found:
            removed[place(records[index])] = place(records[min(found)])
        else:
            lsh.insert(index, minhash)
    return removed


def place(record: dict[str, str]) -> str:
    return f"{record['source']}:{record['line']}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=Path, required=True)
    parser.add_argument("--method", choices=("llmft", "datasketch"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    records = load(args.records)
    started = time.perf_counter()
    removed = llmft(records) if args.method == "llmft" else datasketch_recipe(records)
    seconds = time.perf_counter() - started
    args.out.write_text(
        json.dumps({"seconds": round(seconds, 2), "records": len(records), "removed": removed})
    )


if __name__ == "__main__":
    main()
