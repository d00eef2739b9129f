"""MinHash LSH near-duplicate detection, vectorized over batches and exactly datasketch's MinHash.

Signatures: each record's shingles (word n-grams, see `ngrams.py`) are hashed to 32 bits
and fed to datasketch's "affine32" MinHash scheme (MurmurHash3 finalizer, then
`a_k * h + b_k mod 2^32` for each of `num_perm` permutations, minimum per permutation),
with datasketch's own permutation parameters. `MinHasher.signatures` computes that for a
whole batch at once; its result equals `datasketch.MinHash(num_perm, seed,
hashfunc=...).update_batch(shingles).hashvalues` value for value (a test pins this).

Banding: datasketch's `MinHashLSH` chooses the number of bands b and rows r for the
threshold and num_perm (minimizing the weighted false positive and negative probability,
weighted for recall: see LSH_WEIGHTS).
Records whose signatures agree on all r rows of any band are candidates; a candidate pair
is a near duplicate when its estimated Jaccard similarity (the share of equal signature
values) reaches the threshold.

Selection (`select_near_duplicates`) is a pure function of the signatures and a ranking,
so the result does not depend on the input order: records are visited by their number of
similar records, then rank, and a record is removed when it is similar to a record visited
earlier that was kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from datasketch import MinHash, MinHashLSH

SEED = 1  # datasketch's default seed: the permutations are datasketch's own
_EMPTY = np.uint32(0xFFFFFFFF)
_BLOCK = 4096  # shingles per vectorized step: num_perm x 4096 uint32 values stay in cache
_MIX = np.uint64(0x9E3779B97F4A7C15)
_PAIR_CHUNK = 65_536
# In a bucket of many records each one is compared with the first (lowest-ranked) ones
# only, so a huge cluster of near-identical boilerplate costs linear, not quadratic, work.
MAX_BUCKET_COMPARISONS = 32


# datasketch weighs false positives and false negatives equally by default, which at
# threshold 0.8 and 128 permutations (9 bands of 13 rows) makes only 40% of pairs at exactly
# 0.8 and 69% at 0.85 candidates. Every candidate is verified on its full signature, so a
# false positive only costs one comparison: weigh misses 19 times as much (16 bands of 8:
# 95% at 0.8, 99.4% at 0.85; and still about 1% of pairs at 0.4).
LSH_WEIGHTS = (0.05, 0.95)


@lru_cache(maxsize=8)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) that datasketch's MinHashLSH chooses for this threshold, num_perm and LSH_WEIGHTS."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    return lsh.b, lsh.r


def fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (datasketch's pre-mix), element-wise; uint32 products wrap."""
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


def fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer, element-wise."""
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xFF51AFD7ED558CCD)
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xC4CEB9FE1A85EC53)
    return values ^ (values >> np.uint64(33))


def shingle_hash32(hashes: np.ndarray) -> np.ndarray:
    """The 32-bit shingle hashes MinHash consumes: the high half of the 64-bit n-gram hashes."""
    return (hashes >> np.uint64(32)).astype(np.uint32)


class MinHasher:
    """datasketch "affine32" MinHash signatures for many records at once."""

    def __init__(self, num_perm: int, seed: int = SEED) -> None:
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self.num_perm = num_perm
        self.seed = seed
        self._a = np.ascontiguousarray(a, dtype=np.uint32)[:, None]
        self._b = np.ascontiguousarray(b, dtype=np.uint32)[:, None]

    def signatures(self, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(records, num_perm) uint32 signatures of `ngram_hashes` output; no shingles: all 2^32-1."""
        count = len(offsets) - 1
        result = np.full((count, self.num_perm), _EMPTY, dtype=np.uint32)
        values = fmix32(shingle_hash32(hashes))
        nonempty = np.flatnonzero(offsets[1:] > offsets[:-1])
        block = np.empty((self.num_perm, _BLOCK), dtype=np.uint32)
        for low in range(0, len(values), _BLOCK):
            high = min(low + _BLOCK, len(values))
            permuted = block[:, : high - low]
            np.multiply(self._a, values[low:high], out=permuted)
            np.add(permuted, self._b, out=permuted)
            # The records with shingles in [low, high), and where each one's part begins.
            first = np.searchsorted(nonempty, np.searchsorted(offsets, low, side="right") - 1)
            last = np.searchsorted(nonempty, np.searchsorted(offsets, high - 1, side="right") - 1, "right")
            records = nonempty[first:last]
            piece_starts = np.maximum(offsets[records], low) - low
            minima = np.minimum.reduceat(permuted, piece_starts, axis=1).T
            result[records] = np.minimum(result[records], minima)
        return result


