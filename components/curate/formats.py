"""Parse the record formats curate accepts and normalize them to one canonical shape.

Accepted formats (one JSON object per line; an optional "system" string in all of them):
- `{"input": ..., "output": ...}`
- `{"prompt": ..., "completion": ...}`
- chat: `{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`

Every function here is pure: it takes a line (or a decoded object) and returns a
`ParsedRecord` or raises `Rejection` with a stable snake_case reason and a sentence a
person can act on. File handling, counting and writing live in `curate.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import unicodedata
from dataclasses import dataclass
from typing import Any

# Stable reject reason names (they appear in rejects.jsonl, stats.json and dashboards), in the
# order a line meets the checks; the report's funnel uses this order.
REJECT_REASONS: dict[str, str] = {
    "blank_line": "the line is empty or whitespace only",
    "invalid_utf8": "the line is not valid UTF-8 (or a string holds an unpaired surrogate escape)",
    "malformed_json": "the line is not valid JSON",
    "too_deep": "objects or arrays are nested deeper than the JSON parser allows (about 1,000 levels)",
    "duplicate_key": "an object holds the same key twice (which value is meant is unknowable)",
    "not_an_object": "the JSON value is not an object",
    "unknown_format": "the object's keys match none (or more than one) of the accepted formats",
    "missing_field": "a field the format requires is absent",
    "wrong_type": "a field has the wrong JSON type (e.g. a number where a string belongs)",
    "bad_chat": "a chat's roles are out of order, unknown, or a turn is empty",
    "empty_prompt": "the prompt is empty after normalization",
    "empty_response": "the response is empty (or shorter than min_response_chars) after normalization",
    "too_long": "the prompt or response is longer than max_prompt_chars / max_response_chars",
    "copies_prompt": "the response repeats the prompt (equal, or the prompt verbatim as over 90% of it)",
    "trivial_response": "the response has no letter or digit (only punctuation, symbols or emoji)",
    "too_many_symbols": "a larger share of the response than max_symbol_ratio is not letter, digit or space",
    "repeated_lines": "more of the response's lines than max_repeated_line_ratio repeat an earlier line",
    "repeated_ngrams": "more of the response's word 3-grams than max_repeated_ngram_ratio repeat",
    "pii": "personal data or a secret was found and pii is 'reject'",
    "eval_overlap": "prompt+response equal an eval_set record (kept out of training to keep eval honest)",
    "contaminated": "prompt+response share a run of decontamination_ngram words with an eval_set record",
    "duplicate": "same normalized (system, prompt, response) as a record kept earlier",
    "near_duplicate": "same system prompt and prompt+response near_dedup_threshold-similar to a kept record",
    "val_contaminated": "prompt+response share a run of decontamination_ngram words with a val.jsonl record",
}

# The curation stage each reason belongs to (stats.json "stages" counts rejects per stage), in
# the order a line passes through them.
REASON_STAGES: dict[str, str] = {
    **{
        reason: "parse"
        for reason in (
            "blank_line",
            "invalid_utf8",
            "malformed_json",
            "too_deep",
            "duplicate_key",
            "not_an_object",
            "unknown_format",
            "missing_field",
            "wrong_type",
            "bad_chat",
            "empty_prompt",
            "empty_response",
            "too_long",
        )
    },
    **{
        reason: "quality"
        for reason in (
            "copies_prompt",
            "trivial_response",
            "too_many_symbols",
            "repeated_lines",
            "repeated_ngrams",
        )
    },
    "pii": "pii",
    "eval_overlap": "decontamination",
    "contaminated": "decontamination",
    "duplicate": "dedup",
    "near_duplicate": "near_dedup",
    # Checked last, once the hash split's val records are known (see curate.py).
    "val_contaminated": "decontamination",
}
STAGES: tuple[str, ...] = ("parse", "quality", "pii", "decontamination", "dedup", "near_dedup")

FORMAT_INPUT_OUTPUT = "input_output"
FORMAT_PROMPT_COMPLETION = "prompt_completion"
FORMAT_CHAT = "chat"
FORMATS = (FORMAT_INPUT_OUTPUT, FORMAT_PROMPT_COMPLETION, FORMAT_CHAT)

# Which keys identify which format, and the two fields each non-chat format needs.
_FORMAT_KEYS: dict[str, tuple[str, ...]] = {
    FORMAT_INPUT_OUTPUT: ("input", "output"),
    FORMAT_PROMPT_COMPLETION: ("prompt", "completion"),
    FORMAT_CHAT: ("messages",),
}
_CHAT_ROLES = ("system", "user", "assistant")
# NUL never survives normalize_text (it becomes a space), so it cannot occur inside a field and
# makes an unambiguous separator for hashing several fields.
_SEPARATOR = "\x00"
# Unicode category Cc is exactly U+0000-U+001F and U+007F-U+009F; \t and \n stay. A run of them
# becomes one space: deleting a NUL between two words would glue them into one.
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]+")
# The ASCII ones of those, \r included (it must become \n): what plain-ASCII text may not hold.
_ASCII_CONTROL_BYTES = bytes([*range(0x09), *range(0x0B, 0x20), 0x7F])


class Rejection(Exception):
    """A line that cannot become a training record; `kept_id` names the record a duplicate repeats."""

    def __init__(self, reason: str, detail: str, kept_id: str | None = None) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.kept_id = kept_id


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made
# building one, once per input line, cost 3.5 times as much. Nothing changes one after parsing;
# PII redaction makes a new one (dataclasses.replace).
@dataclass(slots=True)
class ParsedRecord:
    """Normalized fields of one accepted line, before length limits and dedup."""

    prompt: str
    response: str
    system: str
    format: str
    # Runs of control characters replaced by a space in its fields (stats.json counts such records).
    controls: int = 0


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages users recognize."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def clean_text(text: str) -> tuple[str, int]:
    """`normalize_text` and the number of control-character runs it replaced by a space."""
    if text.isascii() and len(text.encode("ascii").translate(None, _ASCII_CONTROL_BYTES)) == len(text):
        # ASCII without \r or a control character other than \n and \t: already NFC, nothing to
        # convert or replace (bytes.translate checks that in C, several times faster than the regex).
        return text.strip(), 0
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text, replaced = _CONTROL_CHARS.subn(" ", text)
    # ASCII text is already NFC; skipping the call saves time on most records.
    return (text if text.isascii() else unicodedata.normalize("NFC", text)).strip(), replaced


def normalize_text(text: str) -> str:
    """NFC, \\n line endings, each run of control characters (not \\n, \\t) one space, stripped."""
    return clean_text(text)[0]


def _normalize_field(value: str, field: str) -> tuple[str, int]:
    try:
        # json.loads turns a lone "\ud800" escape into a str that cannot be written as UTF-8
        # (ASCII text cannot hold one).
        if not value.isascii():
            value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise Rejection(
            "invalid_utf8", f"{field} contains an unpaired surrogate escape at character {error.start}"
        ) from None
    return clean_text(value)


def decode_line(raw: bytes) -> str:
    """Bytes of one JSONL line (terminator included or not) to text; rejects blank and non-UTF-8 lines."""
    raw = raw.rstrip(b"\r\n")
    if not raw.strip():
        raise Rejection("blank_line", "the line is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejection(
            "invalid_utf8", f"byte 0x{raw[error.start]:02x} at offset {error.start} is not valid UTF-8"
        ) from None


_MAX_KEY_CHARS = 100


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The decoder's object hook: a dict, or a Rejection when a key repeats (json keeps the last)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                shown = key if len(key) <= _MAX_KEY_CHARS else key[:_MAX_KEY_CHARS] + "..."
                raise Rejection("duplicate_key", f"key {shown!r} appears more than once in one object")
            seen.add(key)
    return obj


# strict=False accepts raw tabs/newlines inside strings, which many exporters write;
# normalization cleans them afterwards. One decoder for all lines: json.loads with an
# argument builds a new one per call. The pairs hook sees every object's keys before they
# collapse into a dict: measured, it costs less than any scan of the text that could tell
# when a duplicate is possible (a colon or `"<space>:` count is about as slow, and needs a key
# count of the decoded value besides).
_JSON = json.JSONDecoder(strict=False, object_pairs_hook=_object_without_duplicates)


_scan = _JSON.scan_once


def _too_deep() -> Rejection:
    return Rejection(
        "too_deep",
        f"objects or arrays are nested more than about {sys.getrecursionlimit()} levels deep, "
        "deeper than the JSON parser allows",
    )


def parse_json_object(text: str) -> dict[str, Any]:
    if text[:1] == "{" and text[-1:] == "}":
        # The common case: an object filling the line. The decoder's own scanner, without the
        # wrapper's whitespace and error handling; anything else takes the general path below.
        try:
            value, end = _scan(text, 0)
        except (StopIteration, ValueError):
            end = -1
        except RecursionError:
            raise _too_deep() from None
        if end == len(text):
            return value  # type: ignore[no-any-return]  # the scan started at "{": an object
    try:
        value = _JSON.decode(text)
    except json.JSONDecodeError as error:
        raise Rejection("malformed_json", f"{error.msg} (column {error.colno})") from None
    except RecursionError:
        raise _too_deep() from None
    if not isinstance(value, dict):
        raise Rejection("not_an_object", f"the line is a JSON {json_type(value)}, expected an object")
    return value


def _string_field(obj: dict[str, Any], field: str, path: str | None = None) -> tuple[str, int]:
    """A string field's normalized text and its count of control-character runs replaced."""
    value = obj.get(field)
    if value.__class__ is str and value.isascii():
        return clean_text(value)  # the common case; ASCII cannot hold an unpaired surrogate
    path = path or field
    if field not in obj:
        raise Rejection("missing_field", f"field {path!r} is missing")
    value = obj[field]
    if not isinstance(value, str):
        raise Rejection("wrong_type", f"field {path!r} is {json_type(value)}, expected string")
    return _normalize_field(value, path)


