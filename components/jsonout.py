"""The one way llmft writes JSON that leaves the process (files, KFP artifacts, stdout).

Python's json module writes a non-finite float as the bare tokens NaN, Infinity or -Infinity,
which are not JSON: strict parsers (jq, JavaScript, Go, most databases) refuse the whole
document, and a NaN that looks like a number hides that a score is missing. Here every
non-finite float becomes null (JSON's "no value"), and json.dumps runs with allow_nan=False,
so a value this walk misses fails loudly instead of writing an invalid file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any


def finite_or_none(value: Any) -> Any:
    """`value` with every non-finite float (at any depth of dicts, lists and tuples) made None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(item) for item in value]
    return value


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps of `obj` with non-finite floats written as null; always valid JSON."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)
