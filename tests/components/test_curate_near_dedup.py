"""Tests of curate's near-dedup (MinHash LSH), val decontamination, worker processes and hashing."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from components import storage
from components.curate import pii
from components.curate.curate import CurateConfig, CurateResult, curate
from components.curate.decontaminate import NgramIndex, record_words
from components.curate.filters import QualitySettings
from components.curate.formats import ParsedRecord
from components.curate.minhash import MinHasher, band_keys, lsh_params, select_near_duplicates, shingle_hash32
from components.curate.ngrams import ngram_hashes, word_string, words
from components.curate.screen import ScreenPool, ScreenSettings, record_line
from components.records import Record, read_records
from tests.components.test_curate import assert_accounted, read_jsonl, rejects_by_line, write_lines

VOCABULARY = [f"w{index}" for index in range(3000)]


def prose(rng: random.Random, count: int) -> str:
    """`count` random words from a large vocabulary: two such texts share no 5-word run."""
    return " ".join(rng.choice(VOCABULARY) for _ in range(count))


def edit_one_word(text: str, rng: random.Random) -> str:
    tokens = text.split(" ")
    tokens[rng.randrange(len(tokens))] = "changed"
    return " ".join(tokens)


def run(tmp_path: Path, lines: list[Any], **options: Any) -> tuple[CurateResult, Path, dict[str, Any]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = write_lines(tmp_path / "data.jsonl", lines)
    out = tmp_path / "out"
    result = curate(CurateConfig(inputs=[str(source)], output=str(out), **options))
    return result, out, assert_accounted(out, [source], result=result)


def kept_ids(out: Path) -> tuple[set[str], set[str]]:
    train = {record.id for record in read_records(out / "train.jsonl")}
    return train, {record.id for record in read_records(out / "val.jsonl")}


# --- word n-gram hashing ---------------------------------------------------------------


def polynomial_hash(text: str) -> int:
    value = 0
    for byte in text.encode("utf-8"):
        value = (value * 0x9E3779B97F4A7C15 + byte) % 2**64
    return value


def test_word_string_matches_the_regex_definition_for_ascii_and_unicode() -> None:
    assert word_string("Hello, World!  It's_2024\n") == b"hello world it s 2024"
    assert (
        word_string("Caf\u00e9 \u4e2d\u6587 \u0663 na\u00efve-ish")
        == "caf\u00e9 \u4e2d\u6587 \u0663 na\u00efve ish".encode()
    )
    assert word_string("...") == b""
    assert words("The Quick, brown-fox's\tjump!") == ["the", "quick", "brown", "fox", "s", "jump"]


@pytest.mark.parametrize(("n", "whole"), [(1, False), (2, False), (3, True), (5, True)])
def test_ngram_hashes_are_the_polynomial_hash_of_each_run_of_words(n: int, whole: bool) -> None:
    texts = ["a b c d e f", "", "one", "x y", "\u00fcber caf\u00e9 na\u00efve words here and there"]
    hashes, offsets = ngram_hashes([word_string(text) for text in texts], n, whole_if_shorter=whole)
    for index, text in enumerate(texts):
        tokens = word_string(text).decode().split()
        expected = [polynomial_hash(" ".join(tokens[i : i + n])) for i in range(len(tokens) - n + 1)]
        if whole and 0 < len(tokens) < n:
            expected = [polynomial_hash(" ".join(tokens))]
        assert hashes[offsets[index] : offsets[index + 1]].tolist() == expected


# --- MinHash and LSH -------------------------------------------------------------------


def test_signatures_equal_datasketch_minhash_value_for_value() -> None:
    rng = random.Random(7)
    texts = [prose(rng, rng.choice([0, 1, 3, 40, 700])) for _ in range(60)]
    hashes, offsets = ngram_hashes([word_string(text) for text in texts], 5, whole_if_shorter=True)
    signatures = MinHasher(64).signatures(hashes, offsets)
    for index in range(len(texts)):
        reference = MinHash(num_perm=64, seed=1, hashfunc=int)
        reference.update_batch(shingle_hash32(hashes[offsets[index] : offsets[index + 1]]).tolist())
        assert signatures[index].tolist() == reference.hashvalues.tolist()


def test_lsh_parameters_are_datasketchs() -> None:
    lsh = MinHashLSH(threshold=0.8, num_perm=128, weights=(0.05, 0.95))
    assert lsh_params(0.8, 128) == (lsh.b, lsh.r) == (16, 8)


def signatures_of(texts: list[str], num_perm: int = 128) -> np.ndarray:
    hashes, offsets = ngram_hashes([word_string(text) for text in texts], 5, whole_if_shorter=True)
    return MinHasher(num_perm).signatures(hashes, offsets)


def test_selection_keeps_the_lowest_rank_of_a_group_whatever_the_order() -> None:
    rng = random.Random(3)
    base = prose(rng, 300)
    texts = [base, edit_one_word(base, rng), prose(rng, 300), edit_one_word(base, rng)]
    signatures = signatures_of(texts)
    keys = band_keys(signatures, 16, 8, np.zeros(len(texts), dtype=np.uint64))
    for ranks in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]):
        near = select_near_duplicates(keys, signatures, np.array(ranks), 0.8)
        group = [0, 1, 3]
        keeper = min(group, key=lambda index: ranks[index])
        assert near.kept_by.tolist() == [-1 if index in (keeper, 2) else keeper for index in range(4)]
        assert near.removed == 2 and all(near.similarity[index] >= 0.8 for index in group if index != keeper)


def test_selection_keeps_the_centre_of_a_group() -> None:
    # a~b and b~c but a is not similar to c: b, similar to both, is kept and both go.
    rng = random.Random(5)
    words_a = prose(rng, 100).split()
    words_b = words_a[10:] + prose(rng, 10).split()
    words_c = words_b[10:] + prose(rng, 10).split()
    texts = [" ".join(words_a), " ".join(words_b), " ".join(words_c)]
    signatures = signatures_of(texts, num_perm=256)
    keys = band_keys(signatures, 32, 8, np.zeros(3, dtype=np.uint64))
    for ranks in ([0, 1, 2], [2, 0, 1]):
        near = select_near_duplicates(keys, signatures, np.array(ranks), 0.75)
        assert near.kept_by.tolist() == [1, -1, 1]


def test_band_keys_carry_the_salt() -> None:
    signatures = signatures_of(["same words in both records here"] * 2)
    keys = band_keys(signatures, 16, 8, np.array([1, 2], dtype=np.uint64))
    assert not set(keys[0].tolist()) & set(keys[1].tolist())


# --- near-dedup in curate --------------------------------------------------------------


def test_near_duplicate_pair_is_removed_and_names_the_kept_record(tmp_path: Path) -> None:
    rng = random.Random(11)
    question, answer = prose(rng, 20), prose(rng, 200)
    lines = [
        {"input": question, "output": answer},
        {"prompt": question.upper(), "completion": edit_one_word(answer, rng) + "!"},  # near duplicate
        {"input": prose(rng, 20), "output": prose(rng, 200)},  # unrelated
        {"input": question, "output": answer, "system": "Be brief."},  # other system prompt: kept
    ]
    result, out, stats = run(tmp_path, lines, val_fraction=0.0)
    assert result.rejected_by_reason == {"near_duplicate": 1}
    train = {record.line: record for record in read_records(out / "train.jsonl")}
    (reject,) = read_jsonl(out / "rejects.jsonl")
    # Of the pair, the record with the smaller id is kept, wherever it sits in the input.
    kept_line = 3 - reject["line"]
    assert reject["line"] in (1, 2) and set(train) == {kept_line, 3, 4}
    assert train[kept_line].id < _id(lines[reject["line"] - 1])
    assert reject["stage"] == "near_dedup" and reject["kept_id"] == train[kept_line].id
    assert (
        f"of record {train[kept_line].id} kept from {tmp_path / 'data.jsonl'}:{kept_line}" in reject["detail"]
    )
    assert "estimated Jaccard similarity" in reject["detail"]
    assert reject["text"] == json.dumps(lines[reject["line"] - 1])
    assert stats["near_dedup"]["removed"] == 1 and stats["near_dedup"]["bands"] == 16
    assert stats["stages"]["near_dedup"] == 1


def _id(line: dict[str, str]) -> str:
    prompt = line.get("input", line.get("prompt", ""))
    response = line.get("output", line.get("completion", ""))
    return Record(**json.loads(record_line(ParsedRecord(prompt, response, "", "x"), "s", 1))).id


def test_near_dedup_settings(tmp_path: Path) -> None:
    rng = random.Random(13)
    answer = prose(rng, 150)
    tokens = answer.split(" ")
    tokens[75] = "changed"
    # The middle word of 151 changed: 5-word shingle sets share (147 - 5) / (147 + 5) = 0.93,
    # 30-word ones (122 - 30) / (122 + 30) = 0.6.
    lines = [{"input": "Write.", "output": answer}, {"input": "Write.", "output": " ".join(tokens)}]
    assert run(tmp_path / "a", lines, val_fraction=0.0)[0].rejected_by_reason == {"near_duplicate": 1}
    assert run(tmp_path / "b", lines, val_fraction=0.0, near_dedup=False)[0].rejected == 0
    assert run(tmp_path / "c", lines, val_fraction=0.0, near_dedup_threshold=0.99)[0].rejected == 0
    assert run(tmp_path / "d", lines, val_fraction=0.0, near_dedup_shingle=30)[0].rejected == 0


def test_short_records_are_near_duplicates_only_with_the_same_words(tmp_path: Path) -> None:
    lines = [
        {"input": "What is 2+2?", "output": "4"},
        {"input": "what is 2 + 2", "output": "4."},  # the same words: a near duplicate
        {"input": "What is 2+3?", "output": "5"},
        {"input": "...", "output": "!!!", "system": "no words"},
        {"input": "???", "output": "!!", "system": "no words"},
    ]
    result, _, _ = run(
        tmp_path, lines, val_fraction=0.0, reject_trivial_responses=False, max_symbol_ratio=1.0
    )
    # Records without a word have no shingle and are never near duplicates of each other.
    assert result.rejected_by_reason == {"near_duplicate": 1}


def test_near_dedup_result_does_not_depend_on_input_order(tmp_path: Path) -> None:
    rng = random.Random(17)
    bases = [{"input": prose(rng, 10), "output": prose(rng, 120)} for _ in range(30)]
    copies = [{"input": base["input"], "output": edit_one_word(base["output"], rng)} for base in bases[:15]]
    first = write_lines(tmp_path / "first.jsonl", bases[:20] + copies[10:])
    second = write_lines(tmp_path / "second.jsonl", copies[:10] + bases[20:])
    outcomes = []
    for name, inputs in (("ab", [first, second]), ("ba", [second, first])):
        out = tmp_path / name
        result = curate(
            CurateConfig(inputs=[str(path) for path in inputs], output=str(out), val_fraction=0.3)
        )
        assert_accounted(out, inputs, result=result)
        outcomes.append((kept_ids(out), result.rejected_by_reason))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][1] == {"near_duplicate": 15}


# --- decontamination against the hash split's val records -----------------------------


def carriers_and_others(rng: random.Random, passage: str, filler: int, count: int) -> list[dict[str, str]]:
    """`count` records whose response holds `passage` between `filler` random words on each side,
    then `count` unrelated records (prompts "other N")."""
    lines = [
        {"input": f"q{index}", "output": f"{prose(rng, filler)} {passage} {prose(rng, filler)}"}
        for index in range(count)
    ]
    return lines + [{"input": f"other {index}", "output": prose(rng, 40)} for index in range(count)]


def test_train_records_sharing_a_passage_with_val_are_dropped(tmp_path: Path) -> None:
    rng = random.Random(19)
    passage = prose(rng, 13)
    # 24 carriers: the split puts at most 20 in train, so the passage is not boilerplate
    # (test_curate_boilerplate.py covers passages held by more).
    lines = carriers_and_others(rng, passage, filler=30, count=24)
    _, out, stats = run(tmp_path, lines, val_fraction=0.3)
    train, val = list(read_records(out / "train.jsonl")), list(read_records(out / "val.jsonl"))
    holders = [record for record in train + val if passage in record.response]
    # Every carrier of the passage that the split put in train is gone; val keeps its own.
    assert holders and all(record in val for record in holders)
    rejects = read_jsonl(out / "rejects.jsonl")
    assert {reject["reason"] for reject in rejects} == {"val_contaminated"}
    assert 0 < len(rejects) == 24 - len(holders) <= 20
    assert all(reject["stage"] == "decontamination" for reject in rejects)
    val_ids = {record.id for record in val}
    assert all(reject["detail"].split("with val record ")[1][:16] in val_ids for reject in rejects)
    assert f"shares the 13-word sequence {passage!r}" in rejects[0]["detail"]
    assert stats["decontamination"]["held_out"] == "val"
    # Unrelated records all survive, on both sides.
    assert sum(1 for record in train + val if record.prompt.startswith("other")) == 24


def test_val_decontamination_settings(tmp_path: Path) -> None:
    rng = random.Random(23)
    passage = prose(rng, 12)
    lines = carriers_and_others(rng, passage, filler=20, count=24)  # at most 20 in train: not boilerplate
    # 12 shared words: not contaminated at n=13, contaminated at n=12.
    assert run(tmp_path / "a", lines, val_fraction=0.3)[0].rejected == 0
    result, _, _ = run(tmp_path / "b", lines, val_fraction=0.3, decontamination_ngram=12)
    val = read_records(tmp_path / "b" / "out" / "val.jsonl")
    carriers_in_val = sum(1 for record in val if passage in record.response)
    assert 0 < 24 - carriers_in_val <= 20
    assert result.rejected_by_reason == {"val_contaminated": 24 - carriers_in_val}
    assert run(tmp_path / "c", lines, val_fraction=0.0, decontamination_ngram=12)[0].rejected == 0


def test_ngram_index_names_the_first_record_with_the_passage() -> None:
    index = NgramIndex(3)
    index.add(
        [record_words("a b c d", "e"), record_words("x y z", ""), record_words("c d e", "")], ["A", "B", "C"]
    )
    found = index.match(
        [record_words("q C, D e f", ""), b"nothing here at all", record_words("X. Y, z!", "w")]
    )
    assert found == [("c d e", "A"), None, ("x y z", "B")]
    assert len(index) == 4


# --- worker processes ------------------------------------------------------------------


def test_worker_processes_give_the_same_output(tmp_path: Path) -> None:
    rng = random.Random(29)
    lines: list[Any] = []
    for index in range(1500):
        answer = prose(rng, rng.choice([3, 30, 200]))
        lines.append({"input": f"Question {index % 1200}", "output": answer})
        if index % 10 == 0:
            lines.append({"prompt": f"Question {index % 1200}", "completion": edit_one_word(answer, rng)})
        if index % 97 == 0:
            lines += ["{broken", {"input": "Mail me", "output": f"at user{index}@example.com"}]
    source = write_lines(tmp_path / "data.jsonl", lines)
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        result = curate(CurateConfig(inputs=[str(source)], output=str(out), workers=workers))
        assert_accounted(out, [source], result=result)
        names = ("train.jsonl", "val.jsonl", "rejects.jsonl", "stats.json")
        outputs.append({name: (out / name).read_bytes() for name in names} | {"sha": result.dataset_sha256})
        assert result.rejected_by_reason["near_duplicate"] > 30
    assert outputs[0] == outputs[1]


def test_workers_read_blocks_of_plain_files_themselves_with_the_same_output(tmp_path, monkeypatch) -> None:
    """Small blocks, so each file is many LineRanges: a BOM, a last line without its newline, a
    gzip file (its blocks still go through the pipe), rejects and duplicates across blocks."""
    import gzip

    from components.curate import curate as curate_module

    monkeypatch.setattr(curate_module, "_BLOCK_BYTES", 2048)
    rng = random.Random(31)
    lines: list[Any] = []
    for index in range(400):
        lines.append({"input": f"Question {index % 350}", "output": prose(rng, rng.choice([3, 30]))})
        if index % 41 == 0:
            lines.append("{broken")
    plain = write_lines(tmp_path / "plain.jsonl", lines)
    plain.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().rstrip(b"\n"))
    packed = tmp_path / "packed.jsonl.gz"
    packed.write_bytes(gzip.compress(write_lines(tmp_path / "other.jsonl", lines[::-1]).read_bytes()))
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        result = curate(CurateConfig(inputs=[str(plain), str(packed)], output=str(out), workers=workers))
        assert_accounted(out, [plain, packed], result=result)
        outputs.append(
            {name: (out / name).read_bytes() for name in ("train.jsonl", "val.jsonl", "rejects.jsonl")}
        )
    assert outputs[0] == outputs[1]
    assert result.input_records == 2 * len(lines)
    assert (
        result.rejected_by_reason["malformed_json"] == 2 * 10 and result.rejected_by_reason["duplicate"] > 0
    )
    first_lines = [
        r for r in read_jsonl(out / "rejects.jsonl") if r["source"] == str(plain) and r["line"] == 1
    ]
    assert first_lines == []  # the line behind the byte order mark parsed


def test_the_manifest_vouches_for_the_record_files_hashed_while_written(tmp_path, monkeypatch) -> None:
    from components.curate import curate as curate_module

    monkeypatch.setattr(curate_module, "_WRITE_BATCH", 7)  # many writes per file
    rng = random.Random(5)
    lines = [{"input": f"Q{index}", "output": prose(rng, 12)} for index in range(300)]
    for options in ({}, {"near_dedup": False, "decontamination_ngram": 0}):
        result, out, _ = run(tmp_path / str(len(options)), lines, **options)
        manifest = storage.require_complete(str(out))
        assert manifest.digest == result.dataset_sha256
        for entry in manifest.files:
            assert entry.sha256 == storage.sha256_file(out / entry.path), entry.path


def test_the_pool_hands_records_back_through_files_it_then_removes(tmp_path) -> None:
    rng = random.Random(9)
    lines = [json.dumps({"input": f"Q{index}", "output": prose(rng, 8)}).encode() for index in range(90)]
    settings = ScreenSettings(1, 20_000, 20_000, QualitySettings(), "redact", 0.1, True, None, None)
    blocks = [
        ("a.jsonl", (1, lines[:40], None)),
        ("a.jsonl", (41, lines[40:], None)),
        ("b.jsonl", (1, lines, None)),
    ]
    outcomes = {}
    for workers in (1, 2):
        spool = tmp_path / f"spool{workers}"
        spool.mkdir()
        with ScreenPool(workers, settings, None, spool) as pool:
            outcomes[workers] = [(uri, block[0], chunk.records) for uri, block, chunk in pool.map(blocks)]
        assert list(spool.iterdir()) == []
    assert outcomes[1] == outcomes[2]
    assert [len(records) for _, _, records in outcomes[2]] == [40, 50, 90]


def test_a_block_of_a_file_that_shrank_meanwhile_is_an_error(tmp_path) -> None:
    from components.curate.screen import LineRange

    source = tmp_path / "data.jsonl"
    source.write_bytes(b'{"input": "a", "output": "b"}\n' * 4)
    block = LineRange(str(source), 0, source.stat().st_size)
    assert block.lines() == [b'{"input": "a", "output": "b"}'] * 4
    source.write_bytes(b"{}\n")
    with pytest.raises(RuntimeError, match="changed while curate read it"):
        block.lines()


def test_a_full_disk_under_the_workers_is_a_clear_error_and_nothing_looks_complete(
    tmp_path, monkeypatch
) -> None:
    import errno

    from components.curate.curate import CurateError

    rng = random.Random(3)
    source = write_lines(
        tmp_path / "data.jsonl", [{"input": f"Q{i}", "output": prose(rng, 9)} for i in range(50)]
    )

    def no_room(path: Path, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(Path, "write_bytes", no_room)  # the workers' record files; forked after this
    out = tmp_path / "out"
    with pytest.raises(CurateError, match=r"ran out of disk space .*point TMPDIR at a local directory"):
        curate(CurateConfig(inputs=[str(source)], output=str(out), workers=2))
    assert not (out / storage.MANIFEST_NAME).exists()


# --- record lines and PII prefilters ---------------------------------------------------


def test_record_line_is_what_record_to_json_writes() -> None:
    parsed = ParsedRecord('Say "hi"\n\u00e9', "r\u4e2d", "s", "chat")
    line = record_line(parsed, "s3://b/k.jsonl", 7)
    record = Record(**json.loads(line))
    assert line == record.to_json() and record.line == 7 and len(record.id) == 16


def test_pii_shortcuts_never_change_the_result() -> None:
    # redact() skips a type's pattern when a cheap test says it cannot match; compare with
    # applying every pattern to texts made of PII, prose numbers and near misses.
    rng = random.Random(31)
    pieces = [
        "jane@example.com", "+1 (555) 123-4567", "030 1234567", "10.0.0.1", "2001:db8::1:2:3",
        "4111 1111 1111 1111", "123-45-6789", "AKIAIOSFODNN7EXAMPLE", "ghp_" + "a1B2" * 9,
        "github_pat_11ABCDEFG0123456789_abcdefghij", "xoxb-1234567890-abc", "sk-abc123DEF456ghi789JKL",
        "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q", "secret = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "v1.2.3", "2024-05-01", "$1,299.99", "12:30:45", "::", "gh", "sk", "\u0663\u0664\u0665", "caf\u00e9",
        "word", ":", "-", "_", ".", "@",
    ]  # fmt: skip
    for _ in range(3000):
        text = " ".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
        everything: Counter[str] = Counter()
        expected = text
        for pii_type in pii.PII_TYPES:
            expected = pii._substitute(expected, pii_type, everything)
        assert pii.redact(text) == (expected, everything), text


# --- S3 ----------------------------------------------------------------------------------


def test_s3_input_and_output_with_near_dedup_and_val_decontamination(s3_bucket) -> None:
    rng = random.Random(37)
    answer = prose(rng, 100)
    lines = [
        {"input": "Tell me.", "output": answer},
        {"input": "Tell me!", "output": edit_one_word(answer, rng)},
    ]
    lines += [{"input": f"q{index}", "output": prose(rng, 30)} for index in range(20)]
    body = "".join(json.dumps(line) + "\n" for line in lines)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="raw/data.jsonl", Body=body.encode())
    output = s3_bucket.uri("curated")
    result = curate(CurateConfig(inputs=[s3_bucket.uri("raw/data.jsonl")], output=output, val_fraction=0.2))
    assert result.rejected_by_reason == {"near_duplicate": 1}
    assert storage.require_complete(output).digest == result.dataset_sha256
    rejects = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="curated/rejects.jsonl")["Body"].read()
    assert json.loads(rejects)["stage"] == "near_dedup"


def test_rejects_keep_line_numbers_in_every_stage(tmp_path: Path) -> None:
    rng = random.Random(41)
    answer = prose(rng, 80)
    lines = [
        {"input": "a", "output": answer},
        "{bad",
        {"input": "b", "output": "..."},
        {"input": "a", "output": answer},
        {"input": "a!", "output": edit_one_word(answer, rng)},
    ]
    _, out, _ = run(tmp_path, lines, val_fraction=0.0)
    stages = {line: reject["stage"] for line, reject in rejects_by_line(out).items()}
    # Of lines 1 and 5 (near duplicates), the one with the smaller id stays.
    near = 1 if 1 in stages else 5
    assert stages == {2: "parse", 3: "quality", 4: "dedup", near: "near_dedup"}
