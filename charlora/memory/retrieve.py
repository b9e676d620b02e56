"""Long-term memory: find the earlier turns and session summaries that bear on
what the user just said.

Each candidate gets a relevance in [0, 1]:
- keyword: the mean of FTS5's BM25 over content words (porter-stemmed),
  squashed as s / (s + KEYWORD_HALF), and the share of the query's content
  words the candidate holds.  BM25 alone collapses in a young memory: with
  a handful of turns every word is common, its IDF is ~0, and nothing would
  pass the threshold; the share does not depend on the corpus;
- embedding: cosine similarity of unit vectors, below 0 counted as 0;
- hybrid: 0.3 x keyword + 0.7 x embedding (a candidate one method misses
  scores 0 there); the embedding carries paraphrase, the keyword rare names.
Then score = relevance + recency_weight * 0.5 ** (age / half-life), so among
equally relevant memories the newer wins; a candidate needs relevance >=
threshold.  Turns in the short-term window and this session's own summary
are excluded: they are in the prompt already.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from charlora.memory.embed import Embedder
from charlora.memory.store import MemoryStore
from charlora.memory.text import content_words, fts_query

METHODS = ("keyword", "embedding", "hybrid")
# BM25 score at which the keyword relevance is 0.5; one rare shared word among
# a few hundred turns scores about 5-8 in FTS5.
KEYWORD_HALF = 5.0
KEYWORD_CANDIDATES = 200
# hybrid relevance = this x keyword + the rest x embedding.  Chosen among 0.5,
# 0.35 and 0.2 on bench/memory.py --seed 0 (0.3: between the two that tied at
# recall@5); the numbers in docs/benchmarks.md are from --seed 1.
KEYWORD_WEIGHT = 0.3
DAY = 86400.0


@dataclass(frozen=True)
class Hit:
    kind: str  # "turn" or "summary"
    id: int
    speaker: str | None
    text: str
    created: float
    keyword: float
    embedding: float
    relevance: float
    score: float

    @property
    def ref(self) -> str:
        return f"{self.kind[0]}{self.id}"


def _same_word(a: str, b: str) -> bool:
    """Equal, or one a prefix of the other ("play"/"plays", "dog"/"dogs"): a stemmer's poor cousin."""
    short, long = sorted((a, b), key=len)
    return long.startswith(short) and len(short) >= 3 and len(long) - len(short) <= 3


def coverage(query: str, text: str) -> float:
    """The share of the query's content words that `text` holds."""
    wanted, have = set(content_words(query)), set(content_words(text))
    if not wanted:
        return 0.0
    return sum(any(_same_word(w, h) for h in have) for w in wanted) / len(wanted)


def ensure_vectors(store: MemoryStore, embedder: Embedder) -> None:
    """Embed every turn and summary the store has no vector for under this model."""
    for kind, items in (("turn", {t.id: t.text for t in store.turns()}),
                        ("summary", {s.id: s.text for s in store.summaries().values() if s.text})):
        have = store.vectors(kind, embedder.name)
        missing = [i for i in items if i not in have]
        if missing:
            vecs = embedder.embed([items[i] for i in missing])
            store.add_vectors(kind, embedder.name, dict(zip(missing, vecs)))


def retrieve(store: MemoryStore, query: str, method: str = "hybrid", embedder: Embedder | None = None,
             exclude_turns: Iterable[int] = (), exclude_summaries: Iterable[int] = (), k: int = 5,
             threshold: float = 0.0, recency_weight: float = 0.1, half_life_days: float = 7.0,
             now: float | None = None) -> list[Hit]:
    """The best `k` memories for `query`, best first."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    if method != "keyword" and embedder is None:
        method = "keyword"  # no embedding model: say so at load time, not on every turn
    now = time.time() if now is None else now
    skip = {"turn": set(exclude_turns), "summary": set(exclude_summaries)}
    keyword: dict[tuple[str, int], float] = {}
    dense: dict[tuple[str, int], float] = {}
    if method in ("keyword", "hybrid"):
        q = fts_query(query)
        for kind in ("turn", "summary"):
            for ref, s in store.keyword_search(kind, q, KEYWORD_CANDIDATES):
                if ref not in skip[kind]:
                    keyword[(kind, ref)] = s / (s + KEYWORD_HALF)
    if method in ("embedding", "hybrid"):
        ensure_vectors(store, embedder)
        qv = embedder.embed([query])[0]
        for kind in ("turn", "summary"):
            vecs = store.vectors(kind, embedder.name)
            refs = [r for r in vecs if r not in skip[kind]]
            if refs:
                sims = np.stack([vecs[r] for r in refs]) @ qv
                dense.update({(kind, r): max(0.0, float(s)) for r, s in zip(refs, sims)})
    turns = store.turns_by_id(r for kind, r in keyword.keys() | dense.keys() if kind == "turn")
    summaries = store.summaries()
    for (kind, ref), bm25 in keyword.items():
        text = turns[ref].text if kind == "turn" and ref in turns else summaries[ref].text if ref in summaries else ""
        keyword[(kind, ref)] = (bm25 + coverage(query, text)) / 2
    hits = []
    for key in keyword.keys() | dense.keys():
        kind, ref = key
        kw, emb = keyword.get(key, 0.0), dense.get(key, 0.0)
        relevance = {"keyword": kw, "embedding": emb, "hybrid": KEYWORD_WEIGHT * kw + (1 - KEYWORD_WEIGHT) * emb}[method]
        if relevance < threshold or relevance <= 0:
            continue
        if kind == "turn":
            if ref not in turns:
                continue
            t = turns[ref]
            speaker, text, created = t.speaker, t.text, t.created
        else:
            if ref not in summaries or not summaries[ref].text:  # a forgotten summary
                continue
            s = summaries[ref]
            speaker, text, created = None, s.text, s.updated
        recency = 0.5 ** (max(0.0, now - created) / (half_life_days * DAY))
        hits.append(Hit(kind, ref, speaker, text, created, kw, emb, relevance, relevance + recency_weight * recency))
    hits.sort(key=lambda h: (-h.score, -h.created, h.kind, h.id))
    return hits[:k]
