"""Hybrid recall's fusion: the keyword side's weight follows how much of the
question its best match explains (retrieve.adaptive_weight), so one shared
word no longer lifts a wrong line over the paraphrase the embedding found."""
from __future__ import annotations

import math

import numpy as np
import pytest

from charlora.dialogue import Line
from charlora.memory import MemoryStore
from charlora.memory.retrieve import KEYWORD_WEIGHT, adaptive_weight, coverage, retrieve


def test_adaptive_weight_is_the_weight_times_the_best_coverage():
    assert adaptive_weight(0.5, 1.0) == 0.5
    assert adaptive_weight(0.5, 0.25) == 0.125
    assert adaptive_weight(0.4, 0.5) == 0.2
    assert adaptive_weight(0.5, 0.0) == 0.0  # no keyword match: embedding only
    assert adaptive_weight(0.5, 1.5) == 0.5 and adaptive_weight(0.5, -0.1) == 0.0  # clamped to [0, 1]
    assert KEYWORD_WEIGHT == 0.5


class FixedEmbedder:
    """Given unit vectors by text; "Speaker: text" gets its text's vector, so a
    turn's stored vector (the mean of the two) is exactly that vector."""

    name = "fixed-2"

    def __init__(self, vectors: dict[str, tuple[float, float]]):
        self.vectors = vectors

    def embed(self, texts):
        return np.array([self.vectors[t.partition(": ")[2] if t not in self.vectors else t] for t in texts],
                        dtype=np.float32)


QUESTION = "Which football club is Gwen a fan of?"  # content words: football, club, gwen, fan
EVIDENCE = "I support Napoli, win or lose."          # no word of the question: only the embedding finds it
LOOKALIKE = "My book club picked Emma this month."   # one word of it ("club"), about something else


def unit(cos: float) -> tuple[float, float]:
    return (cos, math.sqrt(1 - cos * cos))


@pytest.fixture
def store(tmp_path):
    store = MemoryStore(tmp_path / "m.sqlite", "Bob", "Gwen")
    sid, _, _ = store.session("s1", 1.0)
    for i, text in enumerate((EVIDENCE, LOOKALIKE)):
        store.add_turn(sid, Line("Gwen", text), 2.0 + i)
    yield store
    store.close()


def test_a_one_word_keyword_match_no_longer_outranks_the_paraphrase(store):
    embedder = FixedEmbedder({QUESTION: (1.0, 0.0), EVIDENCE: unit(0.5), LOOKALIKE: unit(0.4)})
    assert coverage(QUESTION, LOOKALIKE) == 0.25
    fixed = retrieve(store, QUESTION, "hybrid", embedder, k=2, keyword_weight=0.4, adaptive=False)
    assert [h.text for h in fixed] == [LOOKALIKE, EVIDENCE]  # the old rule: 0.4 x keyword tips it
    hits = retrieve(store, QUESTION, "hybrid", embedder, k=2)
    assert [h.text for h in hits] == [EVIDENCE, LOOKALIKE]
    w = adaptive_weight(KEYWORD_WEIGHT, 0.25)  # 0.125: the best match explains a quarter of the question
    assert hits[0].keyword == 0.0 and hits[0].relevance == pytest.approx((1 - w) * 0.5, abs=1e-6)
    assert hits[1].relevance == pytest.approx(w * hits[1].keyword + (1 - w) * 0.4, abs=1e-6)


def test_a_question_its_keyword_match_explains_keeps_the_keyword_weight(store):
    question = "What does Gwen read in her book club?"  # content words: gwen, read, book, club
    embedder = FixedEmbedder({question: (1.0, 0.0), EVIDENCE: unit(0.5), LOOKALIKE: unit(0.4)})
    assert coverage(question, LOOKALIKE) == 0.5
    hits = retrieve(store, question, "hybrid", embedder, k=2)
    w = adaptive_weight(KEYWORD_WEIGHT, 0.5)
    assert w == 0.25 and hits[0].text == LOOKALIKE
    assert hits[0].relevance == pytest.approx(w * hits[0].keyword + (1 - w) * 0.4, abs=1e-6)
