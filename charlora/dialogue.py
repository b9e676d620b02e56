"""Stage 1: read a `Name:line` dialogue file into speaker/line records.

Pure parsing lives in `parse_dialogue`; `read_dialogue_file` is the edge that
touches the disk and decides the text encoding.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from charlora.errors import CharloraError
from charlora.text import clean_line


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
    """One physical line -> a Line, or None for a blank line.  Control
    characters and escape sequences go (charlora.text.clean_line)."""
    stripped = clean_line(raw).strip()
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


def check_mostly_utf8(data: bytes, first_bad: int, source: str = "input") -> None:
    """Raise CharloraError if `data` is UTF-8 apart from a few bad bytes.

    "Mostly UTF-8" means at least as many well-formed multi-byte UTF-8
    characters as malformed sequences.  Text in a legacy 8-bit code page has
    almost none of the former (an accented letter there is one byte followed
    by ASCII, which UTF-8 rejects), so it still goes to detection.  We stop
    rather than replace the bad bytes: a file damaged once may be damaged
    elsewhere in ways that do decode, and the line number lets the user look.
    """
    replaced = data.decode("utf-8", errors="replace")
    bad = replaced.count("\ufffd") - data.count(b"\xef\xbf\xbd")
    good = sum(1 for ch in replaced if ord(ch) > 0x7F) - replaced.count("\ufffd")
    if good == 0 or good < bad:
        return
    line = data.count(b"\n", 0, first_bad) + 1
    more = f" and {bad - 1} more" if bad > 1 else ""
    raise CharloraError(
        f"{source} is UTF-8 except for a bad byte (0x{data[first_bad]:02x}) on line {line}{more}; "
        "fix or remove it (or save the file as UTF-8 again) and retry"
    )


_LATIN_CODEPAGES = {
    "cp1250", "cp1252", "cp1254", "cp1257", "latin_1", "iso8859_2", "iso8859_9", "iso8859_15",
    "mac_roman", "mac_latin2", "mac_iceland", "mac_turkish", "hp_roman8", "cp775", "cp850", "cp437",
}
_CENTRAL_EUROPEAN = {"Polish", "Czech", "Slovak", "Hungarian", "Croatian", "Slovene", "Romanian",
                     "Lithuanian", "Latvian", "Estonian", "Turkish"}


def decode_dialogue(data: bytes, source: str = "input") -> tuple[str, str]:
    """Bytes -> (text, encoding name).

    UTF-8 (with or without BOM) is taken as is.  A file that is UTF-8 but
    for a few bad bytes is refused, naming the first bad line (see
    check_mostly_utf8): a detector would pick some code page that reads the
    stray byte and turn every accented letter into mojibake.  Only a file that
    is not UTF-8 at all goes to charset-normalizer; if it cannot name an
    encoding we stop with a clear error rather than hand on guessed garbage.
    """
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        check_mostly_utf8(data, exc.start, source)
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


# Larger than any chat export we have seen (a decade of WhatsApp is tens of
# MB) and small enough to read and parse in memory; a bigger input is likely
# a mistake (a disk image, /dev/zero) and would otherwise read forever.
MAX_INPUT_BYTES = 256 * 1024 * 1024


def read_bytes_bounded(path: Path, limit: int) -> bytes:
    """A regular file's bytes, refusing devices, pipes and files over `limit`."""
    import stat

    st = path.stat()
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(path)
    if not stat.S_ISREG(st.st_mode):
        raise CharloraError(f"{path} is not a regular file (a device, pipe or socket); save what it holds to an ordinary file first")
    with open(path, "rb") as f:
        data = f.read(limit + 1)  # +1: a file that grew past the limit while read is still caught
    if len(data) > limit:
        raise CharloraError(f"{path} is larger than {limit // 2**20} MiB, the most a dialogue file may be; "
                            "split it into smaller files")
    return data


def read_text_file(path: str | Path, limit: int | None = None) -> tuple[str, str]:
    """Read and decode a dialogue file of any source format -> (text, encoding)."""
    path = Path(path)
    try:
        data = read_bytes_bounded(path, MAX_INPUT_BYTES if limit is None else limit)
    except FileNotFoundError:
        raise CharloraError(f"dialogue file {path} not found (set it with --txtfilename/-t)") from None
    except IsADirectoryError:
        raise CharloraError(f"{path} is a folder, not a dialogue file") from None
    except OSError as exc:
        raise CharloraError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:  # a NUL in the path
        raise CharloraError(f"cannot read {str(path)!r}: the file name holds a NUL character") from None
    return decode_dialogue(data, str(path))


def read_dialogue_file(path: str | Path) -> tuple[list[Line], str]:
    """Read and parse a `Name:line` dialogue file -> (lines, encoding)."""
    text, encoding = read_text_file(path)
    lines = parse_dialogue(text)
    if not lines:
        raise CharloraError(f"{path} is empty: it needs lines like `Name:what they say`")
    return lines, encoding
