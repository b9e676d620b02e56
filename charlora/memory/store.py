"""Memory storage: one SQLite file per (character, user) pair.

Every turn is committed the moment it is said (WAL journal, synchronous=FULL),
so killing chat.py loses nothing that was already printed.  The schema version
lives in PRAGMA user_version; a file that is not a database, or that a newer
charlora wrote, stops with a CharloraError instead of being overwritten.

Tables: sessions (one a conversation), turns (every line, with the time it was
said), summaries (each session's rolling summary and the turn range it
covers), facts (what the user said about themselves), vectors (embeddings of
turns and summaries, per embedding model), plus FTS5 indexes over turns and
summaries kept in step by triggers.  Schema 2 indexes who said a turn in
its FTS5 row (a `speaker` column) and in its vector (embed.turn_vectors).
Schema 3 adds the vectors of the sentences of a turn of several (kind
'sentences', one row a turn holding them all; embed.turn_rows), deleted with
their turn.  Older files are migrated in place, in one transaction, when
opened (charlora/memory/schema.py).

Before anything is written, a file is opened read-only and checked (header,
schema version, PRAGMA quick_check), so a damaged or foreign file is refused
exactly as it was found.  quick_check reads every page: about 0.1 s per 100k
turns, once per chat run.

Embeddings are kept in memory too (vectors.VectorCache): read from the file once,
then kept in step with every write, so recall never re-reads the vectors; the rows
searched are those vectors.searched_rows picks.

A session is locked while a chat has it (an OS lock on one byte of
`<file>.lock`, at the session's id, gone with the process even if killed):
two chats on one --session wrote their lines into one conversation, each
blind to the other's, and each resumed the mix.  Other sessions of the same
file may be open at once (WAL).

Every write goes through `_write` or `transaction`, which check first that
the file is still the one opened (a memory folder deleted mid-chat took every
later turn into an unlinked file without a word) and turn SQLite's errors
(read-only, disk full) into one CharloraError naming the file.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlora.dialogue import Line
from charlora.errors import CharloraError
from charlora.files import make_folder
from charlora.memory.schema import MIGRATE_1, MIGRATE_2, SCHEMA, SCHEMA_VERSION
from charlora.memory.text import content_words
from charlora.memory.vectors import VectorCache, searched_rows



@dataclass(frozen=True)
class Turn:
    id: int
    session_id: int
    speaker: str | None
    text: str
    created: float

    @property
    def line(self) -> Line:
        return Line(self.speaker, self.text)


@dataclass(frozen=True)
class Summary:
    id: int
    session_id: int
    text: str
    first_turn: int
    last_turn: int
    method: str  # "model" or "extractive"
    updated: float


@dataclass(frozen=True)
class Fact:
    id: int
    text: str
    created: float


class MemoryStore:
    """The SQLite file of one (character, user) pair."""

    def __init__(self, path: str | Path, name: str, user: str):
        self.path = Path(path)
        if self.path.is_dir():
            raise CharloraError(f"memory file {self.path} is a folder; give --memory_dir the folder instead")
        make_folder(self.path.parent, "; give --memory_dir a folder")
        self._cache: dict[tuple[str, str], VectorCache] = {}
        # The two people of this memory, as keyword-query words (retrieve.turn_keyword_search).
        self.participants = frozenset(w for person in (name, user) for w in content_words(person))
        self._lock_fd: int | None = None
        self._held: int | None = None
        # What opening adds and a failed open must take away again: a new
        # user's file (0 bytes when the disk was full), the WAL's -wal and -shm
        # (which even the read-only check creates).  Of a file that passed the
        # check they stay: another chat may be using them.
        created = [p for p in (self.path, *(self.path.with_name(self.path.name + x) for x in ("-wal", "-shm")))
                   if not p.exists()]
        checked = False
        try:
            version = self._check() if self.path.exists() and self.path.stat().st_size else 0
            checked = True
            self._connect(version, name, user)
        except BaseException:
            for path in created if not checked or self.path in created else []:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            raise

    def _connect(self, version: int, name: str, user: str) -> None:
        # SQLite says "unable to open database file" of a good memory on a
        # read-only disk, which read as damaged ("move it away").
        for where in ([self.path] if self.path.exists() else []) + [self.path.parent]:
            if not os.access(where, os.W_OK):
                raise CharloraError(f"memory file {self.path} can't be written: {where} is read-only; make it "
                                    "writable or give another --memory_dir (nothing was changed)")
        try:
            # isolation_level=None: every statement commits on its own unless a
            # `with self.db:` block groups several.
            self.db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise CharloraError(f"cannot open memory file {self.path} ({exc})") from None
        try:
            self._open(version, name, user)
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise self._unopenable(exc) from None
        except BaseException:
            self.db.close()
            raise
        self._identity = self._file_identity()

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _check_in_place(self) -> None:
        if self._file_identity() != self._identity:
            raise CharloraError(f"memory file {self.path} was deleted or replaced during this chat; nothing more "
                                "can be remembered in it (/save FILE keeps the conversation; start chat.py again "
                                "for a new memory file)")

    @contextlib.contextmanager
    def _writing(self):
        """Around every write: the file is still the one opened, and SQLite's
        errors (read-only, disk full) become one CharloraError naming it."""
        self._check_in_place()
        try:
            yield
        except sqlite3.Error as exc:
            raise CharloraError(f"cannot write memory file {self.path} ({exc}); this was not remembered") from None

    def _write(self, sql: str, args=()) -> sqlite3.Cursor:
        """One write statement (committed on its own unless inside `transaction`)."""
        with self._writing():
            return self.db.execute(sql, args)

    @contextlib.contextmanager
    def transaction(self):
        """Writes that land together or not at all."""
        with self._writing(), self.db:
            self.db.execute("BEGIN")
            yield

    def _unopenable(self, exc: sqlite3.Error) -> CharloraError:
        """What SQLite's failure to open or read the file means to the user: a
        full or failing disk (a good memory read as "damaged" there), or a damaged file."""
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
            return CharloraError(f"cannot open memory file {self.path} ({exc}): the disk is full or failing; "
                                 "free some space or give another --memory_dir (nothing was changed)")
        return CharloraError(f"memory file {self.path} is unreadable ({exc}); move it away to start a new "
                             "memory, nothing was changed")

    def _check(self) -> int:
        """The schema version of an existing file, read without writing to it;
        CharloraError for a file this code must not touch."""
        try:
            # mode=ro: nothing here can change the file (the WAL index, if any, lives in -shm).
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise self._unopenable(exc) from None
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]  # reads the header: fails on a non-database
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version > SCHEMA_VERSION:
                raise CharloraError(f"memory file {self.path} has schema version {version}, newer than this "
                                    f"charlora reads ({SCHEMA_VERSION}); update charlora or use another --memory_dir")
            if version == 0 and tables:
                raise CharloraError(f"{self.path} is an SQLite file but not a charlora memory (no schema "
                                    "version); move it away or use another --memory_dir")
            problems = [r[0] for r in db.execute("PRAGMA quick_check(1)")]
            if problems != ["ok"]:  # e.g. "*** in database main ***\nPage 5: btreeInitPage() returns error code 11"
                first = [p for p in "\n".join(problems).splitlines() if p and not p.startswith("***")][:1]
                raise CharloraError(f"memory file {self.path} is unreadable (damaged: "
                                    f"{first[0] if first else 'quick_check failed'}); move it away to start a "
                                    "new memory, nothing was changed")
        except sqlite3.DatabaseError as exc:
            raise self._unopenable(exc) from None
        finally:
            db.close()
        return version

    def _open(self, version: int, name: str, user: str) -> None:
        self.db.execute("PRAGMA journal_mode = WAL")
        # FULL: each commit reaches the disk before the chat goes on; a turn
        # costs one fsync, nothing next to generating a reply.
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.execute("PRAGMA foreign_keys = ON")
        if version == 0:
            # One transaction: a file is either a whole schema with its version or untouched.
            quote = lambda s: "'" + s.replace("'", "''") + "'"
            try:
                self.db.executescript(f"BEGIN; {SCHEMA} INSERT INTO meta VALUES ('character', {quote(name)}), "
                                      f"('user', {quote(user)}); PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
            except sqlite3.OperationalError:
                # Two chats creating one new file at once: the other's schema landed first
                # ("table meta already exists"), which was reported as a damaged file.
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                if self.db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                    raise
        meta = dict(self.db.execute("SELECT key, value FROM meta"))
        if (meta.get("character"), meta.get("user")) != (name, user):
            raise CharloraError(f"memory file {self.path} belongs to {meta.get('character')!r} talking with "
                                f"{meta.get('user')!r}, not {name!r} with {user!r}")
        if version in (1, 2):
            # Schema 1's script rebuilds the keyword index with schema 3's triggers and drops every turn vector.
            try:
                self.db.executescript(f"BEGIN; {MIGRATE_1 if version == 1 else MIGRATE_2}")
                # execute, not executescript, which would commit the open transaction first
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # lets go of the session's lock
            self._lock_fd = self._held = None

    def _hold(self, session_id: int, name: str) -> None:
        """Lock `session_id` for this chat (and let go of the one held before)."""
        from charlora.guards import try_lock, unlock

        lock = self.path.with_name(self.path.name + ".lock")
        try:
            if self._lock_fd is None:
                self._lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try_lock(self._lock_fd, offset=session_id)
        except BlockingIOError:
            raise CharloraError(f"session {name!r} is open in another chat on {self.path}; leave that chat first, "
                                "or give another --session") from None
        except OSError as exc:
            raise CharloraError(f"cannot write {lock}: {exc.strerror or exc}") from None
        if self._held is not None and self._held != session_id:
            unlock(self._lock_fd, self._held)
        self._held = session_id

    # ------------------------------------------------------------ sessions

    def session(self, name: str | None, now: float | None = None) -> tuple[int, str, bool]:
        """(id, name, resumed): the named session if it exists, else a new one
        (named by its start time when `name` is None)."""
        now = time.time() if now is None else now
        # The insert decides whether a name is free, not a look before it (sessions.name is
        # UNIQUE): two chats started at once both saw a name free, and the second one's
        # insert failed with an error.  A new session is named by its start time, with
        # "-2", "-3"... when that is taken; a named one made a moment ago by another chat
        # is resumed (and its lock then says whether that chat still holds it).
        base = time.strftime("%Y-%m-%d-%H%M%S", time.localtime(now)) if name is None else None
        with self._writing():
            for n in itertools.count(1):
                if base is None:
                    row = self.db.execute("SELECT id FROM sessions WHERE name = ?", (name,)).fetchone()
                    if row is not None:
                        self._hold(row[0], name)
                        return row[0], name, True
                else:
                    name = base if n == 1 else f"{base}-{n}"
                try:
                    cur = self.db.execute("INSERT INTO sessions (name, started) VALUES (?, ?)", (name, now))
                    break
                except sqlite3.IntegrityError:  # taken, perhaps a moment ago
                    continue
        self._hold(cur.lastrowid, name)
        return cur.lastrowid, name, False

    # --------------------------------------------------------------- turns

    def add_turn(self, session_id: int, line: Line, now: float | None = None) -> int:
        now = time.time() if now is None else now
        cur = self._write("INSERT INTO turns (session_id, speaker, text, created) VALUES (?, ?, ?, ?)",
                          (session_id, line.speaker, line.text, now))
        return cur.lastrowid

    def turns(self, session_id: int | None = None) -> list[Turn]:
        where, args = ("WHERE session_id = ?", (session_id,)) if session_id is not None else ("", ())
        return [Turn(*r) for r in self.db.execute(
            f"SELECT id, session_id, speaker, text, created FROM turns {where} ORDER BY id", args)]

    def turns_by_id(self, ids) -> dict[int, Turn]:
        ids = list(ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        return {r[0]: Turn(*r) for r in self.db.execute(
            f"SELECT id, session_id, speaker, text, created FROM turns WHERE id IN ({marks})", ids)}

    def delete_turn(self, turn_id: int) -> bool:
        self._drop_cached("turn", turn_id)
        return self._write("DELETE FROM turns WHERE id = ?", (turn_id,)).rowcount > 0

    # ------------------------------------------------------------ summaries

    def summary(self, session_id: int) -> Summary | None:
        row = self.db.execute("SELECT id, session_id, text, first_turn, last_turn, method, updated FROM summaries "
                              "WHERE session_id = ?", (session_id,)).fetchone()
        return Summary(*row) if row else None

    def summaries(self) -> dict[int, Summary]:
        return {r[0]: Summary(*r) for r in self.db.execute(
            "SELECT id, session_id, text, first_turn, last_turn, method, updated FROM summaries")}

    def set_summary(self, session_id: int, text: str, first_turn: int, last_turn: int, method: str,
                    now: float | None = None) -> None:
        now = time.time() if now is None else now
        old = self.summary(session_id)
        if old is not None:  # the trigger drops its stored vector; the cached one goes too
            self._drop_cached("summary", old.id)
        self._write("INSERT INTO summaries (session_id, text, first_turn, last_turn, method, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(session_id) DO UPDATE SET text = excluded.text, "
                    "first_turn = excluded.first_turn, last_turn = excluded.last_turn, "
                    "method = excluded.method, updated = excluded.updated",
                    (session_id, text, first_turn, last_turn, method, now))

    def clear_summary(self, summary_id: int) -> bool:
        """Empty a summary but keep the range it covered, so the lines it
        summarized are not folded into the next summary again."""
        self._drop_cached("summary", summary_id)
        return self._write("UPDATE summaries SET text = '' WHERE id = ? AND text != ''",
                           (summary_id,)).rowcount > 0

    # ---------------------------------------------------------------- facts

    def add_fact(self, text: str, turn_id: int | None = None, now: float | None = None) -> int | None:
        """The new fact's id, or None when the same text is already kept."""
        now = time.time() if now is None else now
        cur = self._write("INSERT OR IGNORE INTO facts (text, turn_id, created) VALUES (?, ?, ?)",
                          (text, turn_id, now))
        return cur.lastrowid if cur.rowcount else None

    def facts(self) -> list[Fact]:
        return [Fact(*r) for r in self.db.execute("SELECT id, text, created FROM facts ORDER BY id")]

    def delete_fact(self, fact_id: int) -> bool:
        return self._write("DELETE FROM facts WHERE id = ?", (fact_id,)).rowcount > 0

    # ---------------------------------------------------------- keyword search

    def keyword_search(self, kind: str, query: str, limit: int) -> list[tuple[int, float]]:
        """[(turn or summary id, BM25 score, higher is better)] for an FTS5 query."""
        table = {"turn": "turns_fts", "summary": "summaries_fts"}[kind]
        if not query:
            return []
        # bm25() is lower-is-better (negative); flip it.
        rows = self.db.execute(f"SELECT rowid, -bm25({table}) FROM {table} WHERE {table} MATCH ? "
                               f"ORDER BY bm25({table}) LIMIT ?", (query, limit))
        return [(r[0], r[1]) for r in rows]

    # -------------------------------------------------------------- vectors

    def vectors(self, kind: str, model: str) -> "VectorCache":
        """The (kind, model) vectors, read from the file on first use and kept in memory after;
        a turn's sentence vectors sit in its cache as more rows under its id."""
        key = (kind, model)
        if key not in self._cache:
            read = lambda k: [(ref, np.frombuffer(blob, dtype=np.float32))
                              for ref, blob in self.db.execute("SELECT ref, vec FROM vectors WHERE kind = ? "
                                                               "AND model = ?", (k, model))]
            cache = VectorCache()
            pairs = read(kind)
            if pairs:
                dim = len(pairs[0][1])
                items = {ref: v[None] for ref, v in pairs}
                for ref, flat in read("sentences") if kind == "turn" else ():
                    if ref in items:
                        items[ref] = np.concatenate([items[ref], flat.reshape(-1, dim)])
                # One add for all: a call per turn was 1.1 s of a first recall at 100k turns.
                cache.add(*searched_rows(items))
            self._cache[key] = cache
        return self._cache[key]

    def add_vectors(self, kind: str, model: str, items: dict[int, np.ndarray]) -> None:
        """Store each id's vector, or for a turn its rows (embed.turn_rows): the first is the
        turn's own, any more its sentences', kept together as one 'sentences' row."""
        if not items:
            return
        items = {ref: np.atleast_2d(np.asarray(v, dtype=np.float32)) for ref, v in items.items()}
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?)",
                                [(kind, ref, model, rows[0].tobytes()) for ref, rows in items.items()])
            self.db.executemany("INSERT OR REPLACE INTO vectors VALUES ('sentences', ?, ?, ?)",
                                [(ref, model, rows[1:].tobytes()) for ref, rows in items.items() if len(rows) > 1])
        if (kind, model) in self._cache:
            self._cache[(kind, model)].add(*searched_rows(items))

    def unembedded(self, kind: str, model: str, after: int = 0) -> list[tuple[int, str | None, str]]:
        """[(id, speaker, text)] of turns (id > `after`) or non-empty summaries (speaker None) with no
        vector under `model`."""
        if kind == "turn":
            return list(self.db.execute(
                "SELECT id, speaker, text FROM turns WHERE id > ? AND NOT EXISTS (SELECT 1 FROM vectors "
                "WHERE kind = 'turn' AND ref = turns.id AND model = ?) ORDER BY id", (after, model)))
        return list(self.db.execute(
            "SELECT id, NULL, text FROM summaries WHERE text != '' AND NOT EXISTS (SELECT 1 FROM vectors "
            "WHERE kind = 'summary' AND ref = summaries.id AND model = ?) ORDER BY id", (model,)))

    def last_turn_id(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(id), 0) FROM turns").fetchone()[0]

    def _drop_cached(self, kind: str, ref: int) -> None:
        for (k, _), cache in self._cache.items():
            if k == kind:
                cache.remove(ref)
