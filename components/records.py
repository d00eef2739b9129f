"""The canonical record every step after curate reads (one JSON object per line)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Record:
    """One instruction/response pair.

    `prompt` already contains earlier turns of a chat (rendered "role: text" per line)
    when the source was a multi-turn conversation; `response` is the text to learn.
    `source` and `line` point back to where the record came from.
    """

    id: str
    prompt: str
    response: str
    system: str = ""
    source: str = ""
    line: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def read_records(path: str | Path) -> Iterator[Record]:
    """Read canonical records written by curate; any other content is a bug upstream."""
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                yield Record(**json.loads(text))
            except (json.JSONDecodeError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not a canonical llmft record ({error})") from error


def write_records(path: str | Path, records: list[Record]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.to_json() + "\n")
