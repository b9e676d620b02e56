"""The memory file across versions and bad input, and the in-memory vector
cache against a brute-force reference: a schema-1 file (written with the SQL
of the code before schema 2) and a schema-2 file open, migrate and recall with
nothing lost; a
damaged file, a folder and a newer schema each stop with one CharloraError
and leave the file byte for byte as it was."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import chat
from charlora.dialogue import Line
from charlora.errors import CharloraError
from charlora.memory import SCHEMA_VERSION, ChatMemory, MemorySettings, MemoryStore
from charlora.memory.vectors import searched_rows
from charlora.memory.embed import turn_rows, turn_vectors
from charlora.memory.retrieve import retrieve
from charlora.memory.text import parts
from charlora.memory.vectors import DTYPE, VectorCache
from conftest import REPO
from test_memory import Clock, HashEmbedder, words

# Schema 1 exactly as charlora/memory/store.py wrote it before schema 2 (commit eb41077).
SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, started REAL NOT NULL);
CREATE TABLE turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    speaker TEXT,
    text TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX turns_by_session ON turns(session_id, id);
CREATE TABLE summaries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id INTEGER NOT NULL UNIQUE REFERENCES sessions(id),
    text TEXT NOT NULL,
    first_turn INTEGER NOT NULL,
    last_turn INTEGER NOT NULL,
    method TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE facts (id INTEGER PRIMARY KEY AUTOINCREMENT, text TEXT NOT NULL UNIQUE, turn_id INTEGER, created REAL NOT NULL);
CREATE TABLE vectors (kind TEXT NOT NULL, ref INTEGER NOT NULL, model TEXT NOT NULL, vec BLOB NOT NULL,
                      PRIMARY KEY (kind, ref, model));
CREATE VIRTUAL TABLE turns_fts USING fts5(text, content='turns', content_rowid='id', tokenize='porter unicode61');
CREATE VIRTUAL TABLE summaries_fts USING fts5(text, content='summaries', content_rowid='id', tokenize='porter unicode61');
CREATE TRIGGER turns_ai AFTER INSERT ON turns BEGIN
    INSERT INTO turns_fts(rowid, text) VALUES (new.id, new.text); END;
CREATE TRIGGER turns_ad AFTER DELETE ON turns BEGIN
    INSERT INTO turns_fts(turns_fts, rowid, text) VALUES ('delete', old.id, old.text);
    DELETE FROM vectors WHERE kind = 'turn' AND ref = old.id; END;
CREATE TRIGGER summaries_ai AFTER INSERT ON summaries BEGIN
    INSERT INTO summaries_fts(rowid, text) VALUES (new.id, new.text); END;
CREATE TRIGGER summaries_ad AFTER DELETE ON summaries BEGIN
    INSERT INTO summaries_fts(summaries_fts, rowid, text) VALUES ('delete', old.id, old.text);
    DELETE FROM vectors WHERE kind = 'summary' AND ref = old.id; END;
CREATE TRIGGER summaries_au AFTER UPDATE ON summaries BEGIN
    INSERT INTO summaries_fts(summaries_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO summaries_fts(rowid, text) VALUES (new.id, new.text);
    DELETE FROM vectors WHERE kind = 'summary' AND ref = old.id; END;
"""
TURNS = [("Alice", "My sister is called Ana."), ("Bob", "My sister is called Greta."),
         ("Alice", "The bus was late again."), ("Bob", "Buses, eh.")]