def _system_field(obj: dict[str, Any]) -> tuple[str, int]:
    # null is how many exporters write "no system prompt"; treat it as absent.
    if obj.get("system") is None:
        return "", 0
    return _string_field(obj, "system")


def detect_format(obj: dict[str, Any]) -> str:
    """Name the format an object's keys select; exactly one must match."""
    # The common case with plain key tests (the generic loop below was a measurable share of parsing).
    input_output = "input" in obj or "output" in obj
    prompt_completion = "prompt" in obj or "completion" in obj
    chat = "messages" in obj
    if input_output + prompt_completion + chat == 1 and not (input_output and "instruction" in obj):
        return (
            FORMAT_INPUT_OUTPUT
            if input_output
            else FORMAT_PROMPT_COMPLETION
            if prompt_completion
            else FORMAT_CHAT
        )
    return _format_problem(obj)


def _format_problem(obj: dict[str, Any]) -> str:
    """`detect_format` with the general rule: the format when exactly one matches, else the Rejection."""
    matches = [name for name, keys in _FORMAT_KEYS.items() if any(key in obj for key in keys)]
    if len(matches) == 1 and not (matches[0] == FORMAT_INPUT_OUTPUT and "instruction" in obj):
        return matches[0]
    seen = ", ".join(sorted(obj)) or "none"
    if not matches:
        raise Rejection(
            "unknown_format",
            f"keys seen: {seen}; expected input/output, prompt/completion or messages",
        )
    if len(matches) > 1:
        several = ", ".join(matches)
        raise Rejection("unknown_format", f"keys of more than one format ({several}); keys seen: {seen}")
    # Alpaca-style records: using only "input" would silently drop the instruction.
    raise Rejection(
        "unknown_format", "Alpaca-style 'instruction' field is not supported; merge it into 'input'"
    )


