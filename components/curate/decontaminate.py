"""Word n-gram decontamination: keep training records from sharing long passages with held-out data.

Pure functions. Text is lowercased, every character that is neither a letter, a digit
nor whitespace becomes a space, and the result is split on whitespace; a training record
is contaminated when any n consecutive words of its prompt+response also occur, in the
same order, in a held-out record's prompt+response. Records with fewer than n words have
no n-grams; exact copies of those are caught by eval_overlap instead.
"""

from __future__ import annotations

from collections.abc import Iterator

from components.curate.formats import ParsedRecord


def words(text: str) -> list[str]:
    """Lowercased words with punctuation and symbols turned into spaces."""
    cleaned = "".join(char if char.isalnum() or char.isspace() else " " for char in text.lower())
    return cleaned.split()


def record_words(record: ParsedRecord) -> list[str]:
    """The words of prompt and response together (the system prompt is not compared)."""
    return words(record.prompt + "\n" + record.response)


def ngrams(tokens: list[str], n: int) -> Iterator[str]:
    """Each run of n consecutive tokens, joined by single spaces."""
    for start in range(len(tokens) - n + 1):
        yield " ".join(tokens[start : start + n])


class NgramIndex:
    """The n-grams of the held-out records, each mapped to the first record that has it."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"n-gram length must be at least 1, got {n}")
        self.n = n
        self._owner: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._owner)

    def add(self, record: ParsedRecord, name: str) -> None:
        """Index `record`'s n-grams under `name` (how a rejection will refer to it)."""
        for gram in ngrams(record_words(record), self.n):
            self._owner.setdefault(gram, name)

    def match(self, record: ParsedRecord) -> tuple[str, str] | None:
        """(shared n-gram, held-out record name) of the first n-gram `record` shares, or None."""
        for gram in ngrams(record_words(record), self.n):
            owner = self._owner.get(gram)
            if owner is not None:
                return gram, owner
        return None
