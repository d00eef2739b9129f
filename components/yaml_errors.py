"""YAML errors as one line a person can act on.

PyYAML's own message spans several lines (the context, the problem, an excerpt with a caret);
every file llmft reads as YAML (profiles, images, --config, --params-file) reports it the same way:
the line and column, then the problem.
"""

from __future__ import annotations

import yaml


def describe_yaml_error(err: yaml.YAMLError) -> str:
    """`line L, column C: not valid YAML: <problem>` (the position when PyYAML knows it)."""
    mark = getattr(err, "problem_mark", None)
    lines = str(err).splitlines()
    problem = getattr(err, "problem", None) or (lines[0] if lines else type(err).__name__)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}not valid YAML: {problem}"