def _chat_message(message: Any, index: int) -> tuple[str, str, int]:
    path = f"messages[{index}]"
    if not isinstance(message, dict):
        raise Rejection("wrong_type", f"{path} is {json_type(message)}, expected object")
    if "role" not in message:
        raise Rejection("missing_field", f"field {path + '.role'!r} is missing")
    role = message["role"]
    if not isinstance(role, str):
        raise Rejection("wrong_type", f"field {path + '.role'!r} is {json_type(role)}, expected string")
    role = role.strip().lower()
    if role not in _CHAT_ROLES:
        raise Rejection("bad_chat", f"{path} has role {message['role']!r}; expected system, user, assistant")
    return role, *_string_field(message, "content", f"{path}.content")


def render_chat_prompt(turns: list[tuple[str, str]]) -> str:
    """The prompt for a conversation whose final assistant turn has been taken as the response.

    A single user turn is the prompt as is, so a chat and an input/output record with the
    same text become the same record. Multi-turn conversations become a transcript, one
    turn per entry as "user: ..." / "assistant: ...", ending with the last user turn
    (also prefixed, so it cannot be read as the end of the previous assistant turn).
    """
    if len(turns) == 1:
        return turns[0][1]
    return "\n".join(f"{role}: {content}" for role, content in turns)


