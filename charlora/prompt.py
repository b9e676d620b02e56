"""The single source of the `Name:line` prompt shape.

Training samples, evaluation and chat all call these functions, so the text a
model is trained on is byte-for-byte the text it is later prompted with.
"""
from __future__ import annotations

from typing import Iterable

from charlora.dialogue import Line


def format_line(line: Line) -> str:
    """`Name:text` for a speaker's line; narration stays as it was written."""
    if line.speaker is None:
        return line.text
    return f"{line.speaker}:{line.text}"


def build_prompt(context: Iterable[Line], name: str) -> str:
    """The context lines, one a line, then `name:` for the model to continue.

    No space after the colon: that is how the dialogue format writes lines, so
    the reply the model learns starts right after `Name:` in chat too.
    """
    return "\n".join([*(format_line(line) for line in context), f"{name}:"])
