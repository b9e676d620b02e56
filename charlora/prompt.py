"""The single source of the `Name:line` prompt shape.

Training samples, evaluation and chat all call these functions, so the text a
model is trained on is byte-for-byte the text it is later prompted with.
fit_context trims a conversation to the prompt a model can read (chat and
chat memory both use it).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

from charlora.dialogue import Line, parse_line


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


def prompt_speakers(prompt: str) -> tuple[str, list[str]]:
    """(the character a `build_prompt` prompt asks for, every speaker of its lines)."""
    *lines, last = prompt.split("\n")
    said = (parse_line(line) for line in lines)
    return last[:-1], sorted({line.speaker for line in said if line is not None and line.speaker is not None})


def fit_context(history: Sequence[Line], name: str, rounds: int, count_tokens: Callable[[str], int],
                budget: int | None) -> list[Line]:
    """The last `rounds` lines, minus the oldest ones while the prompt is over
    `budget` tokens (None: no limit).  May return fewer lines than asked, or none.

    The last `rounds` lines are the window a training sample of the next line
    has (samples.context_window(history, len(history), rounds)).
    """
    lines = list(history[max(0, len(history) - rounds) :]) if rounds > 0 else []
    if budget is None:
        return lines
    while lines and count_tokens(build_prompt(lines, name)) > budget:
        lines = lines[1:]
    return lines
