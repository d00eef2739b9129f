"""A small writer for protobuf text format, the syntax of Triton's config.pbtxt.

Configs are built as plain nested mappings from typed settings (see `triton_hf.py`) and
rendered here, so no caller assembles pbtxt by string concatenation. The writer knows
only what text format needs: scalars, enum identifiers, nested messages, repeated fields
and protobuf maps. The result is checked in tests by parsing it with Triton's own
`ModelConfig` protobuf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_INDENT = "  "


class Ident(str):
    """An enum value (e.g. TYPE_STRING, KIND_CPU): written bare, not quoted."""

    __slots__ = ()


def quote(text: str) -> str:
    """A text-format string literal; non-ASCII stays as UTF-8, which the parser accepts."""
    escaped = []
    for char in text:
        if char == "\\":
            escaped.append("\\\\")
        elif char == '"':
            escaped.append('\\"')
        elif char == "\n":
            escaped.append("\\n")
        elif char == "\r":
            escaped.append("\\r")
        elif char == "\t":
            escaped.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            # Octal escapes are the one form every protobuf text parser (C++ and Python) reads.
            escaped.append(f"\\{ord(char):03o}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _scalar(value: Any) -> str:
    # bool before int: bool is an int subclass.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Ident):
        return str(value)
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a protobuf text-format scalar")


def _is_message(value: Any) -> bool:
    return isinstance(value, Mapping)


def _lines(fields: Mapping[str, Any], depth: int) -> list[str]:
    pad = _INDENT * depth
    lines: list[str] = []
    for name, value in fields.items():
        if value is None:
            continue  # unset optional field
        if _is_message(value):
            lines.append(f"{pad}{name} {{")
            lines.extend(_lines(value, depth + 1))
            lines.append(f"{pad}}}")
        elif isinstance(value, Sequence) and not isinstance(value, str):
            if not value:
                continue  # an empty repeated field is the same as an absent one
            if all(_is_message(item) for item in value):
                lines.append(f"{pad}{name} [")
                for index, item in enumerate(value):
                    lines.append(f"{pad}{_INDENT}{{")
                    lines.extend(_lines(item, depth + 2))
                    lines.append(f"{pad}{_INDENT}}}" + ("," if index < len(value) - 1 else ""))
                lines.append(f"{pad}]")
            else:
                lines.append(f"{pad}{name}: [ {', '.join(_scalar(item) for item in value)} ]")
        else:
            lines.append(f"{pad}{name}: {_scalar(value)}")
    return lines


def to_pbtxt(fields: Mapping[str, Any]) -> str:
    """Render a message given as a mapping of field name to value.

    Values: str/int/float/bool scalars, `Ident` for enum values, a mapping for a nested
    message, a list for a repeated field, None for an unset field. A protobuf map field
    is a repeated message of {"key": ..., "value": ...}; use `map_entries`.
    """
    return "\n".join(_lines(fields, 0)) + "\n"


def map_entries(mapping: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A protobuf map written as its repeated key/value entries, sorted for stable output."""
    return [{"key": key, "value": mapping[key]} for key in sorted(mapping)]
