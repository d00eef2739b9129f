"""Tests of the curate step: formats, rejects, accounting, split, eval overlap, outputs."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from components import storage
from components.curate import formats
from components.curate.curate import (
    OUTPUT_FILES,
    CurateConfig,
    CurateError,
    CurateResult,
    curate,
)
from components.records import Record, read_records
from components.sample.dataset import SAMPLE_PATH

GOOD = {"input": "What is 2+2?", "output": "4"}


# --- helpers ---------------------------------------------------------------------------


def write_lines(path: Path, lines: list[Any], compress: bool = False) -> Path:
    """Write dicts as JSON, str as text and bytes verbatim, one per line."""
    data = b"".join(
        (line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode())
        + b"\n"
        for line in lines
    )
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def physical_lines(path: Path) -> int:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        return sum(1 for _ in handle)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_accounted(
    out: Path, inputs: list[Path], eval_set: Path | None = None, result: CurateResult | None = None
) -> dict[str, Any]:
    """Every input line is in exactly one output file, and stats.json and the result say so."""
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    train = list(read_records(out / "train.jsonl"))
    val = list(read_records(out / "val.jsonl"))
    rejects = read_jsonl(out / "rejects.jsonl")
    input_lines = sum(physical_lines(path) for path in inputs)
    eval_lines = physical_lines(eval_set) if eval_set else 0

    assert stats["input_records"] == input_lines
    assert stats["eval_records"] == eval_lines
    assert stats["kept"] == {"train": len(train), "val": len(val)}
    assert stats["rejected"]["total"] == len(rejects) == sum(stats["rejected"]["by_reason"].values())
    assert stats["rejected"]["by_reason"] == dict(Counter(reject["reason"] for reject in rejects))
    if eval_set:
        eval_uri = str(eval_set)
        eval_rejects = [reject for reject in rejects if reject["source"] == eval_uri]
        assert input_lines == len(train) + len(rejects) - len(eval_rejects)
        assert eval_lines == len(val) + len(eval_rejects)
        assert all(record.source == eval_uri for record in val)
    else:
        assert input_lines == len(train) + len(val) + len(rejects)
    # Every reject names its place, stage and reason and keeps the line's text.
    for reject in rejects:
        assert reject["stage"] == formats.REASON_STAGES[reject["reason"]]
        assert isinstance(reject["line"], int) and reject["line"] >= 1
        assert reject["source"] and isinstance(reject["text"], str) and reject["detail"]
    assert stats["stages"] == {
        stage: sum(1 for reject in rejects if reject["stage"] == stage) for stage in formats.STAGES
    }
    # No line is both kept and rejected, and none is counted twice.
    places = [(record.source, record.line) for record in train + val]
    places += [(reject["source"], reject["line"]) for reject in rejects]
    assert len(places) == len(set(places)) == input_lines + eval_lines

    if result is not None:
        assert result.train_records == len(train)
        assert result.val_records == len(val)
        assert result.rejected == len(rejects)
        assert result.input_records == input_lines
        assert result.eval_records == eval_lines
        assert result.rejected_by_reason == stats["rejected"]["by_reason"]
    return stats


def run(
    tmp_path: Path, lines: list[Any], name: str = "data.jsonl", **options: Any
) -> tuple[CurateResult, Path]:
    source = write_lines(tmp_path / name, lines)
    out = tmp_path / "out"
    result = curate(CurateConfig(inputs=[str(source)], output=str(out), **options))
    assert_accounted(out, [source], result=result)
    return result, out


def rejects_by_line(out: Path) -> dict[int, dict[str, Any]]:
    return {reject["line"]: reject for reject in read_jsonl(out / "rejects.jsonl")}


def kept(out: Path) -> list[Record]:
    return [*read_records(out / "train.jsonl"), *read_records(out / "val.jsonl")]


# --- formats ---------------------------------------------------------------------------


def test_each_format_parses_to_the_canonical_record(tmp_path: Path) -> None:
    lines = [
        {"input": " Add 1 and 2 ", "output": "3"},
        {"prompt": "Add 2 and 2", "completion": "4", "system": "Be brief."},
        {"messages": [{"role": "user", "content": "Add 3 and 2"}, {"role": "assistant", "content": "5"}]},
        {
            "messages": [
                {"role": "system", "content": "You do sums."},
                {"role": "user", "content": "Add 1 and 1"},
                {"role": "assistant", "content": "2"},
                {"role": "user", "content": "And add 3?"},
                {"role": "assistant", "content": "5"},
            ]
        },
    ]
    result, out = run(tmp_path, lines, val_fraction=0.0)
    assert result.train_records == 4 and result.rejected == 0
    by_line = {record.line: record for record in kept(out)}
    assert (by_line[1].prompt, by_line[1].response, by_line[1].system) == ("Add 1 and 2", "3", "")
    assert (by_line[2].prompt, by_line[2].response, by_line[2].system) == ("Add 2 and 2", "4", "Be brief.")
    assert (by_line[3].prompt, by_line[3].response) == ("Add 3 and 2", "5")
    assert by_line[4].prompt == "user: Add 1 and 1\nassistant: 2\nuser: And add 3?"
    assert (by_line[4].response, by_line[4].system) == ("5", "You do sums.")
    assert all(record.source == str(tmp_path / "data.jsonl") for record in by_line.values())
    stats = json.loads((out / "stats.json").read_text())
    assert stats["per_source"][str(tmp_path / "data.jsonl")]["formats"] == {
        "chat": 2,
        "input_output": 1,
        "prompt_completion": 1,
    }


def test_record_id_is_sha256_prefix_of_normalized_fields(tmp_path: Path) -> None:
    _, out = run(tmp_path, [{"input": "Q\r\n", "output": "A", "system": "S"}], val_fraction=0.0)
    (record,) = kept(out)
    assert record.id == formats.record_id(formats.ParsedRecord("Q", "A", "S", "input_output"))
    assert len(record.id) == 16 and int(record.id, 16) >= 0


def test_normalize_text() -> None:
    # Decomposed é becomes NFC, CRLF and CR become LF, a run of controls (not \t, \n) becomes one
    # space, ends are stripped.
    assert formats.normalize_text("  cafe\u0301\r\nline\rtwo\x00\x07\tend \n") == "caf\u00e9\nline\ntwo \tend"


def test_gzip_input(tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "data.jsonl.gz", [GOOD, "not json", {"prompt": "p", "completion": "c"}], True
    )
    out = tmp_path / "out"
    result = curate(CurateConfig(inputs=[str(source)], output=str(out), val_fraction=0.0))
    assert_accounted(out, [source], result=result)
    assert result.train_records == 2
    assert rejects_by_line(out)[2]["reason"] == "malformed_json"


def test_parquet_input(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "data.parquet"
    # Mixed formats in one table: each row has the other format's columns as null.
    table = pa.Table.from_pylist(
        [
            {"input": "Add 1 and 2", "output": "3", "prompt": None, "completion": None},
            {"input": None, "output": None, "prompt": "Add 2 and 2", "completion": "4"},
            {"input": "Add 5 and 5", "output": None, "prompt": None, "completion": None},
        ]
    )
    pq.write_table(table, source)
    out = tmp_path / "out"
    result = curate(CurateConfig(inputs=[str(source)], output=str(out), val_fraction=0.0))
    assert (result.train_records, result.rejected) == (2, 1)
    reject = rejects_by_line(out)[3]
    assert reject["reason"] == "missing_field" and "output" in reject["detail"]
    assert result.input_records == 3


# --- rejects ---------------------------------------------------------------------------

BAD_LINES: list[tuple[Any, str, str]] = [
    ('{"input": "unterminated', "malformed_json", "Unterminated string"),
    ("[1, 2]", "not_an_object", "JSON array"),
    ('"just a string"', "not_an_object", "JSON string"),
    ({"question": "q", "answer": "a"}, "unknown_format", "keys seen: answer, question"),
    ({"input": "q", "completion": "a"}, "unknown_format", "more than one format"),
    ({"instruction": "i", "input": "q", "output": "a"}, "unknown_format", "instruction"),
    ({"input": "q"}, "missing_field", "'output'"),
    ({"completion": "a"}, "missing_field", "'prompt'"),
    ({"input": "q", "output": 4}, "wrong_type", "'output' is number"),
    ({"input": ["q"], "output": "a"}, "wrong_type", "'input' is array"),
    ({"input": "q", "output": "a", "system": 3}, "wrong_type", "'system' is number"),
    ({"messages": "hi"}, "wrong_type", "'messages' is string"),
    ({"messages": [{"role": "user", "content": 1}]}, "wrong_type", "messages[0].content"),
    ({"messages": [{"content": "q"}]}, "missing_field", "messages[0].role"),
    (b'{"input": "caf\xe9", "output": "a"}', "invalid_utf8", "0xe9"),
    ('{"input": "\\ud800", "output": "a"}', "invalid_utf8", "surrogate"),
    ("", "blank_line", "empty"),
    ("   \t", "blank_line", "empty"),
    ({"input": " \n ", "output": "a"}, "empty_prompt", "prompt"),
    ({"input": "q", "output": "\u0007 "}, "empty_response", "response"),
    ({"input": "q" * 31, "output": "a"}, "too_long", "max_prompt_chars=30"),
    ({"input": "q", "output": "a" * 31}, "too_long", "max_response_chars=30"),
    ({"input": "q", "output": "ab"}, "empty_response", "min_response_chars=3"),
    ({"messages": []}, "bad_chat", "empty"),
    ({"messages": [{"role": "assistant", "content": "a"}]}, "bad_chat", "expected user"),
    ({"messages": [{"role": "user", "content": "q"}]}, "bad_chat", "last message is from the user"),
    (
        {"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]},
        "bad_chat",
        "alternate",
    ),
    ({"messages": [{"role": "tool", "content": "q"}]}, "bad_chat", "'tool'"),
    ({"messages": [{"role": "system", "content": "s"}]}, "bad_chat", "only a system message"),
    (
        {"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]},
        "bad_chat",
        "system message",
    ),
    (
        {"system": "a", "messages": [{"role": "system", "content": "b"}, {"role": "user", "content": "q"}]},
        "bad_chat",
        "different",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": " "},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a"},
            ]
        },
        "bad_chat",
        "messages[1] (assistant) is empty",
    ),
]


@pytest.mark.parametrize(
    ("line", "reason", "detail"), BAD_LINES, ids=[f"{i}-{c[1]}" for i, c in enumerate(BAD_LINES)]
)
def test_bad_line_is_rejected_with_its_reason(tmp_path: Path, line: Any, reason: str, detail: str) -> None:
    _, out = run(
        tmp_path,
        [GOOD, line, {"prompt": "p", "completion": "abc"}],
        val_fraction=0.0,
        max_prompt_chars=30,
        max_response_chars=30,
        min_response_chars=3 if reason == "empty_response" and "min" in detail else 1,
    )
    rejects = rejects_by_line(out)
    if detail.startswith("min_response_chars"):
        # GOOD's one-character response is also too short here.
        assert rejects[1]["reason"] == "empty_response"
    assert rejects[2]["reason"] == reason
    assert detail in rejects[2]["detail"]
    assert rejects[2]["source"] == str(tmp_path / "data.jsonl")
    expected_text = line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line
    if isinstance(line, dict):
        expected_text = json.dumps(line)
    assert rejects[2]["text"] == expected_text
    assert 3 not in rejects


def test_huge_reject_text_is_truncated_and_marked(tmp_path: Path) -> None:
    _, out = run(tmp_path, [GOOD, "x" * 100_000], val_fraction=0.0)
    reject = rejects_by_line(out)[2]
    assert reject["truncated"] is True and 1_000 < len(reject["text"]) < 100_000


@pytest.mark.parametrize("compress", [False, True])
def test_lines_are_numbered_across_read_blocks(tmp_path: Path, compress: bool) -> None:
    # Inputs are read in blocks of about 1 MiB of whole lines: a 3 MiB line, thousands of
    # lines and a last line without a newline must all keep their numbers.
    huge = {"input": "q", "output": "y" * (3 << 20)}
    lines = [{"input": f"question {i}", "output": f"answer {i} " + "z" * (i % 700)} for i in range(3000)]
    lines[1200] = huge
    lines[2500] = "{broken"
    data = b"".join(
        json.dumps(line).encode() + b"\n" if isinstance(line, dict) else b"{broken\n" for line in lines
    )
    source = tmp_path / ("data.jsonl.gz" if compress else "data.jsonl")
    source.write_bytes(gzip.compress(data[:-1]) if compress else data[:-1])  # no final newline
    out = tmp_path / "out"
    result = curate(CurateConfig(inputs=[str(source)], output=str(out), val_fraction=0.0))
    assert_accounted(out, [source], result=result)
    assert {line: reject["reason"] for line, reject in rejects_by_line(out).items()} == {
        1201: "too_long",
        2501: "malformed_json",
    }
    assert [record.line for record in kept(out)] == [n for n in range(1, 3001) if n not in (1201, 2501)]
    assert all(record.prompt == f"question {record.line - 1}" for record in kept(out))


def test_invalid_utf8_rejects_only_its_line(tmp_path: Path) -> None:
    result, out = run(
        tmp_path, [GOOD, b"\xff\xfe garbage", {"prompt": "p", "completion": "c"}], val_fraction=0.0
    )
    assert result.train_records == 2
    assert rejects_by_line(out)[2]["text"] == "\ufffd\ufffd garbage"


def test_reject_line_numbers_match_the_file(tmp_path: Path) -> None:
    lines = [GOOD, "bad", {"prompt": "p", "completion": "c"}, "", "[]", {"input": "x", "output": "y"}, "{"]
    _, out = run(tmp_path, lines, val_fraction=0.0)
    assert {line: reject["reason"] for line, reject in rejects_by_line(out).items()} == {
        2: "malformed_json",
        4: "blank_line",
        5: "not_an_object",
        7: "malformed_json",
    }
    assert sorted(record.line for record in kept(out)) == [1, 3, 6]


def test_byte_order_mark_and_crlf_lines_are_accepted(tmp_path: Path) -> None:
    source = tmp_path / "data.jsonl"
    source.write_bytes(b'\xef\xbb\xbf{"input": "a", "output": "b"}\r\n{"input": "c", "output": "d"}\r\n')
    out = tmp_path / "out"
    result = curate(CurateConfig(inputs=[str(source)], output=str(out), val_fraction=0.0))
    assert (result.train_records, result.rejected) == (2, 0)
    assert_accounted(out, [source], result=result)


def test_empty_file_is_a_curate_error_naming_it(tmp_path: Path) -> None:
    good = write_lines(tmp_path / "good.jsonl", [GOOD])
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(CurateError, match=r"empty\.jsonl is empty"):
        curate(CurateConfig(inputs=[str(good), str(empty)], output=str(tmp_path / "out")))
    assert not (tmp_path / "out" / storage.MANIFEST_NAME).exists()


def test_everything_filtered_is_a_curate_error_with_reasons(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "data.jsonl", ["{bad"] * 12)
    out = tmp_path / "out"
    with pytest.raises(CurateError) as raised:
        curate(CurateConfig(inputs=[str(source)], output=str(out)))
    message = str(raised.value)
    assert message.startswith(f"no training records left after curation of {source}: 12 lines, all rejected")
    assert "(malformed_json=12)" in message and "rejects.jsonl" in message
    # The partial outputs stay for debugging but without a manifest they never look complete.
    assert not (out / storage.MANIFEST_NAME).exists()
    assert len(read_jsonl(out / "rejects.jsonl")) == 12
    assert_accounted(out, [source])
    with pytest.raises(storage.IncompleteDirectoryError):
        storage.require_complete(str(out))


def test_everything_in_val_is_a_curate_error_that_says_so(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "data.jsonl", [GOOD, "bad"])
    with pytest.raises(CurateError, match=r"2 lines, 1 rejected \(malformed_json=1\), 1 split to val"):
        curate(CurateConfig(inputs=[str(source)], output=str(tmp_path / "out"), val_fraction=0.99))


def test_missing_input_is_a_curate_error(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match=r"input file .*nope\.jsonl does not exist"):
        curate(CurateConfig(inputs=[str(tmp_path / "nope.jsonl")], output=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
    with pytest.raises(CurateError, match="is a directory"):
        curate(CurateConfig(inputs=[str(tmp_path)], output=str(tmp_path / "out")))


def test_output_with_foreign_files_is_refused(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "data.jsonl", [GOOD])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CurateError, match=r"notes\.txt"):
        curate(CurateConfig(inputs=[str(source)], output=str(out)))


def test_rerun_into_same_output_replaces_it_and_a_failed_rerun_drops_the_manifest(tmp_path: Path) -> None:
    good = write_lines(tmp_path / "good.jsonl", [GOOD, {"input": "q2", "output": "a2"}])
    out = tmp_path / "out"
    first = curate(CurateConfig(inputs=[str(good)], output=str(out)))
    again = curate(CurateConfig(inputs=[str(good)], output=str(out)))
    assert first.dataset_sha256 == again.dataset_sha256
    bad = write_lines(tmp_path / "bad.jsonl", ["nope"])
    with pytest.raises(CurateError):
        curate(CurateConfig(inputs=[str(bad)], output=str(out)))
    assert not (out / storage.MANIFEST_NAME).exists()


# --- dedup, split, eval ----------------------------------------------------------------


def test_duplicates_across_formats_are_detected(tmp_path: Path) -> None:
    lines = [
        {"input": "Name a color", "output": "red"},
        {"prompt": "  Name a color\r\n", "completion": "red "},
        {"messages": [{"role": "user", "content": "Name a color"}, {"role": "assistant", "content": "red"}]},
        {"input": "Name a color", "output": "red", "system": "Be kind."},  # another system: not a duplicate
        {"input": "Name a cafe\u0301", "output": "x"},
        {"input": "Name a caf\u00e9", "output": "x"},  # same after NFC
    ]
    result, out = run(tmp_path, lines, val_fraction=0.0)
    assert result.train_records == 3
    assert result.rejected_by_reason == {"duplicate": 3}
    rejects = rejects_by_line(out)
    first_id = next(record.id for record in kept(out) if record.line == 1)
    assert f"record {first_id} kept from {tmp_path / 'data.jsonl'}:1" in rejects[2]["detail"]
    assert rejects[3]["detail"] == rejects[2]["detail"]
    assert rejects[6]["detail"].endswith(":5")


def test_dedup_off_keeps_duplicates(tmp_path: Path) -> None:
    result, _ = run(tmp_path, [GOOD, GOOD], val_fraction=0.0, dedup=False, near_dedup=False)
    assert (result.train_records, result.rejected) == (2, 0)
    # An exact copy is also a near duplicate (similarity 1), so near-dedup alone removes it.
    result, _ = run(tmp_path, [GOOD, GOOD], val_fraction=0.0, dedup=False)
    assert result.rejected_by_reason == {"near_duplicate": 1}


def _many(prefix: str, count: int) -> list[dict[str, str]]:
    return [{"input": f"{prefix} question {i}", "output": f"answer {i}"} for i in range(count)]


def test_split_is_deterministic_and_independent_of_input_order(tmp_path: Path) -> None:
    a = write_lines(tmp_path / "a.jsonl", _many("a", 150))
    b = write_lines(tmp_path / "b.jsonl", _many("b", 150) + _many("a", 10))  # 10 cross-file duplicates

    def split(name: str, inputs: list[Path]) -> tuple[CurateResult, set[str], set[str]]:
        out = tmp_path / name
        result = curate(
            CurateConfig(inputs=[str(path) for path in inputs], output=str(out), val_fraction=0.2)
        )
        assert_accounted(out, inputs, result=result)
        train = {record.id for record in read_records(out / "train.jsonl")}
        val = {record.id for record in read_records(out / "val.jsonl")}
        return result, train, val

    first, train1, val1 = split("one", [a, b])
    second, train2, val2 = split("two", [a, b])
    reversed_, train3, val3 = split("three", [b, a])
    assert first.dataset_sha256 == second.dataset_sha256
    assert (tmp_path / "one" / "train.jsonl").read_bytes() == (tmp_path / "two" / "train.jsonl").read_bytes()
    assert train1 == train2 == train3 and val1 == val2 == val3
    assert not train1 & val1 and len(train1 | val1) == 300
    assert 30 <= len(val1) <= 90  # about 20% of 300
    assert first.rejected_by_reason == reversed_.rejected_by_reason == {"duplicate": 10}


def test_split_ignores_system_prompt(tmp_path: Path) -> None:
    lines = [
        {"input": f"q{i}", "output": "a", "system": system} for i in range(40) for system in ("s1", "s2")
    ]
    _, out = run(tmp_path, lines, val_fraction=0.5)
    val = {record.prompt for record in read_records(out / "val.jsonl")}
    train = {record.prompt for record in read_records(out / "train.jsonl")}
    assert val and train and not val & train


def test_eval_set_becomes_val_and_overlap_is_rejected(tmp_path: Path) -> None:
    eval_set = write_lines(
        tmp_path / "eval.jsonl",
        [
            {"input": "eval q1", "output": "a1"},
            {"messages": [{"role": "user", "content": "eval q2"}, {"role": "assistant", "content": "a2"}]},
            "broken",
            {"input": "eval q1", "output": "a1"},  # eval is kept as is: no dedup
        ],
    )
    source = write_lines(
        tmp_path / "data.jsonl",
        [
            {"prompt": "eval q1 ", "completion": "a1"},
            {"input": "eval q2", "output": "a2", "system": "sys"},  # overlap ignores the system prompt
            {"input": "train q", "output": "t"},
            {"input": "eval q1", "output": "other answer"},
        ],
    )
    out = tmp_path / "out"
    result = curate(CurateConfig(inputs=[str(source)], output=str(out), eval_set=str(eval_set)))
    stats = assert_accounted(out, [source], eval_set=eval_set, result=result)
    assert (result.train_records, result.val_records, result.eval_records) == (2, 3, 4)
    assert stats["rejected"]["inputs"]["by_reason"] == {"eval_overlap": 2}
    assert stats["rejected"]["eval"]["by_reason"] == {"malformed_json": 1}
    assert stats["val_source"] == "eval_set" and "eval_records ==" in stats["identity"]
    rejects = read_jsonl(out / "rejects.jsonl")
    overlap = [reject for reject in rejects if reject["reason"] == "eval_overlap"]
    assert [reject["line"] for reject in overlap] == [1, 2]
    assert overlap[0]["detail"].endswith(f"{eval_set}:1")
    assert "of 4 eval-set records as val" in result.summary()
    assert "eval set lines" in (out / "report.html").read_text(encoding="utf-8")


def test_eval_set_all_rejected_is_a_curate_error(tmp_path: Path) -> None:
    eval_set = write_lines(tmp_path / "eval.jsonl", ["x", "y"])
    source = write_lines(tmp_path / "data.jsonl", [GOOD])
    with pytest.raises(CurateError, match=r"no eval records left after curation of .*eval\.jsonl: 2 lines"):
        curate(CurateConfig(inputs=[str(source)], output=str(tmp_path / "out"), eval_set=str(eval_set)))


# --- outputs and config ----------------------------------------------------------------


def test_manifest_lists_every_output_file(tmp_path: Path) -> None:
    result, out = run(tmp_path, [GOOD, "bad"], val_fraction=0.0)
    manifest = storage.require_complete(str(out))
    assert sorted(entry.path for entry in manifest.files) == sorted(OUTPUT_FILES)
    assert manifest.digest == result.dataset_sha256
    assert manifest.metadata["train_records"] == result.train_records
    for entry in manifest.files:
        assert storage.sha256_file(out / entry.path) == entry.sha256


def test_report_is_self_contained(tmp_path: Path) -> None:
    _, out = run(tmp_path, [GOOD, "bad", {"input": "q"}, {"prompt": "p", "completion": "c"}])
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "<link" not in page and "src=" not in page
    assert page.count("<svg") == 2
    assert "malformed_json" in page and "missing_field" in page
    assert len(page) < 20_000


def test_summary_names_counts_and_reasons(tmp_path: Path) -> None:
    result, _ = run(tmp_path, [GOOD, GOOD, "bad"], val_fraction=0.0)
    first_line = result.summary().splitlines()[0]
    assert first_line == "kept 1 of 3 records (train 1, val 0); rejected 2: duplicate=1, malformed_json=1"


def test_config_is_strict(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        CurateConfig(inputs=["a.jsonl"], output="out", shuffle=True)
    with pytest.raises(ValidationError):
        CurateConfig(inputs=[], output="out")
    with pytest.raises(ValidationError):
        CurateConfig(inputs=["a.jsonl"], output="out", val_fraction=1.0)
    with pytest.raises(ValidationError, match="more than once"):
        CurateConfig(inputs=["a.jsonl", "a.jsonl"], output="out")
    with pytest.raises(ValidationError, match="eval_overlap"):
        CurateConfig(inputs=["a.jsonl"], output="out", eval_set="a.jsonl")
    assert all(field.description for field in CurateConfig.model_fields.values())


def test_config_from_file(tmp_path: Path) -> None:
    path = tmp_path / "curate.yaml"
    path.write_text("inputs: [a.jsonl]\noutput: out\nval_fraction: 0.2\n")
    assert CurateConfig.from_file(path).val_fraction == 0.2
    path.write_text("inputs: [a.jsonl]\nbogus: 1\n")
    with pytest.raises(CurateError, match=r"invalid curate config .*curate\.yaml"):
        CurateConfig.from_file(path)
    with pytest.raises(CurateError, match="cannot read curate config"):
        CurateConfig.from_file(tmp_path / "missing.yaml")


def test_s3_input_and_output(s3_bucket) -> None:
    client, bucket = s3_bucket.client, s3_bucket.name
    body = "\n".join(json.dumps(line) for line in [GOOD, {"input": "q"}]) + "\n"
    client.put_object(Bucket=bucket, Key="raw/data.jsonl", Body=body.encode())
    source, output = s3_bucket.uri("raw/data.jsonl"), s3_bucket.uri("curated")
    result = curate(CurateConfig(inputs=[source], output=output, val_fraction=0.0))
    assert (result.train_records + result.val_records, result.rejected) == (1, 1)
    manifest = storage.require_complete(output)
    assert manifest.digest == result.dataset_sha256
    # A failed re-run into the same prefix removes the old manifest and leaves its rejects readable.
    client.put_object(Bucket=bucket, Key="raw/bad.jsonl", Body=b"nope\n")
    with pytest.raises(CurateError, match="all rejected"):
        curate(CurateConfig(inputs=[s3_bucket.uri("raw/bad.jsonl")], output=output))
    assert not storage.exists(storage.join(output, storage.MANIFEST_NAME))
    rejects = client.get_object(Bucket=bucket, Key="curated/rejects.jsonl")["Body"].read()
    assert json.loads(rejects)["reason"] == "malformed_json"
    with pytest.raises(CurateError, match=r"missing\.jsonl does not exist"):
        curate(CurateConfig(inputs=[s3_bucket.uri("raw/missing.jsonl")], output=s3_bucket.uri("x")))


# --- the shipped sample ----------------------------------------------------------------


def test_sample_dataset_curates(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = curate(CurateConfig(inputs=[str(SAMPLE_PATH)], output=str(out)))
    assert_accounted(out, [SAMPLE_PATH], result=result)
    assert result.train_records > 400 and result.val_records > 20
    total = physical_lines(SAMPLE_PATH)
    rejects = rejects_by_line(out)
    # The generator appends five deliberately bad lines.
    assert rejects[total - 4]["reason"] == "malformed_json"
    assert rejects[total - 3]["reason"] == "missing_field" and "'output'" in rejects[total - 3]["detail"]
    assert rejects[total - 2]["reason"] == "empty_response"
    assert rejects[total - 1]["reason"] == "unknown_format"
    assert rejects[total]["reason"] == "duplicate" and rejects[total]["detail"].endswith(":1")
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats["per_source"][str(SAMPLE_PATH)]["formats"]) == {
        "chat",
        "input_output",
        "prompt_completion",
    }
