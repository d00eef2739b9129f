"""The shortcuts curate takes on its hot path give exactly what the general rules give.

Each fast path (plain-ASCII normalization, key tests for the format, one encoding for both
digests, the letter-or-digit regex, the column-building chunk loop, JSON escaping of
normalized text) is compared with the general rule it replaces, on mixed and malformed inputs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.curate import filters, formats, screen
from components.curate.filters import QualitySettings
from components.curate.formats import ParsedRecord, Rejection

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]+")


def general_normalize(text: str) -> str:
    """README's normalization rule, written without shortcuts."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return unicodedata.normalize("NFC", _CONTROL.sub(" ", text)).strip()


# Characters that exercise every branch: printable ASCII, whitespace and controls, \r, Unicode
# spaces, combining marks (NFC), C1 controls.
_ALPHABET = [
    *"ab Z09.,_-",
    *("\t", "\n", "\r", "\x00", "\x0b", "\x1c", "\x1f", "\x7f"),
    *("\x85", "\xa0", "\u2003", "e", "\u0301", "\u00e9", "\u4e2d", "\U0001f600"),
]
tricky = st.text(alphabet=st.sampled_from(_ALPHABET), max_size=30)


@settings(max_examples=400, deadline=None)
@given(tricky)
def test_normalize_text_matches_the_general_rule(text: str) -> None:
    assert formats.normalize_text(text) == general_normalize(text)


@pytest.mark.parametrize(
    "text", ["", " ", "plain", "  padded  ", "tab\tinside", "a\nb", "\r\n x \r", "\x7f~"]
)
def test_normalize_text_ascii_cases(text: str) -> None:
    assert formats.normalize_text(text) == general_normalize(text)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from([*_ALPHABET, '"', "\\", "/", "\b", "\f", "\u2028"]), max_size=40))
def test_escaping_normalized_text_is_what_json_writes(text: str) -> None:
    normalized = formats.normalize_text(text)
    assert f'"{screen.escape_normalized(normalized)}"' == json.dumps(normalized, ensure_ascii=False)


KEYS = ("input", "output", "prompt", "completion", "messages", "instruction", "system", "other")


def _outcome(call, obj):  # type: ignore[no-untyped-def]
    try:
        return call(obj)
    except Rejection as rejection:
        return (rejection.reason, rejection.detail)


@pytest.mark.parametrize("size", range(len(KEYS) + 1))
def test_detect_format_matches_the_general_rule_for_every_key_set(size: int) -> None:
    for keys in itertools.combinations(KEYS, size):
        obj = dict.fromkeys(keys, "x")
        assert _outcome(formats.detect_format, obj) == _outcome(formats._format_problem, obj), keys


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20), st.text(max_size=20), st.text(max_size=20))
def test_digests_equal_the_separate_digests(system: str, prompt: str, response: str) -> None:
    # Normalized text never holds NUL or a lone surrogate; build such records.
    def clean(text: str) -> str:
        return text.replace("\x00", "").encode("utf-8", "ignore").decode("utf-8")

    record = ParsedRecord(clean(prompt), clean(response), clean(system), "chat")
    identity, content = formats.digests(record)
    assert identity == formats.identity_digest(record)
    assert content == formats.content_digest(record)
    assert (
        identity
        == hashlib.sha256("\x00".join([record.system, record.prompt, record.response]).encode()).digest()
    )


def test_alnum_regex_is_str_isalnum_for_every_code_point() -> None:
    wrong = [
        hex(point)
        for point in range(sys.maxunicode + 1)
        if not 0xD800 <= point <= 0xDFFF
        and (filters._ALNUM.match(chr(point)) is not None) != chr(point).isalnum()
    ]
    assert wrong == []


@pytest.mark.parametrize(
    "response", ["", "...", "?!", "(B)", "_", "__init__", "\u00e9", "\u2160", "\u0660", " - ", "a", "_ _ 1"]
)
def test_trivial_response_is_judged_as_before(response: str) -> None:
    assert (filters._ALNUM.search(response) is None) == (not any(char.isalnum() for char in response))


