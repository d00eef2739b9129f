"""Property tests of curate: nothing is lost without a reject line, and the output is deterministic.

Hypothesis draws small inputs spread over one to three files: records of the three formats
whose texts come from a tiny vocabulary (so exact duplicates, near duplicates and shared
passages are common), PII, low-quality responses and malformed lines. For each, curate
runs twice in the same file order and once in reverse order.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.curate.curate import CurateConfig, CurateError, CurateResult, curate
from components.records import read_records
from tests.components.test_curate import assert_accounted, read_jsonl, write_lines

WORDS = ["alpha", "beta", "gamma", "delta", "echo", "fox", "golf", "hotel", "india", "juliet", "kilo", "lima"]
OUTPUTS = ("train.jsonl", "val.jsonl", "rejects.jsonl")

text = st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join)
extra = st.sampled_from(["", "", " Mail ann@example.com.", " Call +1 (555) 123-4567.", " ...", "\n\n"])


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    prompt = draw(text)
    response = draw(text) + draw(extra)
    system = draw(st.sampled_from(["", "", "Be brief."]))
    shape = draw(st.sampled_from(["input_output", "prompt_completion", "chat"]))
    if shape == "input_output":
        record: dict[str, Any] = {"input": prompt, "output": response}
    elif shape == "prompt_completion":
        record = {"prompt": prompt, "completion": response}
    else:
        record = {
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        }
    if system:
        record["system"] = system
    return record


malformed = st.sampled_from(
    ["", "{broken", "[1, 2]", '{"input": "no output"}', '{"input": "q", "output": 4}', b"\xff\xfe bytes"]
)
lines = st.lists(st.one_of(records(), records(), records(), malformed), min_size=1, max_size=40)


def curate_files(directory: Path, files: list[Path]) -> tuple[CurateResult | str, dict[str, bytes]]:
    """Run curate; the result (or the CurateError message) and the output files' bytes."""
    out = directory / "out"
    try:
        outcome: CurateResult | str = curate(
            CurateConfig(inputs=[str(path) for path in files], output=str(out), val_fraction=0.3)
        )
    except CurateError as error:
        outcome = str(error).replace(str(out), "<out>")
    # Succeeded or not, every line is accounted for (a failed run keeps its outputs, unsigned).
    assert_accounted(out, files, result=outcome if isinstance(outcome, CurateResult) else None)
    return outcome, {name: (out / name).read_bytes() for name in OUTPUTS}


def original_lines(files: list[Path]) -> dict[tuple[str, int], str]:
    return {
        (str(path), number): raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
        for path in files
        for number, raw in enumerate(path.read_bytes().split(b"\n")[:-1], start=1)
    }


def kept_ids(files: dict[str, bytes], name: str) -> set[str]:
    return {json.loads(line)["id"] for line in files[name].decode().splitlines()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=lines, cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=2))
def test_every_line_is_kept_or_rejected_with_its_text_and_the_output_is_deterministic(
    lines: list[Any], cuts: list[int]
) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        bounds = sorted({0, len(lines), *(min(cut, len(lines)) for cut in cuts)})
        files = [
            write_lines(root / f"part{index}.jsonl", lines[start:end])
            for index, (start, end) in enumerate(itertools.pairwise(bounds))
            if end > start
        ]
        first, outputs = curate_files(root / "first", files)
        again, outputs_again = curate_files(root / "again", files)
        reverse, outputs_reverse = curate_files(root / "reverse", files[::-1])

        # Every rejected line has its source, line, stage, reason and original text.
        originals = original_lines(files)
        rejects = read_jsonl(root / "first" / "out" / "rejects.jsonl")
        for reject in rejects:
            assert reject["text"] == originals[(reject["source"], reject["line"])]
        kept = [*read_records(root / "first" / "out" / "train.jsonl")]
        kept += read_records(root / "first" / "out" / "val.jsonl")
        assert len(kept) + len(rejects) == len(originals)

        # The same input in the same order gives the same bytes and the same dataset digest.
        assert outputs == outputs_again
        if isinstance(first, CurateResult):
            assert isinstance(again, CurateResult)
            assert first.model_dump(exclude={"output"}) == again.model_dump(exclude={"output"})
        else:
            assert first == again
        # Another file order keeps the same records on the same sides for the same reasons.
        for name in ("train.jsonl", "val.jsonl"):
            assert kept_ids(outputs, name) == kept_ids(outputs_reverse, name)
        reasons = [json.loads(line)["reason"] for line in outputs["rejects.jsonl"].decode().splitlines()]
        reasons_reverse = [
            json.loads(line)["reason"] for line in outputs_reverse["rejects.jsonl"].decode().splitlines()
        ]
        assert sorted(reasons) == sorted(reasons_reverse)
        assert isinstance(first, str) == isinstance(reverse, str)