def schema_1_file(path):
    """A memory file as the schema-1 code left it: two sessions, turns, a summary, a fact, a (text-only) vector."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.executescript(f"BEGIN; {SCHEMA_1} INSERT INTO meta VALUES ('character', 'Bob'), ('user', 'Alice'); "
                     "PRAGMA user_version = 1; COMMIT;")
    db.execute("INSERT INTO sessions VALUES (1, 's1', 100.0), (2, 's2', 200.0)")
    for i, (speaker, text) in enumerate(TURNS):
        db.execute("INSERT INTO turns (session_id, speaker, text, created) VALUES (1, ?, ?, ?)",
                   (speaker, text, 101.0 + i))
    db.execute("INSERT INTO summaries (session_id, text, first_turn, last_turn, method, updated) VALUES "
               "(1, 'Alice: My sister is called Ana.', 1, 2, 'extractive', 150.0)")
    db.execute("INSERT INTO facts (text, turn_id, created) VALUES ('My sister is called Ana.', 1, 101.0)")
    db.execute("INSERT INTO vectors VALUES ('turn', 1, 'hash-512', ?)", (np.ones(512, np.float32).tobytes(),))
    db.close()


def dump(path) -> dict:
    db = sqlite3.connect(path)
    out = {t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
           for t in ("meta", "sessions", "turns", "summaries", "facts")}
    db.close()
    return out


def test_a_schema_1_file_migrates_with_nothing_lost_and_recalls_by_speaker(tmp_path):
    path = tmp_path / "Bob--Alice.sqlite"
    schema_1_file(path)
    before = dump(path)
    store = MemoryStore(path, "Bob", "Alice")
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert dump(path) == before
    # The old text-only turn vector is gone (it is made again from "Speaker: text"); FTS5 now has the speaker.
    assert store.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0] == 0
    kw = retrieve(store, "What is Alice's sister called?", "keyword", k=3)
    # Alice's line (and the summary that quotes it) before Bob's line of the same words.
    assert [(h.kind, h.id) for h in kw] == [("summary", 1), ("turn", 1), ("turn", 2)]
    assert kw[1].keyword > kw[2].keyword
    hits = retrieve(store, "What is Alice's sister called?", "hybrid", HashEmbedder(), exclude_summaries=[1], k=2)
    assert [(h.kind, h.id) for h in hits] == [("turn", 1), ("turn", 2)] and hits[0].embedding > hits[1].embedding
    assert store.db.execute("SELECT COUNT(*) FROM vectors WHERE kind = 'turn'").fetchone()[0] == len(TURNS)
    store.close()
    # Opened again: already schema 3, nothing to do, the same turns.
    again = MemoryStore(path, "Bob", "Alice")
    assert [t.text for t in again.turns()] == [t for _, t in TURNS]
    again.close()


# Schema 3 changed one trigger.  Schema 2's, as charlora/memory/store.py wrote it
# (commit 0beb287): a deleted turn took only its own vector with it.
SCHEMA_2_TURNS_AD = """
DROP TRIGGER turns_ad;
CREATE TRIGGER turns_ad AFTER DELETE ON turns BEGIN
    INSERT INTO turns_fts(turns_fts, rowid, speaker, text) VALUES ('delete', old.id, old.speaker, old.text);
    DELETE FROM vectors WHERE kind = 'turn' AND ref = old.id; END;
