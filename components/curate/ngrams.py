"""Words and word n-gram hashes, computed for a whole batch of texts at once with numpy.

Near-dedup (MinHash shingles) and decontamination (shared passages) both compare texts by
their word n-grams. A text's words are the maximal runs of letters and digits
(`str.isalnum`) of its lowercased form: punctuation, symbols, underscores and whitespace
only separate words, so "Hello, World!" and "hello world" have the same n-grams.

Hashing a batch: the texts' word strings (words joined by single spaces, UTF-8) are joined
by newlines, and every n-gram gets the 64-bit polynomial hash of its bytes
(sum of b_j * P^(len-1-j) mod 2^64), read off one prefix sum, so the cost is a few numpy
passes over the batch's bytes instead of Python work per n-gram. The hash depends only on
the n-gram's text, never on where it sits, so it is stable across batches, runs and machines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

_WORD = re.compile(r"[^\W_]+")  # \w minus "_" is exactly str.isalnum
_SEPARATORS = re.compile(r"[\W_]+")
_ASCII_SEPARATORS = bytes(byte if chr(byte).isalnum() else 0x20 for byte in range(256))
_SPACE = 0x20
_NEWLINE = 0x0A
# Any odd multiplier is invertible mod 2^64; this one (2^64 / golden ratio) mixes bits well.
_BASE = 0x9E3779B97F4A7C15
_BASE_INVERSE = pow(_BASE, -1, 1 << 64)
_MIN_POWERS = 1 << 16


def words(text: str) -> list[str]:
    """The lowercased words of `text` (maximal runs of letters and digits)."""
    return _WORD.findall(text.lower())


def word_string(text: str) -> bytes:
    """The words of `text` joined by single spaces, UTF-8 encoded: what n-grams are hashed from."""
    data = text.lower().encode("utf-8")
    if data.isascii():
        # The common case, without the regex: bytes.translate and split run at memory speed.
        return b" ".join(data.translate(_ASCII_SEPARATORS).split())
    return _SEPARATORS.sub(" ", text.lower()).strip().encode("utf-8")


@lru_cache(maxsize=4)
def _powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE^i and BASE^-i mod 2^64 for i < size (uint64 products wrap, which is the modulo)."""
    powers = np.empty(size, dtype=np.uint64)
    powers[0] = 1
    powers[1:] = np.uint64(_BASE)
    inverse = np.empty(size, dtype=np.uint64)
    inverse[0] = 1
    inverse[1:] = np.uint64(_BASE_INVERSE)
    return np.cumprod(powers, out=powers), np.cumprod(inverse, out=inverse)


def _powers_for(size: int) -> tuple[np.ndarray, np.ndarray]:
    # Rounded up to a power of two so a few cached tables serve every batch.
    return _powers(max(_MIN_POWERS, 1 << max(size, 1).bit_length()))


def ngram_hashes(
    word_strings: Sequence[bytes], n: int, whole_if_shorter: bool
) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every run of `n` consecutive words of each text, in text order.

    `word_strings` are `word_string` results. Returns (hashes, offsets): the n-grams of
    text i are hashes[offsets[i]:offsets[i + 1]]. A text with fewer than n words (but at
    least one) has no n-gram, or, with `whole_if_shorter`, one: all its words.
    """
    if n < 1:
        raise ValueError(f"n-gram length must be at least 1, got {n}")
    count = len(word_strings)
    data = np.frombuffer(b"\n".join(word_strings), dtype=np.uint8)
    size = len(data)
    powers, inverse = _powers_for(size + 1)
    # prefix[k] = sum_{j<k} b_j * BASE^-j, so bytes [s, e) hash to (prefix[e] - prefix[s]) * BASE^(e-1).
    prefix = np.zeros(size + 1, dtype=np.uint64)
    np.cumsum(data * inverse[:size], out=prefix[1:])

    separator = np.ones(size + 2, dtype=bool)
    separator[1:-1] = (data == _SPACE) | (data == _NEWLINE)
    in_word = ~separator[1:-1]
    starts = np.flatnonzero(in_word & separator[:-2])
    ends = np.flatnonzero(in_word & separator[2:]) + 1
    record = np.searchsorted(np.flatnonzero(data == _NEWLINE), starts)
    word_counts = np.bincount(record, minlength=count)

    total = len(starts)
    first = np.flatnonzero(record[: total - n + 1] == record[n - 1 :]) if total >= n else np.zeros(0, int)
    gram_starts, gram_ends, gram_records = starts[first], ends[first + n - 1], record[first]
    if whole_if_shorter:
        short = np.flatnonzero((word_counts > 0) & (word_counts < n))
        if len(short):
            first_word = np.cumsum(word_counts) - word_counts
            gram_starts = np.concatenate([gram_starts, starts[first_word[short]]])
            gram_ends = np.concatenate([gram_ends, ends[first_word[short] + word_counts[short] - 1]])
            gram_records = np.concatenate([gram_records, short])
            order = np.argsort(gram_records, kind="stable")
            gram_starts, gram_ends, gram_records = gram_starts[order], gram_ends[order], gram_records[order]

    hashes = (prefix[gram_ends] - prefix[gram_starts]) * powers[gram_ends - 1]
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.bincount(gram_records, minlength=count), out=offsets[1:])
    return hashes, offsets
