"""Heuristic quality filters: pure checks of one normalized record's response.

`quality_problem` returns the first problem as (reason, detail) or None. The checks are
cheap surface statistics aimed at scraped or generated junk (symbol soup, looping
output, echoed prompts, empty answers); they are not a judgment of correctness. The
exact rules are in README.md.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from components.curate.formats import ParsedRecord

# Below these sizes a ratio says little: a 3-line answer with one repeat is a third
# repeats, a short multiple-choice answer like "(B)" is two thirds symbols.
MIN_LINES_FOR_REPEATS = 4
MIN_WORDS_FOR_NGRAMS = 20
MIN_CHARS_FOR_SYMBOLS = 8
MIN_CHARS_FOR_CONTAINED_PROMPT = 20
REPEAT_NGRAM = 3
# A response that holds the prompt verbatim and little else echoes it.
CONTAINED_PROMPT_SHARE = 0.9


@dataclass(frozen=True)
class QualitySettings:
    """The quality settings of `CurateConfig`; a ratio of 1.0 (or False) turns its check off."""

    max_symbol_ratio: float = 0.5
    max_repeated_line_ratio: float = 0.5
    max_repeated_ngram_ratio: float = 0.5
    reject_copied_prompt: bool = True
    reject_trivial_responses: bool = True


# Neither a letter or digit (str.isalnum) nor whitespace (str.isspace): re's \w is isalnum
# plus "_", and its \s is isspace, so this counts in C what a character loop would in Python.
_SYMBOL = re.compile(r"[^\w\s]|_")
# A letter or digit (str.isalnum): \w without "_"; one search in C instead of a loop over characters.
_ALNUM = re.compile(r"[^\W_]")
# For ASCII text, deleting the letters, digits and whitespace bytes leaves the symbols (20x faster).
_ASCII_WORD_OR_SPACE = bytes(byte for byte in range(128) if chr(byte).isalnum() or chr(byte).isspace())


def symbol_ratio(text: str) -> float:
    """Share of characters that are neither letters, digits nor whitespace."""
    if not text:
        return 0.0
    if text.isascii():
        return len(text.encode("ascii").translate(None, _ASCII_WORD_OR_SPACE)) / len(text)
    return (len(text) - len(_SYMBOL.sub("", text))) / len(text)


def repeated_line_ratio(lines: list[str]) -> float:
    """Share of lines that repeat an earlier line (1 - distinct / total)."""
    return (len(lines) - len(set(lines))) / len(lines) if lines else 0.0


def repeated_ngram_ratio(words: list[str], n: int = REPEAT_NGRAM) -> float:
    """Share of word n-gram occurrences that repeat an earlier one (1 - distinct / total)."""
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    return (total - len(set(zip(*(words[i:] for i in range(n)), strict=False)))) / total


def _may_repeat_ngrams(words: list[str], limit: float, n: int = REPEAT_NGRAM) -> bool:
    """False when the repeated n-gram ratio cannot exceed `limit`, judged from distinct words alone.

    Every n-gram that ends at a word's first occurrence is new, so there are at least
    (distinct words - (n - 1)) distinct n-grams; counting words is much cheaper than n-grams.
    """
    total = len(words) - n + 1
    return total > 0 and 1 - (len(set(words)) - (n - 1)) / total > limit


def _copies_prompt(prompt: str, response: str) -> str | None:
    if response == prompt:
        return "the response is the prompt"
    if (
        len(response) >= MIN_CHARS_FOR_CONTAINED_PROMPT
        and prompt in response
        and len(prompt) > CONTAINED_PROMPT_SHARE * len(response)
    ):
        share = len(prompt) / len(response)
        return f"the response contains the prompt verbatim ({share:.0%} of its {len(response)} characters)"
    return None


def quality_problem(record: ParsedRecord, settings: QualitySettings) -> tuple[str, str] | None:
    """The first quality problem of `record`'s response as (reason, detail), or None.

    Order: copies_prompt, trivial_response, too_many_symbols, repeated_lines, repeated_ngrams
    (the more specific reason first: a prompt echo or "..." is also symbol-heavy or repetitive).
    """
    response = record.response
    if settings.reject_copied_prompt:
        copied = _copies_prompt(record.prompt, response)
        if copied:
            return "copies_prompt", copied
    if settings.reject_trivial_responses and _ALNUM.search(response) is None:
        return "trivial_response", f"the response {response[:40]!r} has no letter or digit"
    if len(response) >= MIN_CHARS_FOR_SYMBOLS:
        ratio = symbol_ratio(response)
        if ratio > settings.max_symbol_ratio:
            return (
                "too_many_symbols",
                f"{ratio:.0%} of the response's characters are symbols, more than "
                f"max_symbol_ratio={settings.max_symbol_ratio:g}",
            )
    # Splitting into lines is only worth it when there can be enough of them.
    lines = []
    if response.count("\n") >= MIN_LINES_FOR_REPEATS - 1:
        lines = [stripped for stripped in (line.strip() for line in response.split("\n")) if stripped]
    if len(lines) >= MIN_LINES_FOR_REPEATS:
        ratio = repeated_line_ratio(lines)
        if ratio > settings.max_repeated_line_ratio:
            top, count = Counter(lines).most_common(1)[0]
            return (
                "repeated_lines",
                f"{ratio:.0%} of the response's {len(lines)} lines are repeats, more than "
                f"max_repeated_line_ratio={settings.max_repeated_line_ratio:g} "
                f"({top[:40]!r} appears {count} times)",
            )
    words = response.lower().split()
    if len(words) >= MIN_WORDS_FOR_NGRAMS and _may_repeat_ngrams(words, settings.max_repeated_ngram_ratio):
        ratio = repeated_ngram_ratio(words)
        if ratio > settings.max_repeated_ngram_ratio:
            return (
                "repeated_ngrams",
                f"{ratio:.0%} of the response's word {REPEAT_NGRAM}-grams are repeats, more than "
                f"max_repeated_ngram_ratio={settings.max_repeated_ngram_ratio:g}",
            )
    return None