def band_keys(signatures: np.ndarray, bands: int, rows: int, salts: np.ndarray) -> np.ndarray:
    """(records, bands) uint64 keys: equal keys mean equal band rows (up to 64-bit collisions).

    `salts` (one uint64 per record) go into every key, so only records with equal salts can
    become candidates; curate salts with the system prompt's hash.
    """
    keys = np.empty((len(signatures), bands), dtype=np.uint64)
    for band in range(bands):
        key = salts ^ np.uint64(band)
        for column in range(band * rows, (band + 1) * rows):
            key = key * _MIX + signatures[:, column].astype(np.uint64)
        keys[:, band] = fmix64(key)
    return keys


@dataclass(frozen=True)
class NearDuplicates:
    """The outcome of `select_near_duplicates` for N records."""

    kept_by: np.ndarray  # (N,) int64: index of the kept record each removed one duplicates, -1 if kept
    similarity: np.ndarray  # (N,) float32: estimated Jaccard with that record (0 if kept)
    candidate_pairs: int  # distinct pairs that shared a band
    similar_pairs: int  # of those, pairs at or above the threshold

    @property
    def removed(self) -> int:
        return int(np.count_nonzero(self.kept_by >= 0))


def _candidate_pairs(keys: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Distinct (lower rank, higher rank) index pairs sharing a band key, encoded as low * N + high."""
    count = len(keys)
    found = []
    positions = np.arange(count)
    for band in range(keys.shape[1]):
        order = np.lexsort((ranks, keys[:, band]))
        sorted_keys = keys[order, band]
        new_run = np.ones(count, dtype=bool)
        new_run[1:] = sorted_keys[1:] != sorted_keys[:-1]
        run_start = np.maximum.accumulate(np.where(new_run, positions, 0))
        members = np.flatnonzero(~new_run)  # every record of a bucket but its first
        for offset in range(MAX_BUCKET_COMPARISONS):
            partners = run_start[members] + offset
            members = members[partners < members]
            if not len(members):
                break
            found.append(order[run_start[members] + offset] * count + order[members])
    return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def select_near_duplicates(
    keys: np.ndarray, signatures: np.ndarray, ranks: np.ndarray, threshold: float
) -> NearDuplicates:
    """Which records to remove as near duplicates, given band keys, signatures and a ranking.

    Two records of a shared bucket are similar when their estimated Jaccard similarity is at
    least `threshold`. Records are visited by how many records they are similar to (most
    first), then by increasing `ranks` (distinct integers); one is removed when it is
    similar to a record already kept, and `kept_by` names the first such record. Visiting
    the best-connected records first keeps a group's centre: when two edited copies of a
    text are each similar to it but not to each other, the original stays and both copies
    go. Every removed record is similar to a kept one, and the outcome depends only on the
    records, not on their order.
    """
    count = len(keys)
    pairs = _candidate_pairs(keys, ranks)
    low, high = np.divmod(pairs, count)
    similarity = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), _PAIR_CHUNK):
        chunk = slice(start, start + _PAIR_CHUNK)
        equal = signatures[low[chunk]] == signatures[high[chunk]]
        similarity[chunk] = equal.mean(axis=1)
    similar = similarity >= np.float32(threshold)
    low, high, similarity = low[similar], high[similar], similarity[similar]
    degree = np.bincount(np.concatenate([low, high]), minlength=count)
    visit = np.empty(count, dtype=np.int64)
    visit[np.lexsort((ranks, -degree))] = np.arange(count)
    first = np.where(visit[low] < visit[high], low, high)
    second = low + high - first
    # By the later-visited record, then its partner: when `second` comes up, every record
    # visited before it has its final status.
    order = np.lexsort((visit[first], visit[second]))
    kept_by = np.full(count, -1, dtype=np.int64)
    best = np.zeros(count, dtype=np.float32)
    removed = bytearray(count)
    for keep, drop, value in zip(
        first[order].tolist(), second[order].tolist(), similarity[order].tolist(), strict=True
    ):
        if removed[drop] or removed[keep]:
            continue
        removed[drop] = 1
        kept_by[drop] = keep
        best[drop] = value
    return NearDuplicates(
        kept_by=kept_by, similarity=best, candidate_pairs=len(pairs), similar_pairs=int(similar.sum())
    )
