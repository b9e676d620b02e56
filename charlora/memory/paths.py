"""Which file holds the memory of one (character, user) pair."""
from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path


def memory_file(memory_dir: str | Path, name: str, user: str) -> Path:
    """<memory_dir>/<name>--<user>.sqlite.  A name that is not already a plain
    file name is reduced to one plus `~` and 8 hex digits of its SHA-256, so
    that names reduced alike ("Ann Lee", "Ann_Lee", "Ann'Lee") get files of
    their own: they shared one, and every user after the first was refused.
    A file named the old way (the reduced names alone) stays this pair's while
    it is theirs, or can't be read to tell (its own error then says why); a
    pair whose file name another pair already holds gets both names hashed."""
    def plain(s: str) -> str:
        return re.sub(r"[^\w.-]+", "_", s).strip("._") or "_"

    def unique(s: str) -> str:
        return s if plain(s) == s else hashed(s)

    def hashed(s: str) -> str:
        return f"{plain(s)}~{hashlib.sha256(s.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"

    folder = Path(memory_dir)
    path = folder / f"{unique(name)}--{unique(user)}.sqlite"
    old = folder / f"{plain(name)}--{plain(user)}.sqlite"
    if old != path and not path.exists() and old.is_file() and _pair_of(old) in ((name, user), None):
        return old
    if path.is_file() and _pair_of(path) not in ((name, user), None):
        # Someone else's: an old-style file named as this plain name reads
        # ("Ann Lee"'s Bob--Ann_Lee.sqlite, and user "Ann_Lee"), or another
        # split of the same text at "--" ("Bob"/"Ann--Lee", "Bob--Ann"/"Lee").
        return folder / f"{hashed(name)}--{hashed(user)}.sqlite"
    return path


def _pair_of(path: Path) -> tuple[str | None, str | None] | None:
    """(character, user) a memory file belongs to, read without writing; None when unreadable."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta"))
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return meta.get("character"), meta.get("user")
