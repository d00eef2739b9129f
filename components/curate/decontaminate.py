"""Word n-gram decontamination: keep training records from sharing long passages with held-out data.

A training record is contaminated when any n consecutive words of its prompt+response
also occur, in the same order, in a held-out record's prompt+response, unless those n
words are boilerplate (below). Words are as in `ngrams.py`: lowercased runs of letters
and digits, so case and punctuation never hide an overlap. Records with fewer than n words
have no n-grams; exact copies of those are caught by eval_overlap (eval set) or land on
the same side of the hash split.

Boilerplate is not contamination: a prompt template or a fixed instruction repeated in
many records puts the same n-grams in the held-out records and in most training records,
and would reject them all (system prompts are never compared, see `record_words`). So the
training records are counted first (`count_holders`: per held-out n-gram, how many
distinct training records hold it) and the n-grams held by more than a limit are dropped
from the index (`drop_common`) before any record is matched. A copied or paraphrased
held-out record still shares its own passages, which few training records hold.

The index keeps each distinct n-gram's 64-bit hash, the first held-out record that has it
and its holder count (about 22 bytes per distinct held-out n-gram, with the bitmap below),
not the text, and matches a batch of records with one sorted search. Two different
n-grams share a hash with probability about 2^-64 per pair, far below any data set's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from components.curate.ngrams import ngram_hashes, word_string


def record_words(prompt: str, response: str) -> bytes:
    """The word string (`ngrams.word_string`) of prompt and response; the system prompt is not compared."""
    return word_string(prompt + "\n" + response)


class NgramIndex:
    """The n-grams of the held-out records, each mapped to the first record added that has it."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"n-gram length must be at least 1, got {n}")
        self.n = n
        self._names: list[str] = []
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        # Each add's n-gram hashes in text order with their offsets, for `drop_common` to see
        # which n-grams sit next to boilerplate; freed by it.
        self._in_text: list[tuple[np.ndarray, np.ndarray]] | None = []
        self._hashes = np.zeros(0, dtype=np.uint64)
        self._owners = np.zeros(0, dtype=np.int64)
        # Per indexed n-gram: training records counted by `count_holders` that hold it.
        self._holders = np.zeros(0, dtype=np.int32)
        # A bitmap of hash low bits (16 per n-gram, so about 6% of absent n-grams pass) lets a
        # batch skip the sorted search for nearly every n-gram it does not share.
        self._bitmap = np.zeros(1, dtype=np.uint8)
        self._mask = np.uint64(0)

    def __len__(self) -> int:
        """Distinct n-grams indexed."""
        self._merge()
        return len(self._hashes)

    def add(self, word_strings: Sequence[bytes], names: Sequence[str]) -> None:
        """Index the n-grams of records given as `record_words`; `names` are how rejections refer to them."""
        if self._in_text is None:
            raise RuntimeError("NgramIndex.add after drop_common: the boilerplate was decided without these")
        hashes, offsets = ngram_hashes(word_strings, self.n, whole_if_shorter=False)
        self._in_text.append((hashes, offsets))
        owners = np.repeat(np.arange(len(self._names), len(self._names) + len(names)), np.diff(offsets))
        self._names.extend(names)
        self._pending.append((hashes, owners))

    def _merge(self) -> None:
        if not self._pending:
            return
        hashes = np.concatenate([self._hashes, *(hashes for hashes, _ in self._pending)])
        owners = np.concatenate([self._owners, *(owners for _, owners in self._pending)])
        self._pending.clear()
        counted_hashes, counted = self._hashes, self._holders
        # np.unique keeps each value's first occurrence: the record added first owns the n-gram.
        self._hashes, first = np.unique(hashes, return_index=True)
        self._owners = owners[first]
        self._holders = np.zeros(len(self._hashes), dtype=np.int32)
        self._holders[np.searchsorted(self._hashes, counted_hashes)] = counted
        self._index_bits()

    def _index_bits(self) -> None:
        bits = 1 << max(16, (16 * len(self._hashes)).bit_length())
        self._mask = np.uint64(bits - 1)
        present = np.zeros(bits, dtype=bool)
        present[self._hashes & self._mask] = True
        self._bitmap = np.packbits(present)

    def _hits(self, word_strings: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The records' n-grams that are indexed: (hits, their slots, their records, offsets).

        `hits` index the records' n-grams in text order (`ngram_hashes`), `slots` the index.
        """
        self._merge()
        if not len(self._hashes):
            none = np.zeros(0, dtype=np.int64)
            return none, none, none, np.zeros(len(word_strings) + 1, dtype=np.int64)
        hashes, offsets = ngram_hashes(word_strings, self.n, whole_if_shorter=False)
        low_bits = hashes & self._mask
        maybe = np.flatnonzero((self._bitmap[low_bits >> np.uint64(3)] << (low_bits & np.uint64(7))) & 0x80)
        slots = np.minimum(np.searchsorted(self._hashes, hashes[maybe]), len(self._hashes) - 1)
        found = self._hashes[slots] == hashes[maybe]
        hits = maybe[found]
        records = np.searchsorted(offsets, hits, side="right") - 1
        return hits, slots[found], records, offsets

    def count_holders(self, word_strings: Sequence[bytes]) -> np.ndarray:
        """Count, per indexed n-gram, the given records that hold it; say which records hold any.

        A record holding an n-gram several times counts once; pass each distinct record once
        (over all calls), so the counts are numbers of distinct records.
        """
        _, slots, records, _ = self._hits(word_strings)
        holding = np.zeros(len(word_strings), dtype=bool)
        holding[records] = True
        if not len(records):
            return holding
        # Distinct (record, slot) pairs; records < len(word_strings), so the key cannot wrap.
        pairs = np.unique(records * len(self._hashes) + slots)
        counted, counts = np.unique(pairs % len(self._hashes), return_counts=True)
        self._holders[counted] += counts
        return holding

    def drop_common(self, max_holders: float) -> int:
        """Stop matching boilerplate n-grams; return how many distinct n-grams that drops.

        Boilerplate: the n-grams that more than `max_holders` counted records hold, and the
        n-grams sharing a word with one of those where a held-out record has them. The
        latter are a template's last words with the first words of a record's own text
        ("... Review: the"); few records hold each, but they say no more than the template.
        An n-gram that some held-out record has away from boilerplate stays. Call it once,
        after every `add` and `count_holders`.
        """
        self._merge()
        in_text, self._in_text = self._in_text or [], None
        common = self._hashes[self._holders > max_holders]
        if not len(common):
            return 0
        near, away = [], []
        for hashes, offsets in in_text:
            touches = _touching(hashes, offsets, common, self.n)
            near.append(hashes[touches])
            away.append(hashes[~touches])
        dropped = np.setdiff1d(np.concatenate(near), np.concatenate(away))  # sorted, distinct
        slots = np.minimum(np.searchsorted(dropped, self._hashes), len(dropped) - 1)
        keep = dropped[slots] != self._hashes
        self._hashes, self._owners, self._holders = (
            self._hashes[keep],
            self._owners[keep],
            self._holders[keep],
        )
        self._index_bits()
        return len(keep) - len(self._hashes)

    def match(self, word_strings: Sequence[bytes]) -> list[tuple[str, str] | None]:
        """Per record: (first shared n-gram's words, held-out record name), or None if it shares none."""
        found: list[tuple[str, str] | None] = [None] * len(word_strings)
        hits, slots, records, offsets = self._hits(word_strings)
        # The first hit of each record (hits are in text order).
        records, first = np.unique(records, return_index=True)
        for record, hit, slot in zip(
            records.tolist(), hits[first].tolist(), slots[first].tolist(), strict=True
        ):
            start = hit - int(offsets[record])
            gram = b" ".join(word_strings[record].split(b" ")[start : start + self.n]).decode("utf-8")
            found[record] = (gram, self._names[int(self._owners[slot])])
        return found


def _touching(hashes: np.ndarray, offsets: np.ndarray, common: np.ndarray, n: int) -> np.ndarray:
    """Per n-gram of texts given as `ngram_hashes` output: does it share a word with a `common` one?

    N-grams of one text at positions i and j share a word when |i - j| < n. `common` is sorted.
    """
    slots = np.minimum(np.searchsorted(common, hashes), len(common) - 1)
    common_before = np.zeros(len(hashes) + 1, dtype=np.int64)
    np.cumsum(common[slots] == hashes, out=common_before[1:])
    text = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    position = np.arange(len(hashes))
    low = np.maximum(position - (n - 1), offsets[text])
    high = np.minimum(position + n, offsets[text + 1])
    return common_before[high] > common_before[low]
