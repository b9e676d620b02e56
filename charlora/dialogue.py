"""Stage 1: read a `Name:line` dialogue file into speaker/line records.

Pure parsing lives in `parse_dialogue`; `read_dialogue_file` is the edge that
touches the disk and decides the text encoding.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from charlora.errors import CharloraError


@dataclass(frozen=True)
class Line:
    """One utterance (speaker set) or one narration / stage-direction line."""

    speaker: str | None
    text: str
    # True when a break stood before it: a blank line in a `Name:line` file, a
    # scene heading in a script or play, a new conversation or a long silence
    # in a chat export (charlora.readers).  `--split_scenes` ends a sample's
    # context there; by default nothing does.
    after_blank: bool = False


# A speaker prefix: starts with a letter, then up to 39 letters, digits, spaces
# or . ' - _ (so "Sir Toby Belch" and "Mr. Pickwick" work), then an ASCII or
# full-width colon, with spaces allowed before it ("Bob :").  Anything else,
# e.g. "(Enter VIOLA)" or a sentence with a colon late in it, is narration.
_SPEAKER = re.compile(r"^(?P<name>[^\W\d_][\w .'\-]{0,39}?)\s*[:\uff1a](?P<text>.*)$")
_MAX_NAME_WORDS = 5


def parse_line(raw: str) -> Line | None:
    """One physical line -> a Line, or None for a blank line."""
    stripped = raw.strip()
    if not stripped:
        return None
    match = _SPEAKER.match(stripped)
    if match:
        name = " ".join(match["name"].split())
        text = match["text"].strip()
        # "http://..." is a link, not a speaker called http.
        if len(name.split()) <= _MAX_NAME_WORDS and not text.startswith("//"):
            return Line(name, text)
    return Line(None, stripped)


def parse_dialogue(text: str) -> list[Line]:
    """All non-blank lines of a dialogue text, in order.

    Speaker lines with nothing after the colon carry no utterance and are
    dropped.  Only \\n, \\r\\n and \\r end a line (str.splitlines would also split
    on form feeds and Unicode separators that can sit inside a speech).
    """
    lines: list[Line] = []
    blank_before = False
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = parse_line(raw)
        if line is None:
            blank_before = True
            continue
        if line.speaker is not None and not line.text:
            continue
        lines.append(Line(line.speaker, line.text, blank_before) if blank_before else line)
        blank_before = False
    return lines


_LATIN_CODEPAGES = {
    "cp1250", "cp1252", "cp1254", "cp1257", "latin_1", "iso8859_2", "iso8859_9", "iso8859_15",
    "mac_roman", "mac_latin2", "mac_iceland", "mac_turkish", "hp_roman8", "cp775", "cp850", "cp437",
}
_CENTRAL_EUROPEAN = {"Polish", "Czech", "Slovak", "Hungarian", "Croatian", "Slovene", "Romanian",
                     "Lithuanian", "Latvian", "Estonian", "Turkish"}


def decode_dialogue(data: bytes, source: str = "input") -> tuple[str, str]:
    """Bytes -> (text, encoding name).

    UTF-8 (with or without BOM) is taken as is.  Anything else goes to
    charset-normalizer; if it cannot name an encoding we stop with a clear error
    rather than hand on guessed garbage.
    """
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    import charset_normalizer

    matches = charset_normalizer.from_bytes(data)
    best = matches.best()
    if best is None or best.encoding is None:
        raise CharloraError(
            f"{source} is not UTF-8 and its encoding could not be detected; "
            "save it as UTF-8 and try again"
        )
    # On short Western text the detector cannot tell the Latin code pages
    # apart (it read French cp1252 as Baltic cp1257, and as Romanian cp1250:
    # "crčme"); cp1252, what Windows editors write, is by far the likeliest and
    # a superset of Latin-1's printable range.  So it wins where the detector
    # found it as clean as its pick, or found it at all for a language that is
    # not Central European; Polish in cp1250 (which cp1252 can't read cleanly,
    # and the detector calls Dutch) keeps the pick.
    cp1252 = [m for m in matches if "cp1252" in m.could_be_from_charset]
    if best.encoding in _LATIN_CODEPAGES and cp1252 and (
        best.language not in _CENTRAL_EUROPEAN or any(m.chaos <= best.chaos for m in cp1252)
    ):
        try:
            return data.decode("cp1252"), "cp1252"
        except UnicodeDecodeError:
            pass
    return str(best), best.encoding


def read_text_file(path: str | Path) -> tuple[str, str]:
    """Read and decode a dialogue file of any source format -> (text, encoding)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CharloraError(f"dialogue file {path} not found (set it with --txtfilename/-t)") from None
    except IsADirectoryError:
        raise CharloraError(f"{path} is a folder, not a dialogue file") from None
    except OSError as exc:
        raise CharloraError(f"cannot read {path}: {exc.strerror}") from None
    return decode_dialogue(data, str(path))


def read_dialogue_file(path: str | Path) -> tuple[list[Line], str]:
    """Read and parse a `Name:line` dialogue file -> (lines, encoding)."""
    text, encoding = read_text_file(path)
    lines = parse_dialogue(text)
    if not lines:
        raise CharloraError(f"{path} is empty: it needs lines like `Name:what they say`")
    return lines, encoding
