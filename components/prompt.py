"""The one prompt format shared by training, evaluation and serving.

Training masks everything up to the end of `render_prompt(...)`, evaluation generates
from it, and the Triton model repository carries the same template as a parameter so the
served model sees exactly what it was tuned on.
"""

from __future__ import annotations

PROMPT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
SYSTEM_TEMPLATE = "### System:\n{system}\n\n"


def render_prompt(prompt: str, system: str = "", template: str = PROMPT_TEMPLATE) -> str:
    """Return the text a model is conditioned on for one request."""
    head = SYSTEM_TEMPLATE.format(system=system) if system else ""
    return head + template.format(prompt=prompt)
