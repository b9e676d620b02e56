"""Hybrid recall's fusion: the keyword side's weight follows how much of the
question its best match explains (retrieve.adaptive_weight), so one shared
word no longer lifts a wrong line over the paraphrase the embedding found;
then pseudo-relevance feedback (retrieve.feedback_words) searches the words of
the best match that the question lacks.  The weight tests run without the
feedback (feedback_weight=0) so that their relevances are the fusion's alone."""
from __future__ import annotations

import math

import numpy as np
import pytest

from charlora.dialogue import Line
from charlora.memory import MemoryStore
from charlora.memory.retrieve import (FEEDBACK_WEIGHT, KEYWORD_HALF, KEYWORD_WEIGHT, adaptive_weight, coverage,
                                      feedback_text, feedback_words, retrieve, turn_keyword_search)
from charlora.memory.vectors import DTYPE


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


def stored(cos: float) -> float:
    """The cosine of unit(cos) with (1, 0) as recall reads it: the cache holds its rows
    in vectors.DTYPE (float16), so 0.4 is 0.39990234375 (0.5 is exact)."""
    return float(DTYPE(cos))


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
    fixed = retrieve(store, QUESTION, "hybrid", embedder, k=2, keyword_weight=0.4, adaptive=False, feedback_weight=0)
    assert [h.text for h in fixed] == [LOOKALIKE, EVIDENCE]  # the old rule: 0.4 x keyword tips it
    hits = retrieve(store, QUESTION, "hybrid", embedder, k=2, feedback_weight=0)
    assert [h.text for h in hits] == [EVIDENCE, LOOKALIKE]
    w = adaptive_weight(KEYWORD_WEIGHT, 0.25)  # 0.125: the best match explains a quarter of the question
    assert hits[0].keyword == 0.0 and hits[0].relevance == pytest.approx((1 - w) * 0.5, abs=1e-6)
    assert hits[1].relevance == pytest.approx(w * hits[1].keyword + (1 - w) * stored(0.4), abs=1e-6)


def test_a_question_its_keyword_match_explains_keeps_the_keyword_weight(store):
    question = "What does Gwen read in her book club?"  # content words: gwen, read, book, club
    embedder = FixedEmbedder({question: (1.0, 0.0), EVIDENCE: unit(0.5), LOOKALIKE: unit(0.4)})
    assert coverage(question, LOOKALIKE) == 0.5
    hits = retrieve(store, question, "hybrid", embedder, k=2, feedback_weight=0)
    w = adaptive_weight(KEYWORD_WEIGHT, 0.5)
    assert w == 0.25 and hits[0].text == LOOKALIKE
    assert hits[0].relevance == pytest.approx(w * hits[0].keyword + (1 - w) * stored(0.4), abs=1e-6)


def test_feedback_words_are_the_best_matchs_content_words_the_question_lacks():
    assert feedback_words("What does Caroline play musically?", "My niece is learning the viola too.") == \
        "niece learning viola"
    assert feedback_words("What did Nadia's boss buy?", "My boss is a guy called Boris.") == \
        "guy called boris"  # "boss" is asked already
    assert feedback_words("Is my sister well?", "My sister.") == ""  # nothing new: no second search
    assert FEEDBACK_WEIGHT == 0.05


PLAY = "What does Caroline play musically?"       # no word of any line below
HARP = "I've been learning the harp for two years."  # the evidence, third by cosine
VIOLA = "My niece is learning the viola too."      # the look-alike, first by cosine: its "learning" is the evidence's
RIVER = "I went for a walk by the river."          # second by cosine, shares no word with the look-alike
FILLER = ["The bus was late again.", "I had toast for breakfast.", "My phone battery died.", "I need new shoes.",
          "The coffee here is not great.", "There's a new bakery on the corner."]


@pytest.fixture
def music(tmp_path):
    store = MemoryStore(tmp_path / "m.sqlite", "Bob", "Caroline")
    sid, _, _ = store.session("s1", 1.0)
    for i, text in enumerate((HARP, VIOLA, RIVER, *FILLER)):
        store.add_turn(sid, Line("Caroline", text), 2.0 + i)
    embedder = FixedEmbedder({PLAY: (1.0, 0.0), HARP: unit(0.30), VIOLA: unit(0.50), RIVER: unit(0.305),
                              **{t: unit(0.05) for t in FILLER}})
    yield store, embedder
    store.close()


def test_the_best_matchs_words_lift_the_evidence_that_shares_them(music):
    store, embedder = music
    before = retrieve(store, PLAY, "hybrid", embedder, k=3, feedback_weight=0)
    assert [h.text for h in before] == [VIOLA, RIVER, HARP]
    hits = retrieve(store, PLAY, "hybrid", embedder, k=3)
    assert [h.text for h in hits] == [VIOLA, HARP, RIVER]
    (harp_bm25,) = [s for ref, s in turn_keyword_search(store, feedback_words(PLAY, VIOLA), 10) if ref == 1]
    g = FEEDBACK_WEIGHT  # no keyword match: the fused relevance is the cosine alone
    assert hits[1].relevance == pytest.approx((1 - g) * stored(0.30) + g * harp_bm25 / (harp_bm25 + KEYWORD_HALF), abs=1e-6)
    assert hits[2].relevance == pytest.approx((1 - g) * stored(0.305), abs=1e-6)  # the feedback found nothing in it


def test_feedback_takes_the_words_of_the_sentence_the_embedding_matched():
    chatty = "Ha, I know the feeling. " + VIOLA
    assert feedback_text(chatty, 2) == VIOLA and feedback_text(chatty, 1) == "Ha, I know the feeling."
    # The whole turn: its own row was best, or it has no such part (a turn of one sentence has none).
    assert feedback_text(chatty, 0) == feedback_text(chatty, 3) == chatty and feedback_text(VIOLA, 1) == VIOLA


def test_small_talk_around_the_best_match_finds_nothing(tmp_path):
    # The best match is a chatty turn whose viola sentence the embedding found; its
    # "Ha, I know the feeling." would have lifted a line about feelings by "feeling".
    chatty, feelings = "Ha, I know the feeling. " + VIOLA, "Nobody likes that feeling."
    store = MemoryStore(tmp_path / "m.sqlite", "Bob", "Caroline")
    sid, _, _ = store.session("s1", 1.0)
    for i, text in enumerate((HARP, chatty, feelings, *FILLER)):
        store.add_turn(sid, Line("Caroline", text), 2.0 + i)
    embedder = FixedEmbedder({PLAY: (1.0, 0.0), HARP: unit(0.30), chatty: unit(0.35), VIOLA: unit(0.50),
                              "Ha, I know the feeling.": unit(0.05), feelings: unit(0.05),
                              **{t: unit(0.05) for t in FILLER}})
    hits = {h.text: h for h in retrieve(store, PLAY, "hybrid", embedder, k=9)}
    assert hits[chatty].embedding == pytest.approx(stored(0.50))  # its best row: the viola sentence
    g = FEEDBACK_WEIGHT
    assert hits[HARP].relevance > (1 - g) * stored(0.30)  # "learning": lifted
    assert hits[feelings].relevance == pytest.approx((1 - g) * stored(0.05), abs=1e-6)  # not lifted
    store.close()


def test_feedback_does_not_bring_back_a_line_the_window_holds(music):
    store, embedder = music
    hits = retrieve(store, PLAY, "hybrid", embedder, k=9, exclude_turns=[1])
    assert HARP not in [h.text for h in hits] and hits[0].text == VIOLA
