"""Tests of decontamination on templated data: boilerplate is not contamination, leaks still are.

The generator writes data as teams have it: a few prompt templates of 20-30 words around
each record's own text, system prompts shared by many chat records, answers of long-tailed
length that often open with the same phrase, and the three record formats mixed. Each
record's own text is random words from a large vocabulary, so two records share no
13-word run unless a template (or a planted leak) puts it there.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from components.curate.curate import CurateConfig, CurateError, CurateResult, curate
from components.curate.decontaminate import NgramIndex, record_words
from tests.components.test_curate import assert_accounted, read_jsonl, write_lines

VOCABULARY = [f"w{index}" for index in range(5000)]

# (before the record's text, after it): 20-30 words of template in all.
TEMPLATES = [
    (
        "Read the following customer review and classify its sentiment as positive, negative or "
        "neutral. Answer with one word only and do not explain your answer. Review:",
        "",
    ),
    (
        "You are given a support ticket written by one of our customers. Summarize the ticket in "
        "two sentences for the on-call engineer. Ticket:",
        "Keep the summary short and factual.",
    ),
    (
        "Translate the text below from our internal style into plain English that a new employee "
        "would understand on the first day.",
        "Do not add information that is not in the text.",
    ),
    (
        "Answer the question using only the context paragraph that follows. If the context does "
        "not contain the answer, say that you do not know. Context:",
        "",
    ),
]
SYSTEM_PROMPTS = [
    "You are a helpful assistant for Example Corp. Always answer politely, truthfully and concisely, "
    "and never reveal internal information about customers or employees.",
    "You are a careful analyst. Think about the question, then give a short answer without any "
    "preamble and without repeating the question back to the user.",
]
ANSWER_OPENINGS = ["", "", "Sure, here is the answer you asked for based on the text provided above:"]


def text(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(count))


def answer(rng: random.Random) -> str:
    """Long-tailed length: mostly a few words to a few dozen, now and then hundreds."""
    words = max(1, min(600, int(rng.lognormvariate(3.0, 1.0))))
    return f"{rng.choice(ANSWER_OPENINGS)} {text(rng, words)}".strip()


def templated(rng: random.Random, body: str, response: str) -> dict[str, Any]:
    """One record in one of the three formats, its prompt built from a template."""
    before, after = rng.choice(TEMPLATES)
    prompt = f"{before} {body} {after}".strip()
    kind = rng.randrange(3)
    if kind == 0:
        messages = [
            {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)},
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": response},
        ]
        return {"messages": messages}
    if kind == 1:
        return {"prompt": prompt, "completion": response}
    return {"input": prompt, "output": response}


def team_data(rng: random.Random, count: int) -> list[dict[str, Any]]:
    return [templated(rng, text(rng, rng.randint(15, 120)), answer(rng)) for _ in range(count)]


def paraphrase(words: str, rng: random.Random) -> str:
    """A light rewording: every 14th word replaced, the rest kept in runs of 13 words."""
    tokens = words.split(" ")
    for position in range(13, len(tokens), 14):
        tokens[position] = rng.choice(["a", "the", "some", "this"])
    return " ".join(tokens).capitalize() + "."


def curated(tmp_path: Path, lines: list[Any], eval_lines: list[Any] | None = None, **options: Any):
    tmp_path.mkdir(parents=True, exist_ok=True)
    source = write_lines(tmp_path / "data.jsonl", lines)
    eval_set = write_lines(tmp_path / "eval.jsonl", eval_lines) if eval_lines is not None else None
    out = tmp_path / "out"
    config = CurateConfig(
        inputs=[str(source)], output=str(out), eval_set=str(eval_set) if eval_set else None, **options
    )
    result = curate(config)
    stats = assert_accounted(out, [source], eval_set=eval_set, result=result)
    return result, out, stats


def kept_share(result: CurateResult, distinct: int) -> float:
    return (result.train_records + (0 if result.eval_records else result.val_records)) / distinct


def test_templated_data_keeps_its_records_against_its_own_val_split(tmp_path: Path) -> None:
    lines = team_data(random.Random(7), 3000)
    result, _, stats = curated(tmp_path / "rule", lines)
    assert kept_share(result, len(lines)) >= 0.99, result.rejected_by_reason
    decontamination = stats["decontamination"]
    assert decontamination["held_out"] == "val"
    assert decontamination["boilerplate_ngrams"] > 0
    assert decontamination["boilerplate_limit"] == 20
    # Without the rule (no share of 3,000 records is more than all of them), the templates
    # make every training record "share a passage" with val, and the run fails: the issue.
    with pytest.raises(CurateError, match=r"rejected \(val_contaminated="):
        curated(tmp_path / "no_rule", lines, decontamination_boilerplate_fraction=1.0)


def test_templated_data_keeps_its_records_and_loses_planted_eval_leaks(tmp_path: Path) -> None:
    rng = random.Random(11)
    lines = team_data(rng, 3000)
    eval_bodies = [(text(rng, rng.randint(40, 90)), text(rng, rng.randint(20, 60))) for _ in range(200)]
    eval_lines = [templated(rng, body, response) for body, response in eval_bodies]
    planted: dict[str, list[dict[str, Any]]] = {
        # The eval record itself, in another format or with another system prompt.
        "copy": [templated(rng, body, response) for body, response in eval_bodies[:10]],
        # Its text reworded (one word in ten) under another template, and another answer.
        "paraphrase": [templated(rng, paraphrase(body, rng), answer(rng)) for body, _ in eval_bodies[10:20]],
        # Its answer copied into a record about something else.
        "answer": [
            templated(rng, text(rng, 30), f"In short: {response.upper()}!")
            for _, response in eval_bodies[20:30]
        ],
    }
    planted_lines = [line for group in planted.values() for line in group]
    spots = sorted(rng.sample(range(len(lines) + len(planted_lines)), len(planted_lines)))
    mixed = list(lines)
    for spot, line in zip(spots, planted_lines, strict=True):
        mixed.insert(spot, line)

    result, out, stats = curated(tmp_path, mixed, eval_lines)
    rejects = read_jsonl(out / "rejects.jsonl")
    caught = {reject["line"] for reject in rejects if reject["stage"] == "decontamination"}
    assert caught == {spot + 1 for spot in spots}, "planted leaks caught, and nothing else"
    reasons = {reject["reason"] for reject in rejects if reject["line"] in caught}
    assert reasons <= {"contaminated", "eval_overlap"}
    assert result.train_records >= 0.99 * len(lines)
    assert stats["decontamination"]["held_out"] == "eval_set"
    assert stats["decontamination"]["boilerplate_ngrams"] > 0
    # A contaminated record is named by a passage of the eval record's own text, not the template.
    for reject in rejects:
        if reject["reason"] == "contaminated":
            shared = reject["detail"].split("word sequence ")[1].split("' with eval")[0]
            assert any(word.startswith("w") for word in shared.split())


def test_a_passage_in_more_training_records_than_the_limit_is_boilerplate(tmp_path: Path) -> None:
    rng = random.Random(5)
    notice = "this message and any attachments are confidential and intended only for the named recipient"
    eval_lines = [{"input": f"Summarize: {text(rng, 40)} {notice}", "output": text(rng, 10)}]
    carriers = [{"input": f"Summarize: {text(rng, 40)} {notice}", "output": text(rng, 10)} for _ in range(21)]
    clean = [{"input": f"Summarize: {text(rng, 40)}", "output": text(rng, 10)}]
    # 21 distinct training records hold the notice: more than 20, so it is boilerplate.
    result, _, _ = curated(tmp_path / "a", carriers + clean, eval_lines, near_dedup=False)
    assert result.rejected == 0
    # Twenty do not make it boilerplate: every one is contaminated.
    result, _, _ = curated(tmp_path / "b", carriers[:20] + clean, eval_lines, near_dedup=False)
    assert result.rejected_by_reason == {"contaminated": 20}
    # The limit is configurable, in records and as a share of the training records.
    result, _, _ = curated(
        tmp_path / "c", carriers + clean, eval_lines, decontamination_boilerplate_records=21
    )
    assert result.rejected_by_reason == {"contaminated": 21}
    result, _, stats = curated(
        tmp_path / "d", carriers + clean, eval_lines, decontamination_boilerplate_fraction=1.0
    )
    assert result.rejected_by_reason == {"contaminated": 21}
    assert stats["decontamination"]["boilerplate_limit"] == 22  # all 22 training records
    # Exact copies count once: the same record 30 times is one holder (and 29 duplicates).
    result, _, _ = curated(tmp_path / "e", [carriers[0]] * 30 + clean, eval_lines)
    assert result.rejected_by_reason == {"contaminated": 1, "duplicate": 29}


def test_boilerplate_limit_validation() -> None:
    config = CurateConfig(inputs=["a.jsonl"], output="out")
    assert (config.decontamination_boilerplate_records, config.decontamination_boilerplate_fraction) == (
        20,
        0.0001,
    )
    assert config.boilerplate_limit(1_000) == 20
    assert config.boilerplate_limit(1_000_000) == pytest.approx(100)
    for field, value in (
        ("decontamination_boilerplate_records", 0),
        ("decontamination_boilerplate_fraction", -0.1),
        ("decontamination_boilerplate_fraction", 1.5),
    ):
        with pytest.raises(ValidationError, match=field):
            CurateConfig(inputs=["a.jsonl"], output="out", **{field: value})


def test_ngram_index_counts_distinct_holders_and_drops_common_ngrams() -> None:
    index = NgramIndex(3)
    index.add([b"a b c d", b"x y z", b"k b c d"], ["first", "second", "third"])
    holding = index.count_holders([b"a b c a b c", b"q a b c", b"none here at all"])
    assert holding.tolist() == [True, True, False]
    assert index.count_holders([b"x y z", b"b c d"]).tolist() == [True, True]
    # "a b c" is held by 2 records (the first holds it twice), "b c d" and "x y z" by 1.
    # "b c d" shares words with "a b c" in the first record but not in the third: it stays.
    assert index.drop_common(1) == 1
    assert len(index) == 3
    assert index.match([b"p a b c q", b"b c d", b"x y z w"]) == [
        None,
        ("b c d", "first"),
        ("x y z", "second"),
    ]
    with pytest.raises(RuntimeError, match="after drop_common"):
        index.add([b"m n o"], ["fourth"])


def test_ngrams_next_to_boilerplate_are_boilerplate() -> None:
    index = NgramIndex(3)
    # A 4-word template, then each record's own words.
    index.add([b"t1 t2 t3 t4 own1 own2 own3 own4"], ["held out"])
    index.count_holders([f"t1 t2 t3 t4 x{number} y{number}".encode() for number in range(5)])
    # "t1 t2 t3" and "t2 t3 t4" are common; "t3 t4 own1" and "t4 own1 own2" share words with them.
    assert index.drop_common(4) == 4
    assert index.match([b"t3 t4 own1", b"t4 own1 own2", b"own1 own2 own3", b"own2 own3 own4"]) == [
        None,
        None,
        ("own1 own2 own3", "held out"),
        ("own2 own3 own4", "held out"),
    ]


def test_counting_in_one_batch_or_many_gives_the_same_holders() -> None:
    """One count over many records gives the same holders as counting them one by one."""
    rng = random.Random(3)
    held = [record_words(text(rng, 20), text(rng, 20)) for _ in range(50)]
    training = [rng.choice(held) + b" " + record_words(text(rng, 5), "") for _ in range(300)]
    together, apart = NgramIndex(13), NgramIndex(13)
    for index in (together, apart):
        index.add(held, [f"h{number}" for number in range(len(held))])
    together.count_holders(training)
    for record in training:
        apart.count_holders([record])
    assert np.array_equal(together._holders, apart._holders)
