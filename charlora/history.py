"""Conversation files: /save writes the chat's lines as a JSON list of
{"speaker", "text"} objects, /load reads one back (untrusted: bounded, cleaned)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from charlora.dialogue import Line
from charlora.errors import CharloraError
from charlora.readers.common import one_line
from charlora.samples import write_json_atomic
from charlora.text import clean_line, clean_speaker


def history_to_json(history: Sequence[Line]) -> list[dict[str, str | None]]:
    return [{"speaker": line.speaker, "text": line.text} for line in history]


def history_from_json(data: Any, source: str) -> list[Line]:
    if not isinstance(data, list):
        raise CharloraError(f"{source} must be a JSON list of {{\"speaker\", \"text\"}} objects")
    lines = []
    for i, entry in enumerate(data):
        if (not isinstance(entry, dict) or not isinstance(entry.get("text"), str)
                or not (entry.get("speaker") is None or isinstance(entry.get("speaker"), str))):
            raise CharloraError(f"{source}: entry {i} is not an object with \"speaker\" (text or null) and \"text\"")
        # a loaded file is not trusted: no escape sequences reach the terminal
        # or the prompt, and a speaker "Evil\nBob" can't start a fake Bob: line
        text = clean_line(one_line(entry["text"]))
        if text:
            speaker = clean_speaker(entry["speaker"]) if entry["speaker"] else ""
            lines.append(Line(speaker or None, text))
    return lines


def save_history(history: Sequence[Line], path: str | Path) -> None:
    """Write the conversation to `path`, replacing only an earlier saved
    conversation: /save onto the open memory file, an adapter's config or a
    dialogue file replaced it with a JSON list, and the memory was lost."""
    if Path(path).is_file():
        try:
            load_history(path)
        except CharloraError:
            raise CharloraError(f"{path} exists and is not a saved conversation; /save replaces only those "
                                "(choose another name)") from None
    try:
        write_json_atomic(history_to_json(history), path)
    except OSError as exc:
        raise CharloraError(f"cannot write {path}: {exc.strerror}") from None


def load_history(path: str | Path) -> list[Line]:
    from charlora.dialogue import MAX_INPUT_BYTES, read_bytes_bounded

    try:  # bounded: /load of a FIFO waited forever, /load /dev/zero read until memory ran out
        text = read_bytes_bounded(Path(path), MAX_INPUT_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise CharloraError(f"{path} not found") from None
    except IsADirectoryError:
        raise CharloraError(f"{path} is a folder") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CharloraError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CharloraError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:  # [[[[... : a traceback, as was an integer of 5,000 digits
        raise CharloraError(f"{path} is not valid JSON (nested too deeply to read)") from None
    except ValueError as exc:  # Python refuses to convert an integer of over 4,300 digits
        raise CharloraError(f"{path} is not valid JSON ({str(exc).split(';')[0]})") from None
    return history_from_json(data, str(path))
