"""Tests of curate's quality filters, PII redaction and n-gram decontamination."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from components.curate import filters, pii
from components.curate.curate import CurateConfig, CurateResult, curate
from components.curate.formats import REASON_STAGES, REJECT_REASONS, ParsedRecord
from components.curate.ngrams import words
from components.records import Record, read_records
from components.sample.dataset import SAMPLE_PATH
from tests.components.test_curate import assert_accounted, rejects_by_line, write_lines

GOOD = {"input": "What is 2+2?", "output": "4"}
PROSE = (
    "The model was trained for three epochs on a small corpus and then evaluated on a held out "
    "benchmark of reading comprehension questions about history"
)


def run(tmp_path: Path, lines: list[Any], **options: Any) -> tuple[CurateResult, Path, dict[str, Any]]:
    source = write_lines(tmp_path / "data.jsonl", lines)
    out = tmp_path / "out"
    result = curate(CurateConfig(inputs=[str(source)], output=str(out), val_fraction=0.0, **options))
    stats = assert_accounted(out, [source], result=result)
    assert sum(stats["stages"].values()) == stats["rejected"]["total"]
    return result, out, stats


def kept(out: Path) -> list[Record]:
    return [*read_records(out / "train.jsonl"), *read_records(out / "val.jsonl")]


def record(prompt: str, response: str) -> ParsedRecord:
    return ParsedRecord(prompt, response, "", "input_output")


def test_every_reason_has_a_stage() -> None:
    assert set(REASON_STAGES) == set(REJECT_REASONS)


# --- quality filters -------------------------------------------------------------------

QUALITY_CASES: list[tuple[str, str, str | None]] = [
    # (prompt, response, expected reason or None)
    ("Repeat this", "Repeat this", "copies_prompt"),
    ("Summarize: the cat sat on the mat", "Summarize: the cat sat on the mat.", "copies_prompt"),
    ("Quote the cat line", "The cat sat on the mat, as the poem says in its first stanza.", None),
    ("Say hi", "...", "trivial_response"),
    ("Say hi", "?!", "trivial_response"),
    ("Answer", "4", None),
    ("Pick one", "(B)", None),  # short: the symbol ratio is not applied
    ("Draw", "#$%^&*()!!@@ ok", "too_many_symbols"),
    ("Write JSON", '{"name": "Alice", "age": 30}', None),
    ("List", "spam\nspam\nspam\nspam\neggs", "repeated_lines"),
    ("List", "spam\nspam\neggs\nham", None),  # half repeats: not more than 0.5
    ("List", "spam\nspam\nspam", None),  # fewer than 4 lines
    ("Tell me", " ".join(["I like it a lot."] * 6), "repeated_ngrams"),
    ("Tell me", PROSE, None),
    ("Tell me", "go go go go go go", None),  # fewer than 20 words
]


@pytest.mark.parametrize(("prompt", "response", "reason"), QUALITY_CASES)
def test_quality_problem(prompt: str, response: str, reason: str | None) -> None:
    problem = filters.quality_problem(record(prompt, response), filters.QualitySettings())
    assert (problem[0] if problem else None) == reason
    if problem:
        assert problem[1]


def test_quality_filters_reject_in_curate_with_reasons_and_stage(tmp_path: Path) -> None:
    lines = [GOOD] + [{"input": prompt, "output": response} for prompt, response, _ in QUALITY_CASES]
    # Repeated prompts would otherwise be deduplicated; distinct systems keep them apart.
    for index, line in enumerate(lines):
        line["system"] = f"s{index}"
    _, out, stats = run(tmp_path, lines)
    rejects = rejects_by_line(out)
    expected = {index + 2: reason for index, (_, _, reason) in enumerate(QUALITY_CASES) if reason}
    assert {line: reject["reason"] for line, reject in rejects.items()} == expected
    assert stats["stages"]["quality"] == len(expected)
    assert "max_repeated_line_ratio=0.5" in next(
        reject["detail"] for reject in rejects.values() if reject["reason"] == "repeated_lines"
    )
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "repeated_ngrams" in page and "rejected by stage" in page


def test_quality_filters_can_be_turned_off(tmp_path: Path) -> None:
    lines = [
        {"input": "Repeat this", "output": "Repeat this"},
        {"input": "q1", "output": "..."},
        {"input": "q2", "output": "#$%^&*()!!@@ ok"},
        {"input": "q3", "output": "spam\nspam\nspam\nspam"},
        {"input": "q4", "output": " ".join(["I like it a lot."] * 6)},
    ]
    result, _, _ = run(
        tmp_path,
        lines,
        reject_copied_prompt=False,
        reject_trivial_responses=False,
        max_symbol_ratio=1.0,
        max_repeated_line_ratio=1.0,
        max_repeated_ngram_ratio=1.0,
    )
    assert (result.train_records, result.rejected) == (5, 0)


# --- PII -------------------------------------------------------------------------------

PII_POSITIVES: list[tuple[str, str, str]] = [
    # (text, type, what must be gone)
    ("Write to jane.doe+work@example.co.uk today.", "EMAIL", "jane.doe"),
    ("Call +1 (555) 123-4567 now.", "PHONE", "123-4567"),
    ("Call +44 20 7946 0958 now.", "PHONE", "7946"),
    ("Call +4915112345678 now.", "PHONE", "4915112345678"),
    ("Call 555-123-4567 now.", "PHONE", "555-123"),
    ("Call (555) 123-4567 now.", "PHONE", "123-4567"),
    ("Call 030 1234567 now.", "PHONE", "1234567"),
    ("Call 06 12 34 56 78 now.", "PHONE", "56 78"),
    ("Server 192.168.10.254 is down.", "IPV4", "192.168"),
    ("Host 2001:0db8:85a3:0000:0000:8a2e:0370:7334 is up.", "IPV6", "2001:0db8"),
    ("Host 2001:db8::8a2e:370:7334 is up.", "IPV6", "2001:db8"),
    ("Mapped ::ffff:192.0.2.128 here.", "IPV6", "192.0.2.128"),
    ("Card 4111 1111 1111 1111 expires.", "CARD", "4111"),
    ("Card 5500-0000-0000-0004 expires.", "CARD", "5500"),
    ("Card 378282246310005 expires.", "CARD", "378282"),
    ("Key AKIAIOSFODNN7EXAMPLE leaked.", "AWS_ACCESS_KEY", "AKIA"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "AWS_SECRET_KEY", "wJalr"),
    ('"secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"', "AWS_SECRET_KEY", "wJalr"),
    ("The AWS secret access key is wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY.", "AWS_SECRET_KEY", "wJalr"),
    ("SECRET-KEY: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "AWS_SECRET_KEY", "wJalr"),
    ("export SECRET_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "AWS_SECRET_KEY", "wJalr"),
    ("token ghp_" + "a1B2" * 9 + " here", "API_TOKEN", "ghp_"),
    ("token gho_" + "Z9y8" * 9 + " here", "API_TOKEN", "gho_"),
    ("token github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz here", "API_TOKEN", "github_pat_"),
    ("token xoxb-1234567890-0987654321-AbCdEfGhIj here", "API_TOKEN", "xoxb-"),
    ("token sk-proj-abc123DEF456ghi789JKL012mno here", "API_TOKEN", "sk-proj"),
    ("token AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q here", "API_TOKEN", "AIza"),
    ("SSN 123-45-6789 on file.", "SSN", "6789"),
]


@pytest.mark.parametrize(("text", "pii_type", "secret"), PII_POSITIVES)
def test_pii_is_redacted_with_its_placeholder(text: str, pii_type: str, secret: str) -> None:
    redacted, found = pii.redact(text)
    assert found == {pii_type: 1}
    assert f"[{pii_type}]" in redacted and secret not in redacted


PROSE_NEGATIVES = [
    "On 2024-05-01 we met; on 05/01/2024 again, and on 01.02.2024 too.",
    "Upgrade from version 1.2.3 to v10.0.1 (build 10.0.19041.1).",
    "It costs $1,299.99, or 1,000,000,000 yen, or 1 000 000 000 lira.",
    "The meeting is at 12:30:45 and lasts 90 minutes; 42 people came in 2020-2024.",
    "ISBN 978-3-16-148410-0 and 0-306-40615-2 are books.",
    "Use std::vector, slice a[1:2:3], MAC 00:1A:2B:3C:4D:5E, and ::1 or fe80::1.",
    "Install sk-learn-compatible-estimators; invalid IP 256.1.1.1; bad card 4111 1111 1111 1112.",
    "Not SSNs: 000-12-3456, 666-12-3456, 900-12-3456, 123-00-4567, 123-45-0000.",
    "Short numbers 12345678 and 555-1234 are not phones; order #123456789012345678901 is no card.",
]


@pytest.mark.parametrize("text", PROSE_NEGATIVES)
def test_ordinary_prose_numbers_are_not_pii(text: str) -> None:
    assert pii.redact(text) == (text, {})


def test_luhn() -> None:
    assert pii.luhn_valid("4111111111111111") and not pii.luhn_valid("4111111111111112")


def test_pii_redact_mode_rewrites_fields_and_counts_by_type(tmp_path: Path) -> None:
    lines = [
        {
            "input": "Mail bob@example.com or call +1 555 123 4567",
            "output": "Done, wrote to bob@example.com",
            "system": "Server 10.0.0.1",
        },
        {"input": "Card?", "output": "4111 1111 1111 1111"},
        {"input": "Plain question", "output": "Plain answer"},
    ]
    result, out, stats = run(tmp_path, lines)
    assert (result.train_records, result.rejected) == (3, 0)
    by_line = {record.line: record for record in kept(out)}
    assert by_line[1].prompt == "Mail [EMAIL] or call [PHONE]"
    assert by_line[1].response == "Done, wrote to [EMAIL]"
    assert by_line[1].system == "Server [IPV4]"
    assert by_line[2].response == "[CARD]"
    assert by_line[3].response == "Plain answer"
    assert stats["pii"] == {"EMAIL": 2, "IPV4": 1, "CARD": 1, "PHONE": 1}
    assert "EMAIL 2" in (out / "report.html").read_text(encoding="utf-8")
    assert "bob@example.com" not in (out / "train.jsonl").read_text(encoding="utf-8")


def test_redacted_records_dedup_on_the_redacted_text(tmp_path: Path) -> None:
    lines = [{"input": "Who?", "output": "ann@example.com"}, {"input": "Who?", "output": "bob@example.org"}]
    result, _, stats = run(tmp_path, lines)
    assert result.rejected_by_reason == {"duplicate": 1}
    assert stats["pii"] == {"EMAIL": 1}  # only what was written


def test_pii_reject_mode(tmp_path: Path) -> None:
    lines = [GOOD, {"input": "Mail me", "output": "at ann@example.com or 555-123-4567"}]
    result, out, stats = run(tmp_path, lines, pii="reject")
    assert result.rejected_by_reason == {"pii": 1}
    reject = rejects_by_line(out)[2]
    assert reject["detail"] == "found EMAIL=1, PHONE=1"
    assert stats["stages"]["pii"] == 1 and stats["pii"] == {"EMAIL": 1, "PHONE": 1}


def test_pii_off(tmp_path: Path) -> None:
    lines = [{"input": "Mail me", "output": "at ann@example.com"}]
    result, out, stats = run(tmp_path, lines, pii="off")
    assert result.train_records == 1 and kept(out)[0].response == "at ann@example.com"
    assert stats["pii"] == {}


# --- decontamination -------------------------------------------------------------------

EVAL_TEXT = "the quick brown fox jumps over the lazy dog near the quiet river bank at dawn today"


def decontaminate(tmp_path: Path, train: list[Any], **options: Any) -> tuple[CurateResult, Path]:
    eval_set = write_lines(tmp_path / "eval.jsonl", [{"input": "Describe the scene.", "output": EVAL_TEXT}])
    source = write_lines(tmp_path / "data.jsonl", train)
    out = tmp_path / "out"
    config = CurateConfig(inputs=[str(source)], output=str(out), eval_set=str(eval_set), **options)
    result = curate(config)
    stats = assert_accounted(out, [source], eval_set=eval_set, result=result)
    assert sum(stats["stages"].values()) == stats["rejected"]["total"]
    return result, out


def test_words_lowercase_and_strip_punctuation() -> None:
    assert words("The Quick, brown-fox's\tjump!") == ["the", "quick", "brown", "fox", "s", "jump"]


def test_thirteen_gram_overlap_is_contaminated_twelve_is_kept(tmp_path: Path) -> None:
    eval_words = EVAL_TEXT.split()
    thirteen = " ".join(eval_words[2:15])
    twelve = " ".join(eval_words[2:14])
    train = [
        # Case and punctuation do not hide the overlap.
        {"input": "Write a sentence.", "output": f"Well, {thirteen.upper()}! Nice."},
        {"input": "Write another sentence.", "output": f"Well, {twelve} and then something else"},
        GOOD,
    ]
    result, out = decontaminate(tmp_path, train)
    rejects = rejects_by_line(out)
    assert result.rejected_by_reason == {"contaminated": 1}
    assert rejects[1]["reason"] == "contaminated"
    eval_id = next(record.id for record in read_records(out / "val.jsonl"))
    assert eval_id in rejects[1]["detail"] and "eval.jsonl:1" in rejects[1]["detail"]
    assert {record.line for record in read_records(out / "train.jsonl")} == {2, 3}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["decontamination"] == 1


def test_decontamination_ngram_is_configurable_and_can_be_off(tmp_path: Path) -> None:
    twelve = " ".join(EVAL_TEXT.split()[:12])
    train = [{"input": "Write.", "output": twelve}, GOOD]
    result, _ = decontaminate(tmp_path, train, decontamination_ngram=12)
    assert result.rejected_by_reason == {"contaminated": 1}
    thirteen = " ".join(EVAL_TEXT.split()[:13])
    result, _ = decontaminate(
        tmp_path, [{"input": "Write.", "output": thirteen}, GOOD], decontamination_ngram=0
    )
    assert result.rejected == 0


# --- the shipped sample ----------------------------------------------------------------


def test_sample_counts_by_stage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = curate(CurateConfig(inputs=[str(SAMPLE_PATH)], output=str(out)))
    stats = assert_accounted(out, [SAMPLE_PATH], result=result)
    assert (result.train_records, result.val_records) == (447, 60)
    # The sample's sentences are built from shared phrases: "What is the topic of this
    # text: ..." and "Name the topic of this text: ..." with the same text are near
    # duplicates, and many train records share 13-word passages with val records.
    assert stats["stages"] == {
        "parse": 4,
        "quality": 0,
        "pii": 0,
        "decontamination": 78,
        "dedup": 35,
        "near_dedup": 21,
    }
    # Without the two new stages the sample curates as before.
    before = curate(
        CurateConfig(
            inputs=[str(SAMPLE_PATH)],
            output=str(tmp_path / "before"),
            near_dedup=False,
            decontamination_ngram=0,
        )
    )
    assert (before.train_records, before.val_records) == (542, 64)
