"""bench/memory_data.py: the plain conversations are the ones the committed
JSONs were measured on, and --chatty only pads their turns."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from memory_data import conversations, shares_content_word  # noqa: E402

from charlora.memory.text import sentences  # noqa: E402


def digest(convs) -> str:
    lines = "\n".join(f"{l.speaker}:{l.text}:{t}" for c in convs for l, t in zip(c.lines, c.times))
    questions = "\n".join(f"{q.kind}|{q.text}|{q.evidence}" for c in convs for q in c.questions)
    return hashlib.sha256((lines + questions).encode()).hexdigest()


def test_the_plain_conversations_are_those_of_the_committed_measurements():
    # Digests of the first three conversations of each split as drawn at commit 0beb287, before --chatty.
    assert digest(conversations("tune", 3, 0)) == "ca06b55a032ed99c9489355e50ea90b7b805b3d6c6558dd6ff40b94438a226fb"
    assert digest(conversations("heldout", 3, 0)) == "dc9ed82efa5702d3e9c3735d8b34e7bdd2664892e6bc78d967f168bb574e535d"


def test_chatty_pads_each_turn_and_keeps_paraphrases_free_of_the_evidence_words():
    for split in ("tune", "heldout"):
        for plain, chatty in zip(conversations(split, 2, 0), conversations(split, 2, 0, chatty=True)):
            assert chatty.times == plain.times and chatty.questions == plain.questions
            assert [l.speaker for l in chatty.lines] == [l.speaker for l in plain.lines]
            assert all(p.text in c.text for p, c in zip(plain.lines, chatty.lines))
            padded = sum(c.text != p.text for p, c in zip(plain.lines, chatty.lines))
            assert 0.6 < padded / len(plain.lines) < 0.9  # three turns in four, by the two coin flips
            assert max(len(sentences(c.text)) for c in chatty.lines) >= 3
            for q in chatty.questions:
                if q.kind == "paraphrase":
                    asked = q.text
                    for name in chatty.speakers:
                        asked = asked.replace(name, "")
                    assert not shares_content_word(asked, chatty.lines[q.evidence[0]].text), q.text


def test_reserved_slots_put_each_parts_top_first_then_the_hybrids_order():
    from memory_slots import reserved

    assert reserved([1, 2, 3, 4, 5, 6], [9, 1], [8, 2], 1, 1) == [9, 8, 1, 2, 3]
    assert reserved([1, 2, 3, 4, 5, 6], [1, 7], [2, 8], 1, 1) == [1, 2, 3, 4, 5]  # already there: nothing moves
    assert reserved([1, 2, 3, 4, 5, 6], [7, 8], [9], 2, 1) == [7, 8, 9, 1, 2]
    assert reserved([1, 2, 3], [7], [], 0, 0) == [1, 2, 3]


def test_duels_count_the_questions_won_and_lost_against_each_part():
    from memory_slots import duels

    rows = [{"kind": "single", "evidence": [1], "hybrid": [1], "keyword": [2], "embedding": [1]},
            {"kind": "single", "evidence": [1], "hybrid": [2, 3, 4, 5, 6, 1], "keyword": [1], "embedding": [3]},
            {"kind": "multi-hop", "evidence": [1, 2], "hybrid": [1, 2], "keyword": [1], "embedding": [1, 2]}]
    assert duels(rows) == {"multi-hop": {"keyword": {"above": 1, "below": 0}},
                           "single": {"keyword": {"above": 1, "below": 1}}}  # no swap with embedding: no entry
