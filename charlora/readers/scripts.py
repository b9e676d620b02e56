"""Readers for written drama: `Name:line` files, Fountain screenplays, stage
plays with `NAME.` prefixes, and Markdown plays with bold speaker names.

Each is a pure function text -> Reading.  Speeches that run over several
lines become one Line; stage directions, action and headings stay as
narration Lines (context, as `(Enter VIOLA)` is in a `Name:line` file);
scene headings also mark a break (Line.after_blank) for `--split_scenes`.
"""
from __future__ import annotations

import re

from charlora.dialogue import parse_dialogue
from charlora.readers.common import Blocks, Reading, physical_lines

MAX_NAME_WORDS = 5


def read_name_line(text: str) -> Reading:
    """The toolkit's own format, exactly as charlora.dialogue reads it."""
    return Reading(parse_dialogue(text))


# ------------------------------------------------------------------ Fountain
# https://fountain.io/syntax: a character cue is a line in capitals (an
# extension such as (V.O.) or (CONT'D) may follow, `^` marks dual dialogue,
# `@` forces a cue) after a blank line and directly above its dialogue.

_FOUNTAIN_TITLE_KEY = re.compile(
    r"^(?:title|credit|authors?|source|draft date|date|contact|copyright|notes|revision|font)\s*:", re.I
)
_FOUNTAIN_SCENE = re.compile(r"^(?:INT\.?/EXT|INT/EXT|I/E|INT|EXT|EST)[.\s]", re.I)
_FOUNTAIN_SCENE_NUMBER = re.compile(r"\s*#[^#\s]*#\s*$")
_TRAILING_PAREN = re.compile(r"\s*\([^()]*\)\s*$")
# A cue is a name and an extension or two; a longer line is action.  The cap
# also keeps the extension-stripping loop below from going quadratic.
_MAX_CUE_CHARS = 120


def _remove_spans(text: str, opening: str, closing: str) -> str:
    """`text` without each `opening ... closing` span (Fountain's /* boneyard */
    and [[notes]]); an unclosed opening is left as it is.  A regex such as
    `\\[\\[.*?\\]\\]` rescans the rest of the text from every unclosed `[[`
    (50,000 of them took 65 s); str.find never looks at a character twice."""
    out, pos = [], 0
    while (start := text.find(opening, pos)) != -1:
        end = text.find(closing, start + len(opening))
        if end == -1:
            break
        out.append(text[pos:start])
        pos = end + len(closing)
    out.append(text[pos:])
    return "".join(out)


def _fountain_cue(line: str) -> str | None:
    """The speaker's name if `line` is a character cue, else None."""
    if len(line) > _MAX_CUE_CHARS:
        return None
    forced = line.startswith("@")
    name = line[1:] if forced else line
    name = name.rstrip().removesuffix("^").rstrip()
    while (match := _TRAILING_PAREN.search(name)) and match.start() > 0:
        name = name[: match.start()]
    name = name.strip()
    if not name or not any(c.isalpha() for c in name) or name.startswith(("(", "!", "~", ">", "=", "#", ".")):
        return None
    if len(name.split()) > MAX_NAME_WORDS:
        return None
    # "HAMLET." is a play's speaker line, not a cue (the play reader takes it).
    if not forced and (name != name.upper() or name.endswith((".", ":"))):
        return None
    return name


def read_fountain(text: str) -> Reading:
    text = _remove_spans(_remove_spans(text, "/*", "*/"), "[[", "]]")
    rows = physical_lines(text)
    start = 0
    first = next((i for i, row in enumerate(rows) if row.strip()), len(rows))
    if first < len(rows) and _FOUNTAIN_TITLE_KEY.match(rows[first].strip()):
        # The title page runs to the first blank line.
        start = next((i for i in range(first, len(rows)) if not rows[i].strip()), len(rows))
    out = Blocks()
    blank_before = True
    for i in range(start, len(rows)):
        raw = rows[i]
        line = raw.strip()
        if not line:
            # Two spaces keep a dialogue block going across an empty line.
            if not (out.in_speech and raw.startswith("  ")):
                out.flush()
                blank_before = True
            continue
        after_blank, blank_before = blank_before, False
        next_line = rows[i + 1].strip() if i + 1 < len(rows) else ""
        if out.in_speech:
            out.add(line.removeprefix("~"))
            continue
        if after_blank and (_FOUNTAIN_SCENE.match(line) or (line.startswith(".") and line[1:2].isalnum())):
            out.scene(_FOUNTAIN_SCENE_NUMBER.sub("", line.removeprefix(".")))
            continue
        if line.startswith(("#", "=")) or (line.startswith(">") and not line.endswith("<")):
            out.flush()  # sections, synopses, page breaks and forced transitions are not heard
            continue
        if line.startswith(">") and line.endswith("<"):
            out.narration(line[1:-1])  # centred text
            continue
        if after_blank and line.isupper() and line.endswith("TO:"):
            out.flush()  # a transition: CUT TO:
            continue
        if after_blank and next_line and not line.startswith("!") and (name := _fountain_cue(line)):
            out.start(name)
            continue
        if not out.open:
            out.start(None)
        out.add(line.removeprefix("!"))
    return Reading(out.result())


# ---------------------------------------------------------------- stage plays
# Public-domain play texts write a speech as `HAMLET. To be, or not to be`
# (continuing on the following lines) or with `HAMLET.` on a line of its own
# above the speech.  Honorifics keep their full stop: `MRS. HIGGINS. Henry!`

