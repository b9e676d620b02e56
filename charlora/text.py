"""Text that reaches a terminal, a prompt or a dataset: no control sequences.

A chat export or a loaded file can carry ANSI/OSC escapes (which recolour or
retitle a terminal, or hide text), bidi overrides (which reorder what is
shown), lone surrogates (which no UTF-8 writer accepts) and line breaks inside
a name (which would forge a `Bob:` line in a `Name:line` prompt).  These pure
functions remove them; every pattern here runs in linear time.
"""
from __future__ import annotations

import re
import unicodedata

# Whole escape sequences go, not just their ESC byte, so no `[31m` is left in
# the text.  CSI: ESC [ (or the 8-bit CSI) params, intermediates, final byte.
# OSC/DCS/PM/APC strings run to BEL or ST; the terminator is optional so an
# unterminated string is removed to the next ESC/BEL in one pass (a required
# terminator would make every unterminated `ESC ]` rescan the rest: quadratic)
# and never past a line end, so cleaning line by line or all at once agree.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
    r"|(?:\x1b[\]PX^_]|[\x90\x9d\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[!-/]*[0-~]?"
)
# Bidi embeddings, overrides and isolates (U+202A-E, U+2066-9): they reorder
# what a terminal shows.  Zero-width joiners stay: emoji sequences need them.
_BIDI = dict.fromkeys([*range(0x202A, 0x202F), *range(0x2066, 0x206A)])
_SURROGATES = re.compile("[\ud800-\udfff]")


def strip_controls(text: str, keep: str = "\n\t") -> str:
    """`text` without escape sequences, bidi controls and control characters
    (Unicode category Cc), except those in `keep`; a lone surrogate becomes
    U+FFFD.  For anything printed to a terminal or put into a prompt."""
    if text.isprintable():  # no Cc, Cf, Cs, Zl, Zp: nothing to remove (and a C-speed test)
        return text
    text = _ESCAPES.sub("", text).translate(_BIDI)
    text = _SURROGATES.sub("\ufffd", text)
    if not any(unicodedata.category(ch) == "Cc" and ch not in keep for ch in set(text)):
        return text
    return "".join(ch for ch in text if ch in keep or unicodedata.category(ch) != "Cc")


# Control and separator characters that break or space text: they become a
# space rather than vanish, so "a\tb" stays two words.
SPACING = "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\u2028\u2029"
_TO_SPACE = dict.fromkeys(map(ord, SPACING), " ")


def clean_line(text: str) -> str:
    """One line of dialogue: controls removed, every line break and tab a
    space (other spacing kept as written)."""
    return strip_controls(text, keep=SPACING).translate(_TO_SPACE)


def clean_speaker(name: str) -> str:
    """A speaker's name on one line: controls gone, breaks and runs of spaces
    one space ("Evil\\nBob" -> "Evil Bob", never a second line)."""
    return " ".join(strip_controls(name, keep="\n\t").split())


def has_visible_text(text: str) -> bool:
    """False for text that shows nothing: only spaces, separators, control
    or format characters (a zero-width space is not a reply to learn)."""
    return any(unicodedata.category(ch)[0] not in "CZ" for ch in text)
