"""What every reader returns, and the small text helpers they share."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from charlora.dialogue import Line
from charlora.text import clean_speaker, strip_controls

# The names of the things a reader drops and counts, as the summary prints them.
TIMESTAMPS = "timestamps"
SYSTEM = "system notices"
MEDIA = "media placeholders"
DELETED = "deleted messages"


@dataclass
class Reading:
    """A reader's result: the lines, what it dropped, and (chat exports) when
    each line was sent, parallel to `lines`, so long silences can become
    scene breaks."""

    lines: list[Line]
    dropped: Counter[str] = field(default_factory=Counter)
    times: list[datetime | None] | None = None


def physical_lines(text: str) -> list[str]:
    """Split on \\n, \\r\\n and \\r only, as parse_dialogue does (form feeds and
    Unicode separators can sit inside a speech)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def one_line(text: str) -> str:
    """A multi-line speech or message as one line: each line stripped, joined by
    a space (every Unicode line break counts here, so none reaches a sample).
    Escape sequences and other control characters go (charlora.text)."""
    text = strip_controls(text, keep="\t\n\r\x0b\x0c\x1c\x1d\x1e\x85")
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


class Blocks:
    """Collects a script's speeches and narration paragraphs into Lines.

    A speech or paragraph may run over several physical lines; `flush` joins
    them.  `scene` records a break so the next Line starts a new context.
    """

    def __init__(self) -> None:
        self.lines: list[Line] = []
        self.speaker: str | None = None
        self.parts: list[str] = []
        self.open = False
        self.pending_break = False

    def flush(self) -> None:
        text = one_line(" ".join(self.parts))
        if self.open and text:
            speaker = clean_speaker(self.speaker) if self.speaker is not None else None
            self.lines.append(Line(speaker or None, text, self.pending_break))
            self.pending_break = False
        self.speaker, self.parts, self.open = None, [], False

    def start(self, speaker: str | None, text: str = "") -> None:
        """Begin a speech (speaker set) or a narration paragraph (None)."""
        self.flush()
        self.speaker, self.open = speaker, True
        self.add(text)

    def add(self, text: str) -> None:
        # controls go line by line: an ESC ending one line must not eat the
        # first letter of the next once they are joined
        text = strip_controls(text, keep="\t").strip()
        if text:
            self.parts.append(text)

    def narration(self, text: str) -> None:
        """One standalone narration line (a stage direction, a heading)."""
        self.start(None, text)
        self.flush()

    def interject(self, text: str) -> None:
        """A stage direction: inside a speech it splits the speech, and the
        speaker keeps the floor for the lines after it."""
        speaker = self.speaker if self.in_speech else None
        self.narration(text)
        if speaker is not None:
            self.start(speaker)

    def scene(self, heading: str | None = None) -> None:
        """A scene break, with its heading kept as narration when there is one."""
        self.flush()
        self.pending_break = True
        if heading and heading.strip():
            self.narration(heading)

    @property
    def in_speech(self) -> bool:
        return self.open and self.speaker is not None

    def result(self) -> list[Line]:
        self.flush()
        return self.lines