_HONORIFIC = r"(?:MR|MRS|MS|DR|ST|MME|MLLE|MONS|REV|CAPT|COL|GEN|LT|SGT|PROF)"
_WORD = r"[^\W\d_][\w'’\-]*"
_PLAY_SPEAKER = re.compile(
    rf"^(?P<name>(?:{_HONORIFIC}\.\s+)?{_WORD}(?:\s+{_WORD}){{0,{MAX_NAME_WORDS - 1}}})\.(?:\s+(?P<text>\S.*))?$"
)
_PLAY_HEADING = re.compile(
    r"^(?:(?:ACT|SCENE)\s+(?:[IVXLC]+|\d+)\b|(?:PROLOGUE|EPILOGUE|INDUCTION)\b\.?\s*$)", re.I
)
# A whole line in brackets (`[Aloud.] Have you...` is a speech), in _italics_,
# or an entrance or exit.
_PLAY_DIRECTION = re.compile(
    r"^(?:\[[^\]]*\]?|\([^)]*\)|_.*_|(?:Enter|Exit|Exeunt|Re-enter|Manet|Flourish|Alarum|Sennet)\b.*)\.?$"
)
_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (?:THE|THIS) PROJECT GUTENBERG", re.I)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (?:THE|THIS) PROJECT GUTENBERG", re.I)
# Headings that look like an own-line `NAME.` but stand above a list or nothing.
_NOT_SPEAKERS = {"ACT", "SCENE", "THE END", "FINIS", "CURTAIN", "DRAMATIS PERSONAE", "PERSONS REPRESENTED",
                 "CHARACTERS", "CAST", "THE PERSONS OF THE PLAY"}


def _play_speaker(line: str) -> tuple[str, str] | None:
    match = _PLAY_SPEAKER.match(line)
    if not match:
        return None
    name = " ".join(match["name"].split())
    letters = sum(c.isalpha() for c in name)
    if (name != name.upper() or letters < 2 or name in _NOT_SPEAKERS or name.split()[0] in _NOT_SPEAKERS
            or re.fullmatch(_HONORIFIC, name)):  # "MRS. PRYCE, his wife." is not MRS speaking
        return None
    return name, match["text"] or ""


def _gutenberg_body(rows: list[str]) -> list[str]:
    """Drop the licence text around a Project Gutenberg book."""
    start = next((i + 1 for i, row in enumerate(rows) if _GUTENBERG_START.match(row.strip())), 0)
    end = next((i for i in range(start, len(rows)) if _GUTENBERG_END.match(rows[i].strip())), len(rows))
    return rows[start:end]


def read_play(text: str) -> Reading:
    rows = _gutenberg_body(physical_lines(text))
    out = Blocks()
    for raw in rows:
        line = raw.strip()
        if not line:
            if not (out.in_speech and not out.parts):  # `HAMLET.` alone may stand above a blank
                out.flush()
            continue
        if _PLAY_HEADING.match(line):
            out.scene(line)
        elif _PLAY_DIRECTION.match(line):
            out.interject(line)
        elif speaker := _play_speaker(line):
            name, speech = speaker
            out.start(name, speech)
        elif out.open:
            out.add(line)
        else:
            out.start(None, line)
    return Reading(out.result())


# ------------------------------------------------------------- Markdown plays
# **HAMLET:** To be ...   **Hamlet**: ...   **HAMLET.** ...   or **HAMLET** on
# its own line above the speech.  *Italic* or [bracketed] lines are stage
# directions; headings and horizontal rules separate scenes.

_MD_SPEAKER = re.compile(
    r"^(?:\*\*|__)(?P<name>[^\W\d_][^*_\n]{0,59}?)\s*(?P<inner>[:.])?(?:\*\*|__)\s*(?P<outer>[:.])?\s*(?P<text>.*)$"
)
# The closing #s are stripped in code: `(?P<text>.*?)\s*#*$` retried the
# trailing `\s*` at every character, quadratic on a long run of spaces.
_MD_HEADING = re.compile(r"^#{1,6}\s+(?P<text>.*)$")
_MD_RULE = re.compile(r"^(?:-{3,}|\*{3,}|_{3,})$")
_MD_DIRECTION = re.compile(r"^(?:\*(?!\*).*(?<!\*)\*|_(?!_).*(?<!_)_|\[[^\]]*\]|\([^)]*\))$")


def _markdown_speaker(line: str) -> tuple[str, str] | None:
    match = _MD_SPEAKER.match(line)
    if not match:
        return None
    name, text = " ".join(match["name"].split()), match["text"]
    if len(name.split()) > MAX_NAME_WORDS:
        return None
    # A bold word opening a paragraph ("**Suddenly** the lights go out") is
    # not a speaker unless punctuated as one, in capitals, or alone on its line.
    if not (match["inner"] or match["outer"] or name == name.upper() or not text):
        return None
    return name, text


def read_markdown(text: str) -> Reading:
    out = Blocks()
    for raw in physical_lines(text):
        line = raw.strip()
        if not line:
            if not (out.in_speech and not out.parts):  # **HAMLET** alone, then a blank, then the speech
                out.flush()
            continue
        if heading := _MD_HEADING.match(line):
            out.scene(heading["text"].rstrip("#").rstrip())
        elif _MD_RULE.match(line):
            out.scene()
        elif speaker := _markdown_speaker(line):
            out.start(*speaker)
        elif _MD_DIRECTION.match(line):
            out.interject(line)
        elif out.open:
            out.add(line)
        else:
            out.start(None, line)
    return Reading(out.result())