"""
CHATTY = [("Alice", "Ha, I know the feeling. My sister is called Ana. The bus was late again."),
          ("Bob", "Buses, eh.")]


def schema_2_file(path):
    """A memory file as the schema-2 code left it: today's tables with schema 2's
    trigger and version, and one vector a turn (turn_vectors)."""
    store = MemoryStore(path, "Bob", "Alice")
    sid, _, _ = store.session("s1", 100.0)
    for i, (speaker, text) in enumerate(CHATTY):
        store.add_turn(sid, Line(speaker, text), 101.0 + i)
    store.add_fact("My sister is called Ana.", 1, 101.0)
    store.add_vectors("turn", "hash-512", dict(zip([1, 2], turn_vectors(HashEmbedder(), CHATTY))))
    store.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"BEGIN; {SCHEMA_2_TURNS_AD} PRAGMA user_version = 2; COMMIT;")
    db.close()


def test_a_schema_2_file_migrates_keeping_its_vectors_and_new_turns_get_their_sentences(tmp_path):
    path = tmp_path / "Bob--Alice.sqlite"
    schema_2_file(path)
    before = dump(path)
    store = MemoryStore(path, "Bob", "Alice")
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert dump(path) == before
    vectors = lambda: store.db.execute("SELECT kind, ref FROM vectors ORDER BY kind, ref").fetchall()
    # Nothing to embed again: the old turns keep their one vector and are scored by it.
    assert vectors() == [("turn", 1), ("turn", 2)]
    embedder = HashEmbedder()
    q = embedder.embed(["What is Alice's sister called?"])[0]
    hits = retrieve(store, "What is Alice's sister called?", "embedding", embedder, k=2)
    assert [h.id for h in hits] == [1]  # Bob's line shares no word with it
    assert hits[0].embedding == pytest.approx(float(turn_vectors(embedder, CHATTY[:1])[0].astype(DTYPE) @ q))
    # A turn of several sentences written now also stores its sentences' vectors.
    said = ("Alice", "Oh really? My brother is called Sam. Anyway, the bus was late again.")
    sid = store.session("s1")[0]
    turn = store.add_turn(sid, Line(*said), 103.0)
    store.add_vectors("turn", embedder.name, {turn: turn_rows(embedder, [said])[0]})
    assert vectors() == [("sentences", 3), ("turn", 1), ("turn", 2), ("turn", 3)]
    blob = store.db.execute("SELECT vec FROM vectors WHERE kind = 'sentences'").fetchone()[0]
    sentences = np.frombuffer(blob, np.float32).reshape(-1, 512)
    assert np.allclose(sentences, turn_vectors(embedder, [("Alice", p) for p in parts(said[1])]))
    # Read back from the file as the next chat would: turn 3 is searched by its three
    # sentences' rows (vectors.searched_rows), as it was when written; turns 1 and 2, whose
    # old vectors hold no sentences, by their own.
    reopened = MemoryStore(path, "Bob", "Alice")
    again = reopened.vectors("turn", "hash-512")
    reopened.close()
    for cache in (again, store.vectors("turn", "hash-512")):
        order = np.argsort(cache.ids[: cache.n], kind="stable")
        assert cache.ids[: cache.n][order].tolist() == [1, 2, 3, 3, 3] and cache.distinct == 3
        assert cache.parts[: cache.n][order].tolist() == [0, 0, 1, 2, 3]
        assert np.allclose(cache.matrix[: cache.n][order][2:], sentences, rtol=0, atol=5e-4)
    # A turn scores by its best row: the sentence that says it, above the whole turn's mean.
    q = embedder.embed(["What is Alice's brother called?"])[0]
    hits = retrieve(store, "What is Alice's brother called?", "embedding", embedder, k=1)
    whole = turn_vectors(embedder, [said])[0]
    assert [h.id for h in hits] == [3]
    assert hits[0].embedding == pytest.approx(float(sentences[1].astype(DTYPE) @ q)) and float(sentences[1] @ q) > whole @ q
    # Each row knows its sentence, as written and as read back: the best is the second (part 2).
    assert [(n.id, n.part) for n in store.vectors("turn", "hash-512").search(q, 1)] == [(3, 2)]
    assert [(n.id, n.part) for n in again.search(q, 1)] == [(3, 2)]
    # Forgetting the turn takes its sentences' vectors too (schema 3's trigger), and from the cache.
    assert store.delete_turn(3)
    assert vectors() == [("turn", 1), ("turn", 2)]
    cache = store.vectors("turn", "hash-512")
    assert sorted(cache.ids[: cache.n]) == [1, 2] and cache.distinct == 2
    store.close()


def test_a_turn_of_one_sentence_keeps_one_vector_and_a_long_one_at_most_16():
    lines = [("Alice", "My sister is called Ana."), ("Bob", "Oh. Nice!"),
             ("Alice", " ".join(f"Line {i} here." for i in range(20)))]
    rows = turn_rows(HashEmbedder(), lines)
    assert [len(r) for r in rows] == [1, 3, 17]
    assert np.allclose(np.stack([r[0] for r in rows]), turn_vectors(HashEmbedder(), lines))
    assert parts("Oh. Nice!") == ["Oh.", "Nice!"] and parts("Just one, really.") == []
    assert parts(lines[2][1])[-1] == " ".join(f"Line {i} here." for i in range(15, 20))


def damaged_file(path) -> bytes:
    """A memory of 400 turns whose pages after the first few are overwritten; the header is intact."""
    store = MemoryStore(path, "Bob", "Alice")
    sid, _, _ = store.session("s1", 1.0)
    with store.db:
        store.db.execute("BEGIN")
        for i in range(400):
            store.add_turn(sid, Line("Alice", f"Line number {i} about the garden and the weather."), 2.0 + i)
    store.close()
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[4 * page : 12 * page] = bytes(range(256)) * (8 * page // 256)
    path.write_bytes(bytes(data))
    return bytes(data)


def test_a_damaged_file_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "Bob--Alice.sqlite"
    data = damaged_file(path)
    with pytest.raises(CharloraError) as err:
        MemoryStore(path, "Bob", "Alice")
    assert str(err.value) == (f"memory file {path} is unreadable (damaged: Page 5: btreeInitPage() returns error "
                              "code 11); move it away to start a new memory, nothing was changed")
    assert path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, f"{path.name}.lock"]  # no -wal, no -shm


FULL_DISK = """
import resource, signal, sys
from charlora.memory import MemoryStore
from charlora.errors import CharloraError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
try:
    MemoryStore(sys.argv[1], "Bob", "Alice")