def parse_chat(obj: dict[str, Any]) -> ParsedRecord:
    messages = obj["messages"]
    if not isinstance(messages, list):
        raise Rejection("wrong_type", f"field 'messages' is {json_type(messages)}, expected array")
    if not messages:
        raise Rejection("bad_chat", "messages is empty")
    turns = [_chat_message(message, index) for index, message in enumerate(messages)]
    system, controls = _system_field(obj)
    controls += sum(turn[2] for turn in turns)
    parsed = [(role, content) for role, content, _ in turns]
    if parsed[0][0] == "system":
        message_system = parsed.pop(0)[1]
        if system and system != message_system:
            raise Rejection("bad_chat", "both a 'system' field and a different leading system message")
        system = message_system
    offset = len(messages) - len(parsed)

    if not parsed:
        raise Rejection("bad_chat", "only a system message; a user and an assistant turn are required")
    for position, (role, content) in enumerate(parsed):
        index = position + offset
        expected = "user" if position % 2 == 0 else "assistant"
        if role == "system":
            raise Rejection("bad_chat", f"messages[{index}] is a system message; only the first may be")
        if role != expected:
            raise Rejection(
                "bad_chat", f"messages[{index}] is {role}, expected {expected} (turns alternate, user first)"
            )
        # A single user turn and the final assistant turn become prompt/response and get
        # their own empty_* reasons; any other empty turn would vanish inside a transcript.
        if not content and len(parsed) > 2 and position < len(parsed) - 1:
            raise Rejection("bad_chat", f"messages[{index}] ({role}) is empty")
    if parsed[-1][0] != "assistant":
        raise Rejection("bad_chat", "the last message is from the user; it must be the assistant's response")

    response = parsed[-1][1]
    return ParsedRecord(
        prompt=render_chat_prompt(parsed[:-1]),
        response=response,
        system=system,
        format=FORMAT_CHAT,
        controls=controls,
    )


def parse_object(obj: dict[str, Any]) -> ParsedRecord:
    """Detect the format of a decoded JSON object and return its normalized fields."""
    record_format = detect_format(obj)
    if record_format == FORMAT_CHAT:
        parsed = parse_chat(obj)
    else:
        prompt_key, response_key = _FORMAT_KEYS[record_format]
        prompt, prompt_controls = _string_field(obj, prompt_key)
        response, response_controls = _string_field(obj, response_key)
        system, system_controls = _system_field(obj)
        # (prompt, response, system, format, controls), positionally: keywords cost more on this hot path.
        parsed = ParsedRecord(
            prompt, response, system, record_format, prompt_controls + response_controls + system_controls
        )
    if not parsed.prompt:
        raise Rejection("empty_prompt", "the prompt is empty after normalization")
    if not parsed.response:
        raise Rejection("empty_response", "the response is empty after normalization")
    return parsed


def parse_line(raw: bytes) -> ParsedRecord:
    """One raw JSONL line to normalized fields, or a Rejection."""
    return parse_object(parse_json_object(decode_line(raw)))


def check_lengths(
    record: ParsedRecord, min_response_chars: int, max_prompt_chars: int, max_response_chars: int
) -> None:
    """Apply the configured length limits (characters after normalization)."""
    if len(record.response) < min_response_chars:
        raise Rejection(
            "empty_response",
            f"the response has {len(record.response)} characters, fewer than "
            f"min_response_chars={min_response_chars}",
        )
    if len(record.prompt) > max_prompt_chars:
        raise Rejection(
            "too_long",
            f"the prompt has {len(record.prompt)} characters, more than max_prompt_chars={max_prompt_chars}",
        )
    if len(record.response) > max_response_chars:
        raise Rejection(
            "too_long",
            f"the response has {len(record.response)} characters, more than "
            f"max_response_chars={max_response_chars}",
        )


def _sha256(*fields: str) -> bytes:
    return hashlib.sha256(_SEPARATOR.join(fields).encode("utf-8")).digest()


def digests(record: ParsedRecord) -> tuple[bytes, bytes]:
    """(`identity_digest`, `content_digest`) of a record, encoding its text once."""
    content = (record.prompt + _SEPARATOR + record.response).encode("utf-8")
    identity = hashlib.sha256(record.system.encode("utf-8") + b"\x00" if record.system else b"\x00")
    identity.update(content)
    return identity.digest(), hashlib.sha256(content).digest()


def identity_digest(record: ParsedRecord) -> bytes:
    """sha256 of normalized (system, prompt, response): the dedup key; its hex prefix is the id."""
    return _sha256(record.system, record.prompt, record.response)


def record_id(record: ParsedRecord) -> str:
    """First 16 hex digits of `identity_digest`: stable across runs, formats and input order."""
    return identity_digest(record).hex()[:16]


def content_digest(record: ParsedRecord) -> bytes:
    """sha256 of normalized (prompt, response), without the system prompt.

    Used for the train/val split and the eval overlap check, so two records that differ
    only in their system prompt can never sit on both sides of the split.
    """
    return _sha256(record.prompt, record.response)


def in_validation(content: bytes, val_fraction: float) -> bool:
    """Deterministic split: the first 8 bytes of a record's `content_digest` as a fraction of 2**64."""
    return int.from_bytes(content[:8], "big") < val_fraction * 2**64