MIXED_LINES = [
    b'{"input": "Q one", "output": "A one"}',
    b'{"prompt": "  Q\\r\\ntwo  ", "completion": "A\\ttwo\\u0007"}',
    b'{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},'
    b' {"role": "assistant", "content": "A \\u00e9\\u0301"}]}',
    b"",
    b"   ",
    b"\xff\xfe not utf-8",
    b'{"input": "Q", "output": ',
    b"[1, 2]",
    b'{"input": "Q", "prompt": "P", "output": "A"}',
    b'{"instruction": "I", "input": "Q", "output": "A"}',
    b'{"input": "Q"}',
    b'{"input": "Q", "output": 3}',
    b'{"input": "Q", "output": "\\ud800"}',
    b'{"input": "Q", "output": "..."}',
    b'{"input": "same", "output": "same"}',
    b'{"input": "Q", "output": "' + b"line\\n" * 8 + b'"}',
    b'{"input": "Q", "output": "' + b"a b c " * 12 + b'"}',
    b'{"input": "Q", "output": "%%%%%%%%%%%% x"}',
    b'{"input": "Q one", "output": "A one", "system": null}',
    b'{"input": "Q one", "output": "A one", "system": "Be brief."}',
]


def test_screen_chunk_columns_match_screen_record_by_record() -> None:
    chosen = screen.ScreenSettings(
        min_response_chars=1,
        max_prompt_chars=20000,
        max_response_chars=20000,
        quality=QualitySettings(),
        pii="off",
        val_fraction=0.5,
        words=True,
        eval_set=None,
        sketch=None,
    )
    chunk = screen.screen_chunk(("in.jsonl", 7, list(MIXED_LINES)), chosen, None, None)
    results = [screen.screen("in.jsonl", 7 + i, line, chosen, None) for i, line in enumerate(MIXED_LINES)]
    kept = [result for result in results if isinstance(result, screen.Screened)]
    assert chunk.refused == [result for result in results if isinstance(result, screen.Refused)]
    assert chunk.lines == [result.line for result in kept]
    assert chunk.records == [result.record for result in kept]
    assert chunk.digests == [result.digest for result in kept]
    assert chunk.to_val == bytes(result.to_val for result in kept)
    assert chunk.formats == bytes(formats.FORMATS.index(result.format) for result in kept)
    assert chunk.prompt_chars == [result.prompt_chars for result in kept]
    assert chunk.words == [result.words for result in kept]
    assert chunk.found == {}
    for result in kept:
        record = json.loads(result.record)
        assert record["id"] == result.digest.hex()[:16]
    reasons = {result.line - 7: result.reason for result in results if isinstance(result, screen.Refused)}
    assert reasons == {
        3: "blank_line",
        4: "blank_line",
        5: "invalid_utf8",
        6: "malformed_json",
        7: "not_an_object",
        8: "unknown_format",
        9: "unknown_format",
        10: "missing_field",
        11: "wrong_type",
        12: "invalid_utf8",
        13: "trivial_response",
        14: "copies_prompt",
        15: "repeated_lines",
        16: "repeated_ngrams",
        17: "too_many_symbols",
    }


def _general_json(text: str) -> object:
    """parse_json_object's general path: the decoder's full decode, then the object check."""
    try:
        value = formats._JSON.decode(text)
    except json.JSONDecodeError as error:
        return ("malformed_json", f"{error.msg} (column {error.colno})")
    except Rejection as rejection:  # the decoder's duplicate-key hook
        return (rejection.reason, rejection.detail)
    except RecursionError:
        too_deep = formats._too_deep()
        return (too_deep.reason, too_deep.detail)
    if not isinstance(value, dict):
        return ("not_an_object", formats.json_type(value))
    return value


@pytest.mark.parametrize(
    "text",
    [
        '{"input": "Q", "output": "A"}',
        "{}",
        ' {"a": 1}',
        '{"a": 1} ',
        '{"a": 1}{"b": 2}',
        '{"a": 1}}',
        '{"a": "}',
        '{"a": 1, }',
        '{"a": [1, 2}',
        '{"a": NaN}',
        '{"a": "raw\ttab\nnewline"}',
        '{"a": "\\ud800"}',
        '{"a": 1, "a": 2}',
        '{"a": {"b": 1, "b": 1}}',
        '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "{",
        "}",
        '{"a": {"b": {"c": []}}}',
        "[1]",
    ],
)
def test_json_fast_path_matches_the_decoder(text: str) -> None:
    try:
        fast: object = formats.parse_json_object(text)
    except Rejection as rejection:
        fast = (rejection.reason, rejection.detail)
    general = _general_json(text)
    if isinstance(general, tuple) and general[0] == "not_an_object":
        assert isinstance(fast, tuple) and fast[0] == "not_an_object"
    else:
        assert fast == general
