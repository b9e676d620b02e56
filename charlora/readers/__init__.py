"""Stage 1, for every source: read a dialogue file of any supported format
into speaker/line records, and say what was understood.

    source = read_source("chat.txt")              # format detected
    source.lines, source.format, source.dropped   # Lines, "whatsapp", Counter

The readers are pure functions text -> Reading (charlora.readers.scripts and
charlora.readers.chats); `read_source` is the edge: it reads the file, decodes
it (charlora.dialogue.decode_dialogue), picks the reader, repairs mojibake with
ftfy, and turns long silences in chats into scene breaks.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Sequence

from charlora.dialogue import Line, read_text_file
from charlora.errors import CharloraError
from charlora.readers.chats import (json_format, read_discord, read_openai, read_sillytavern, read_telegram,
                                    read_whatsapp)
from charlora.readers.common import DELETED, MEDIA, SYSTEM, TIMESTAMPS, Reading
from charlora.readers.scripts import read_fountain, read_markdown, read_name_line, read_play

# Name -> reader.  The text formats come first and name-line first of all: on a
# tie, auto detection keeps the toolkit's own format.
READERS: dict[str, Callable[[str], Reading]] = {
    "name-line": read_name_line,
    "fountain": read_fountain,
    "play": read_play,
    "markdown": read_markdown,
    "whatsapp": read_whatsapp,
    "telegram": read_telegram,
    "discord": read_discord,
    "sillytavern": read_sillytavern,
    "openai": read_openai,
}
TEXT_FORMATS = ("name-line", "fountain", "play", "markdown", "whatsapp")
# People's own messages: personal data is scrubbed from these by default.
CHAT_FORMATS = ("whatsapp", "telegram", "discord", "sillytavern", "openai")
FORMATS = ("auto", *READERS)
# A silence this long in a chat starts a new conversation (with --split_scenes).
DEFAULT_SCENE_GAP_MINUTES = 60.0


# Auto detection scores the text readers on this much of the file only, so
# one pathological file costs one reader's time, not five; a format shows
# itself within its first few hundred lines.
SNIFF_CHARS = 64 * 1024


def sniff_prefix(text: str, limit: int = SNIFF_CHARS) -> str:
    """The first `limit` characters of `text`, cut at a line end when one is near."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    cut = head.rfind("\n")
    return head[:cut] if cut > limit // 2 else head


def detect_format(text: str) -> str:
    """The reader for `text`: a JSON/JSONL chat export by its keys, otherwise
    the text reader that finds the most speaker lines (name-line on a tie) in
    the first SNIFF_CHARS characters."""
    if text.lstrip()[:1] in ("{", "["):
        found = json_format(text)
        if found:
            return found
        if text.lstrip()[:1] == "{":
            raise CharloraError(
                "this JSON is none of the chat exports auto knows; choose one with --format "
                f"({', '.join(READERS)})"
            )
    head = sniff_prefix(text)
    scores = {fmt: sum(line.speaker is not None for line in READERS[fmt](head).lines) for fmt in TEXT_FORMATS}
    return max(TEXT_FORMATS, key=scores.__getitem__)


def fix_lines(lines: Sequence[Line]) -> tuple[list[Line], int]:
    """Repair mojibake (`wouldnâ€™t` -> `wouldn’t`) in speakers and text with
    ftfy's encoding fixes only: quotes, widths and ligatures stay as written.
    Returns the lines and how many of them changed."""
    from ftfy import fix_encoding

    def fix(text: str) -> str:
        return text if text.isascii() else fix_encoding(text)  # mojibake is never pure ASCII

    out, fixed = [], 0
    for line in lines:
        speaker = fix(line.speaker) if line.speaker is not None else None
        text = fix(line.text)
        if (speaker, text) != (line.speaker, line.text):
            fixed += 1
            line = Line(speaker, text, line.after_blank)
        out.append(line)
    return out, fixed


def mark_gaps(lines: Sequence[Line], times: Sequence[datetime | None], minutes: float) -> list[Line]:
    """Mark a break before each line sent `minutes` or more after the one
    before it (lines with an unknown time are never split off)."""
    gap = timedelta(minutes=minutes)
    out, last = [], None
    for line, when in zip(lines, times):
        if when is not None and last is not None and when - last >= gap and not line.after_blank:
            line = Line(line.speaker, line.text, True)
        out.append(line)
        last = when if when is not None else last
    return out


@dataclass(frozen=True)
class Source:
    """A file as read: its lines and what the summary reports about it."""

    path: str
    lines: list[Line]
    format: str
    detected: bool
    encoding: str
    fixed: int | None  # lines ftfy changed; None when --no-fix-text
    dropped: Counter[str]

    def describe(self) -> str:
        how = "detected" if self.detected else "chosen"
        fixes = "text fixing off" if self.fixed is None else f"ftfy fixed {self.fixed} lines"
        text = f"read {self.path} as {self.format} ({how}; {self.encoding}; {len(self.lines)} lines; {fixes})"
        if self.dropped:
            order = [TIMESTAMPS, SYSTEM, MEDIA, DELETED]
            text += "\ndropped: " + ", ".join(f"{what} {self.dropped[what]}" for what in order if self.dropped[what])
        return text


def read_source(path: str | Path, fmt: str = "auto", fix_text: bool = True,
                scene_gap_minutes: float | None = None) -> Source:
    """Read, decode, parse and repair one dialogue file.

    `scene_gap_minutes` (chat exports with send times): mark a break before a
    message sent that long after the previous one.
    """
    if fmt not in FORMATS:
        raise CharloraError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    text, encoding = read_text_file(path)
    detected = fmt == "auto"
    if detected:
        try:
            fmt = detect_format(text)
        except CharloraError as exc:
            raise CharloraError(f"{path}: {exc}") from None
    try:
        reading = READERS[fmt](text)
    except CharloraError as exc:
        raise CharloraError(f"{path} as {fmt}: {exc}") from None
    lines, fixed = fix_lines(reading.lines) if fix_text else (reading.lines, None)
    if scene_gap_minutes is not None and reading.times is not None:
        lines = mark_gaps(lines, reading.times, scene_gap_minutes)
    if fmt == "name-line" and not lines:
        raise CharloraError(f"{path} is empty: it needs lines like `Name:what they say`")
    if fmt != "name-line" and not any(line.speaker is not None for line in lines):
        raise CharloraError(f"{path} has nothing the {fmt} reader understands as dialogue; check --format")
    return Source(str(path), lines, fmt, detected, encoding, fixed, reading.dropped)
