"""The memory file's SQL: its tables, indexes and triggers (schema version
SCHEMA_VERSION, in PRAGMA user_version), and the scripts that bring older
files to it (store.MemoryStore._open runs them, each in one transaction)."""
from __future__ import annotations

SCHEMA_VERSION = 3

# A deleted turn leaves the keyword index and takes its vectors, its sentences' too (schema 3).
TURNS_AD = """
CREATE TRIGGER turns_ad AFTER DELETE ON turns BEGIN
    INSERT INTO turns_fts(turns_fts, rowid, speaker, text) VALUES ('delete', old.id, old.speaker, old.text);
    DELETE FROM vectors WHERE kind IN ('turn', 'sentences') AND ref = old.id; END;
"""
# The keyword index of turns, with who said each (schema 2): "What is Caroline's
# sister called?" finds Caroline's line, not Melanie's "My sister is called Greta".
TURNS_FTS = """
CREATE VIRTUAL TABLE turns_fts USING fts5(speaker, text, content='turns', content_rowid='id',
                                          tokenize='porter unicode61');
CREATE TRIGGER turns_ai AFTER INSERT ON turns BEGIN
    INSERT INTO turns_fts(rowid, speaker, text) VALUES (new.id, new.speaker, new.text); END;
""" + TURNS_AD
# Schema 2 -> 3: a deleted turn takes its sentences' vectors with it.  The turns
# already there keep their one vector, and recall scores them by it as schema 2
# did; re-embedding every turn of several sentences at the first recall would
# stall a long memory for minutes (~8 embeddings such a turn, ~170 a second).
# Turns written after the migration get their sentences' vectors.
MIGRATE_2 = "DROP TRIGGER turns_ad;" + TURNS_AD
# Schema 1 -> 2: the speaker joins the keyword index (rebuilt from the turns), and
# turn vectors, embedded from the text alone, are dropped to be made again with
# the speaker (embed.turn_vectors).  Turns, sessions, summaries and facts are not touched.
MIGRATE_1 = """
DROP TRIGGER turns_ai; DROP TRIGGER turns_ad; DROP TABLE turns_fts;
""" + TURNS_FTS + """
INSERT INTO turns_fts(turns_fts) VALUES ('rebuild');
DELETE FROM vectors WHERE kind = 'turn';
"""

SCHEMA = """
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
-- porter: "named" finds "name"; unicode61 folds case and accents.
CREATE VIRTUAL TABLE summaries_fts USING fts5(text, content='summaries', content_rowid='id', tokenize='porter unicode61');
CREATE TRIGGER summaries_ai AFTER INSERT ON summaries BEGIN
    INSERT INTO summaries_fts(rowid, text) VALUES (new.id, new.text); END;
CREATE TRIGGER summaries_ad AFTER DELETE ON summaries BEGIN
    INSERT INTO summaries_fts(summaries_fts, rowid, text) VALUES ('delete', old.id, old.text);
    DELETE FROM vectors WHERE kind = 'summary' AND ref = old.id; END;
CREATE TRIGGER summaries_au AFTER UPDATE ON summaries BEGIN
    INSERT INTO summaries_fts(summaries_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO summaries_fts(rowid, text) VALUES (new.id, new.text);
    DELETE FROM vectors WHERE kind = 'summary' AND ref = old.id; END;
""" + TURNS_FTS