except CharloraError as exc:
    print(exc)
"""


@pytest.mark.parametrize("new", [True, False])
def test_a_disk_that_takes_no_more_leaves_nothing_behind_and_says_so(tmp_path, new):
    """A new user's memory on a full disk left a 0-byte file, and an existing
    memory was called "unreadable (disk I/O error); move it away", advice
    that throws a good memory away.  A file-size limit stands in for the full
    disk: writes past it fail as they would there."""
    path = tmp_path / "Bob--Alice.sqlite"
    if not new:
        MemoryStore(path, "Bob", "Alice").close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    said = subprocess.run([sys.executable, "-c", FULL_DISK, str(path), "0"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert said.stdout.startswith(f"cannot open memory file {path} (") and said.stdout.endswith(
        "): the disk is full or failing; free some space or give another --memory_dir (nothing was changed)\n"), said
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_chat_py_gives_one_error_line_for_a_damaged_file_a_folder_and_a_newer_schema(tmp_path, capsys):
    def run(memory_dir):
        rc = chat.main(["-m", "nope", "--models_dir", str(tmp_path), "-n", "Bob", "-u", "Alice",
                        "--memory_dir", str(memory_dir), "--say", "hi"])
        out, err = capsys.readouterr()
        assert rc == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err
        return err

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    data = damaged_file(damaged / "Bob--Alice.sqlite")
    assert "is unreadable" in run(damaged)
    assert (damaged / "Bob--Alice.sqlite").read_bytes() == data

    folder = tmp_path / "folder"
    (folder / "Bob--Alice.sqlite").mkdir(parents=True)
    assert run(folder) == (f"error: memory file {folder / 'Bob--Alice.sqlite'} is a folder; "
                           "give --memory_dir the folder instead\n")
    assert list((folder / "Bob--Alice.sqlite").iterdir()) == []

    newer = tmp_path / "newer"
    newer.mkdir()
    MemoryStore(newer / "Bob--Alice.sqlite", "Bob", "Alice").close()
    # Closed before the bytes are read: the file is in WAL mode, and an unclosed connection
    # checkpoints the change into the file whenever the garbage collector gets to it (in the
    # full suite, during run() below, which then looked like chat.py changing the file).
    con = sqlite3.connect(newer / "Bob--Alice.sqlite")
    con.execute("PRAGMA user_version = 4")
    con.close()
    data = (newer / "Bob--Alice.sqlite").read_bytes()
    assert run(newer) == (f"error: memory file {newer / 'Bob--Alice.sqlite'} has schema version 4, newer than this "
                          "charlora reads (3); update charlora or use another --memory_dir\n")
    assert (newer / "Bob--Alice.sqlite").read_bytes() == data


@pytest.mark.parametrize("read_only", ["file", "folder"])
def test_a_memory_on_a_read_only_disk_is_called_read_only_not_damaged(tmp_path, monkeypatch, read_only):
    """It said "is unreadable (unable to open database file); move it away",
    advice that throws a good memory away.  (os.access stands in for a
    read-only mount, which root's tests can't make.)"""
    path = tmp_path / "Bob--Alice.sqlite"
    MemoryStore(path, "Bob", "Alice").close()
    data = path.read_bytes()
    where = path if read_only == "file" else tmp_path
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if (Path(p) == where and mode == os.W_OK) else real(p, mode))
    with pytest.raises(CharloraError) as err:
        MemoryStore(path, "Bob", "Alice")
    assert str(err.value) == (f"memory file {path} can't be written: {where} is read-only; make it writable or give "
                              "another --memory_dir (nothing was changed)")
    assert path.read_bytes() == data


def test_a_turn_of_several_sentences_is_searched_by_its_sentences_alone():
    one, three = np.eye(4, dtype=np.float32)[:1], np.eye(4, dtype=np.float32)
    ids, rows, parts = searched_rows({7: one, 9: three})  # 9: its own row, then three sentences'
    assert ids == [7, 9, 9, 9] and parts == [0, 1, 2, 3]
    assert rows.tolist() == [one[0].tolist(), *three[1:].tolist()]


def test_vector_cache_matches_brute_force_through_adds_and_removes():
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((300, 16)).astype(np.float32)
    cache = VectorCache()
    for start in range(0, 300, 70):  # grows past its capacity several times
        cache.add(list(range(start + 1, min(start + 71, 301))), vecs[start : start + 70])
    for ref in (5, 300, 17):
        cache.remove(ref)
    q = rng.standard_normal(16).astype(np.float32)
    kept = [i for i in range(1, 301) if i not in (5, 300, 17, 42)]
    expect = sorted(kept, key=lambda i: -float(vecs[i - 1] @ q))[:10]
    got = cache.search(q, 10, skip={42})
    held = vecs.astype(DTYPE).astype(np.float32)  # the rows as the cache holds them
    assert [near.id for near in got] == sorted(kept, key=lambda i: -float(held[i - 1] @ q))[:10] == expect
    assert np.allclose([near.cosine for near in got], [held[i - 1] @ q for i in expect], rtol=0, atol=1e-5)
    assert cache.search(q, 500) and len(cache.search(q, 500)) == 297


def test_vector_cache_cosines_are_float32_ones_within_float16_rounding():
    # The cache holds float16 rows (half the memory and time of a search) and scores its
    # cut in float32: a cosine of unit vectors is off by the rows' rounding alone, well
    # under the gaps between neighbours, so the nearest ids are float32's.
    rng = np.random.default_rng(2)
    vecs = rng.standard_normal((3000, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    cache = VectorCache()
    cache.add(list(range(1, 3001)), vecs)
    for q in vecs[:20] + 0.5 * rng.standard_normal((20, 384)).astype(np.float32) / np.sqrt(384):
        q /= np.linalg.norm(q)
        exact = vecs @ q
        got = cache.search(q, 10)
        assert [near.id for near in got] == [int(i) + 1 for i in np.argsort(-exact)[:10]]
        assert max(abs(near.cosine - exact[near.id - 1]) for near in got) < 1e-4  # 3.2e-5 here; a float16 result: 2.0e-4


def test_vector_cache_scores_an_id_of_several_rows_by_its_best_row():
    rng = np.random.default_rng(1)
    vecs = rng.standard_normal((200, 8)).astype(np.float32)
    owner = np.repeat(np.arange(1, 41), 5)  # 40 ids of 5 rows each: most of a top-k's rows repeat an id
    cache = VectorCache()
    cache.add(list(owner), vecs, np.tile(np.arange(5), 40))  # each id's rows: its own, then 4 sentences
    cache.remove(7)  # rows move into the holes, and their parts with them
    q = rng.standard_normal(8).astype(np.float32)
    vecs = vecs.astype(DTYPE).astype(np.float32)  # as the cache holds them: the exact best rows of those
    best = {i: float(max(vecs[owner == i] @ q)) for i in range(1, 41) if i not in (7, 3)}
    expect = sorted(best, key=lambda i: -best[i])[:12]
    got = cache.search(q, 12, skip={3})
    assert [near.id for near in got] == expect
    assert np.allclose([near.cosine for near in got], [best[i] for i in expect], rtol=0, atol=1e-5)
    assert [near.part for near in got] == [int(np.argmax(vecs[owner == i] @ q)) for i in expect]
    assert len(cache.search(q, 100)) == 39


def test_turns_are_embedded_when_written_and_forgetting_drops_the_cached_vector(tmp_path):
    mem = ChatMemory.open(MemorySettings(memory_dir=tmp_path), "Bob", "Alice", count_tokens=words,
                          embedder=HashEmbedder(), clock=Clock())
    history = [Line(speaker, text) for speaker, text in TURNS]
    for line in history:
        mem.record(line)
    rows = mem.store.db.execute("SELECT ref, vec FROM vectors WHERE kind = 'turn' ORDER BY ref").fetchall()
    assert [r for r, _ in rows] == [1, 2, 3, 4]
    # The stored vector: the mean of the text's and "Speaker: text"'s embeddings (not renormalized).
    text, prefixed = HashEmbedder().embed(["My sister is called Ana.", "Alice: My sister is called Ana."])
    assert np.allclose(np.frombuffer(rows[0][1], np.float32), (text + prefixed) / 2, atol=1e-7)
    hits = retrieve(mem.store, "Alice sister", "embedding", mem.embedder, k=4)
    assert hits[0].id == 1
    mem.forget("t1", history)
    hits = retrieve(mem.store, "Alice sister", "embedding", mem.embedder, k=4)
    assert 1 not in [h.id for h in hits] and mem.store.vectors("turn", "hash-512").n == 3


class _OtherChatFirst:
    """store.db, except that just before its first session insert another chat's
    connection inserts a session of the same name: the race of two chats started
    in the same second (both found the name free, then both inserted it)."""

    def __init__(self, db, path, other_name):
        self.db, self.path, self.other_name, self.done = db, path, other_name, False

    def execute(self, sql, args=()):
        if sql.startswith("INSERT INTO sessions") and not self.done:
            self.done = True
            other = sqlite3.connect(self.path, isolation_level=None)
            other.execute("INSERT INTO sessions (name, started) VALUES (?, 0)", (self.other_name(args[0]),))
            other.close()
        return self.db.execute(sql, args)

    def __getattr__(self, attr):
        return getattr(self.db, attr)


@pytest.mark.parametrize("named", [False, True])
def test_two_chats_starting_a_session_at_once_both_get_one(tmp_path, named):
    path = tmp_path / "m.sqlite"
    first = MemoryStore(path, "Bob", "Alice")
    first.db = _OtherChatFirst(first.db, path, lambda name: name)
    sid, name, resumed = first.session("talk" if named else None, 1_767_225_600.0)
    if named:  # the other chat made "talk" a moment ago: this one resumes it
        assert (name, resumed) == ("talk", True)
    else:  # the other chat took the time's name: this one is the second of that second
        assert (name, resumed) == (time.strftime("%Y-%m-%d-%H%M%S", time.localtime(1_767_225_600.0)) + "-2", False)
    assert first.db.execute("SELECT id FROM sessions WHERE name = ?", (name,)).fetchone()[0] == sid
    first.db = first.db.db
    first.close()


def test_two_chats_creating_one_new_memory_file_at_once_both_open_it(tmp_path, monkeypatch):
    """Both saw no schema, both created it; the second got "table meta already
    exists", reported as "unreadable ... move it away".  Here the other chat's
    schema lands between this one's look at the file and its creation."""
    path = tmp_path / "Bob--Alice.sqlite"
    MemoryStore(path, "Bob", "Alice").close()  # the other chat, first
    monkeypatch.setattr(MemoryStore, "_check", lambda self: 0)  # this one looked while the file was still empty
    store = MemoryStore(path, "Bob", "Alice")
    assert store.db.execute("SELECT value FROM meta WHERE key = 'user'").fetchone() == ("Alice",)
    store.close()
