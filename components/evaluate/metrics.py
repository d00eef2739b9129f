"""Text and loss metrics for comparing a base model with its fine-tuned adapter.

Pure functions on strings and floats, no model code, so they are cheap to test and the
same definitions hold wherever they are used:

- `normalize`: lowercase, punctuation removed, whitespace collapsed. Articles are kept
  (unlike SQuAD's normalizer): in short label-style answers they can carry meaning.
- `exact_match`: 1.0 when the normalized strings are equal.
- `token_f1`: harmonic mean of precision and recall of the normalized tokens as
  multisets (SQuAD-style).
- `rouge_l`: F1 of the longest common subsequence of normalized tokens (ROUGE-L F-measure
  with beta = 1, the common default).
- `perplexity`: exp of the mean token-level cross-entropy (in nats).
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = set(string.punctuation)
_WHITESPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lowercase, drop punctuation (ASCII and Unicode), collapse whitespace."""
    lowered = text.lower()
    kept = "".join(
        " " if char in _PUNCTUATION or unicodedata.category(char).startswith("P") else char
        for char in lowered
    )
    # Punctuation becomes a space, not nothing, so "yes,no" reads as two tokens.
    return _WHITESPACE.sub(" ", kept).strip()


def tokens(text: str) -> list[str]:
    normalized = normalize(text)
    return normalized.split(" ") if normalized else []


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def _f1(overlap: int, predicted: int, expected: int) -> float:
    if predicted == 0 and expected == 0:
        return 1.0  # both empty: nothing to disagree on
    if overlap == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / expected
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = tokens(prediction), tokens(reference)
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    return _f1(overlap, len(predicted), len(expected))


def lcs_length(first: Sequence[str], second: Sequence[str]) -> int:
    """Length of the longest common subsequence; O(len(first) * len(second)) time, O(len(second)) memory."""
    if not first or not second:
        return 0
    previous = [0] * (len(second) + 1)
    for item in first:
        current = [0] * (len(second) + 1)
        for column, other in enumerate(second, start=1):
            current[column] = (
                previous[column - 1] + 1 if item == other else max(previous[column], current[column - 1])
            )
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    predicted, expected = tokens(prediction), tokens(reference)
    return _f1(lcs_length(predicted, expected), len(predicted), len(expected))


def perplexity(mean_loss: float) -> float:
    """exp(loss); inf where that overflows a float, nan stays nan."""
    try:
        return math.exp(mean_loss)
    except OverflowError:
        return math.inf


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def text_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Average exact match, token F1 and ROUGE-L over aligned predictions and references."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    pairs = list(zip(predictions, references, strict=True))
    return {
        "exact_match": mean([exact_match(p, r) for p, r in pairs]),
        "token_f1": mean([token_f1(p, r) for p, r in pairs]),
        "rouge_l": mean([rouge_l(p, r) for p, r in pairs]),
    }
