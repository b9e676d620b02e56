"""Long-term memory: find the earlier turns and session summaries that bear on
what the user just said.

Two rankings, each over turns and summaries together:
- keyword: SQLite FTS5's BM25 over the content words (porter-stemmed), who
  said a turn indexed with it (the memory's own two people's names weigh
  nothing: turn_keyword_search).  Its relevance in [0, 1] is the mean of BM25
  squashed as s / (s + KEYWORD_HALF) and the share of the query's content
  words the candidate holds.  BM25 alone collapses in a young memory: with a
  handful of turns every word is common, its IDF is ~0, and nothing would
  pass the threshold; the share does not depend on the corpus;
- embedding: the query's dot product with each turn's vector, the mean of
  the cosines of "text" and "Speaker: text" (embed.turn_vectors, made when
  the turn is written), below 0 counted as 0.  The vectors
  sit in memory (vectors.VectorCache): one matrix-vector product a recall.

hybrid (fusion="weighted", the default) adds the two relevances, both in
[0, 1]: w x keyword + (1 - w) x embedding, where the keyword relevance counts
only for a candidate whose words said (not just its speaker) share a word
with the query, and w adapts to the query (adaptive_weight): KEYWORD_WEIGHT
times the share of the query's content words that the best keyword match's
words hold.  A fixed w let one shared word ("Which football club..." ->
"My book club picked Emma") lift wrong lines over the paraphrase the
embedding found; when the keyword side explains little of the question, it
now weighs little.  Then pseudo-relevance feedback (_feedback, query
rewriting from the memory itself): the words of the best match that the
question lacks (of its sentence the embedding matched, feedback_text) are
searched for too, and that keyword relevance is mixed in at FEEDBACK_WEIGHT;
the best match, even a look-alike, says it in the words the evidence uses,
and a second hop's name ("My boss is a guy called Boris.") finds the other
half.  fusion="rrf", reciprocal-rank fusion (score = sum over the rankings
of 1 / (RRF_K + rank)), was measured against it on the tuning split and lost
by 0.2 recall@5: a ranking that is noise for a question (keyword for a
paraphrase) weighs as much as the one that found it (docs/benchmarks.md).
Recency is off by default (RECENCY_WEIGHT): on conversations that span months
it cost recall on the tuning split.  A candidate needs relevance >= threshold.
Turns in the short-term window and this session's own summary are excluded:
they are in the prompt already.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

from charlora.memory.embed import Embedder, turn_rows
from charlora.memory.store import MemoryStore
from charlora.memory.text import content_words, fts_query, parts

METHODS = ("keyword", "embedding", "hybrid")
FUSIONS = ("weighted", "rrf")
# BM25 score at which the keyword relevance is 0.5; one rare shared word among
# a few hundred turns scores about 5-8 in FTS5.
KEYWORD_HALF = 5.0
# Candidates each ranking contributes: recall wants 5-10, fusion needs some depth.
CANDIDATES = 100
# RRF's constant, the usual value from Cormack et al. 2009 (fusion="rrf" only).
RRF_K = 60
# hybrid relevance = w x keyword + (1 - w) x embedding, w = this x the best keyword match's
# coverage of the query (adaptive_weight).  On 45 conversations of the tuning split
# (docs/memory/tune30.json + tune_seed1.json) recall@5 was 0.911 and paraphrase 0.004 below
# embedding-only, against 0.906 and 0.028 below for the fixed 0.4 it replaces; 0.4 x coverage
# lost 1.3 points of multi-hop, 0.6 x coverage tied at 0.911 and was 0.007 below (docs/benchmarks.md).
KEYWORD_WEIGHT = 0.5
# hybrid relevance -> (1 - this) x relevance + this x the keyword relevance of each turn for the
# words of the best match the question lacks (_feedback, pseudo-relevance feedback).  Chosen on
# the tuning split, 60 conversations (seeds 0-2, docs/memory/tune30.json, tune_seed1.json,
# tune_seed2.json): 0.05 gave recall@5 0.916 against 0.910 without, paraphrase 0.788 (embedding-only
# 0.786; without: 0.781), multi-hop 0.917 (0.888); 0.07 and 0.1 tied overall but fell below
# embedding-only on paraphrase, 0.03 was lower overall (docs/benchmarks.md).
FEEDBACK_WEIGHT = 0.05
# Score x (1 + this x 0.5 ** (age / half-life)); 0: off (see the module docstring).
RECENCY_WEIGHT = 0.0
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


def adaptive_weight(keyword_weight: float, best_coverage: float) -> float:
    """The keyword side's weight for one query: `keyword_weight` x the share of the
    query's content words that its best keyword match holds (0 without one)."""
    return keyword_weight * min(1.0, max(0.0, best_coverage))


def rrf(rankings: Iterable[list], k: int = RRF_K) -> dict:
    """Reciprocal-rank fusion: {item: sum of 1 / (k + rank)} over the rankings (rank 1 = best)."""
    fused: dict = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return fused


def ensure_vectors(store: MemoryStore, embedder: Embedder) -> None:
    """Embed the turns and summaries that have no vector under this model yet.

    Turns are normally embedded when they are written (ChatMemory.record);
    this catches the rest (a file from --embedder none, or schema 1) and
    afterwards only looks at turns newer than the last it checked."""
    turns = store.vectors("turn", embedder.name)
    for kind, after in (("turn", turns.checked), ("summary", 0)):
        missing = store.unembedded(kind, embedder.name, after)
        if missing:
            store.vectors(kind, embedder.name)  # loaded before the add, so the add reaches it
            vecs = (turn_rows(embedder, [(s, t) for _, s, t in missing]) if kind == "turn"
                    else embedder.embed([t for _, _, t in missing]))
            store.add_vectors(kind, embedder.name, dict(zip([i for i, _, _ in missing], vecs)))
    turns.checked = store.last_turn_id()


def turn_keyword_search(store: MemoryStore, text: str, limit: int) -> list[tuple[int, float]]:
    """store.keyword_search over turns for the content words of `text`, where a name of
    the memory's own two people (store.participants) weighs nothing in BM25 but still
    makes a line that says it a candidate, after the others' matches.

    That is what a plain query gave: each of the two spoke about half the turns, so
    as a speaker the name's IDF is <= 0, which FTS5 floors at 1e-6.  But matching it
    made FTS5 score half of all turns: at 100k turns 40 ms of a recall's 64 at p50
    (bench/memory_stages.py).  Matched in the text alone, the name gets an IDF from
    its mentions instead, which lifted lines that merely address the person: recall@5
    on the tuning split fell 0.895 -> 0.888 (plain) and 0.884 -> 0.879 (chatty)."""
    found = store.keyword_search("turn", fts_query(text, leave_out=store.participants), limit)
    if len(found) < limit:
        seen = {ref for ref, _ in found}
        named = store.keyword_search("turn", fts_query(text, only=store.participants), limit)
        found += [(ref, 0.0) for ref, _ in named if ref not in seen][: limit - len(found)]
    return found


def feedback_words(query: str, text: str) -> str:
    """The words of pseudo-relevance feedback: the content words of `text` (the best
    match) that the query does not hold."""
    asked = set(content_words(query))
    return " ".join(w for w in content_words(text) if w not in asked)


def feedback_text(text: str, part: int) -> str:
    """The words feedback takes from the best turn: its sentence that the embedding
    matched best (`part`, VectorCache's Near.part; 0: the whole turn).  Small talk
    around the fact ("Ha, I know the feeling.") is no word of the evidence, and its
    common words made the second search score a fifth of a 100k-turn memory."""
    split = parts(text)
    return split[part - 1] if 0 < part <= len(split) else text


def _feedback(store: MemoryStore, query: str, fused: dict, turns: dict, skip: set, weight: float,
              part: dict) -> dict:
    """fused relevance -> (1 - weight) x fused + weight x the keyword relevance (BM25 squashed,
    as above) of each turn for feedback_words(query, the best turn).  The best match
    is the line the question was most likely about, or its look-alike, and says
    it in the words the evidence uses: for "What does Caroline play musically?"
    the best match was "My niece is learning the viola too.", whose "learning"
    finds "I've been learning the harp for two years."; for "What did Nadia's boss
    buy?", "My boss is a guy called Boris." finds "Boris bought a piano last week."."""
    best = min((key for key in fused if key[0] == "turn" and key[1] in turns),
               key=lambda key: (-fused[key], -turns[key[1]].created, key[1]), default=None)
    words = feedback_words(query, feedback_text(turns[best[1]].text, part.get(best[1], 0))) if best else ""
    found = {("turn", ref): s / (s + KEYWORD_HALF)
             for ref, s in turn_keyword_search(store, words, CANDIDATES + len(skip)) if ref not in skip}
    turns.update(store.turns_by_id(ref for kind, ref in found if ref not in turns))
    return {key: (1 - weight) * fused.get(key, 0.0) + weight * found.get(key, 0.0) for key in fused.keys() | found}


def _keyword_relevance(store: MemoryStore, query: str, keyword: dict, turns: dict, summaries: dict):
    """BM25 squashed -> the keyword relevance (mean with the coverage of "speaker text"),
    in place; returns the candidates whose words (not only their speaker) share a
    word with the query, and the best such coverage of the query."""
    said: set[tuple[str, int]] = set()
    best_coverage = 0.0
    for (kind, ref), bm25 in keyword.items():
        speaker, text = ((turns[ref].speaker or "", turns[ref].text) if kind == "turn" and ref in turns
                         else ("", summaries[ref].text) if kind == "summary" and ref in summaries else ("", ""))
        keyword[(kind, ref)] = (bm25 + coverage(query, f"{speaker} {text}")) / 2
        share = coverage(query, text)
        if share > 0:
            said.add((kind, ref))
            best_coverage = max(best_coverage, share)
    return said, best_coverage


def retrieve(store: MemoryStore, query: str, method: str = "hybrid", embedder: Embedder | None = None,
             exclude_turns: Iterable[int] = (), exclude_summaries: Iterable[int] = (), k: int = 5,
             threshold: float = 0.0, recency_weight: float = RECENCY_WEIGHT, half_life_days: float = 7.0,
             now: float | None = None, fusion: str = "weighted", keyword_weight: float = KEYWORD_WEIGHT,
             adaptive: bool = True, feedback_weight: float = FEEDBACK_WEIGHT) -> list[Hit]:
    """The best `k` memories for `query`, best first.  adaptive=False: the hybrid's
    keyword weight is `keyword_weight` for every query (the rule before adaptive_weight);
    feedback_weight=0: no pseudo-relevance feedback (the rule before _feedback)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}")
    if method != "keyword" and embedder is None:
        method = "keyword"  # no embedding model: say so at load time, not on every turn
    now = time.time() if now is None else now
    skip = {"turn": set(exclude_turns), "summary": set(exclude_summaries)}
    keyword: dict[tuple[str, int], float] = {}
    dense: dict[tuple[str, int], float] = {}
    part: dict[int, int] = {}  # turn id -> its best row's part (vectors.Near)
    if method in ("keyword", "hybrid"):
        for kind in ("turn", "summary"):
            search = (turn_keyword_search(store, query, CANDIDATES + len(skip[kind])) if kind == "turn"
                      else store.keyword_search(kind, fts_query(query), CANDIDATES + len(skip[kind])))
            for ref, s in search:
                if ref not in skip[kind]:
                    keyword[(kind, ref)] = s / (s + KEYWORD_HALF)
    if method in ("embedding", "hybrid"):
        ensure_vectors(store, embedder)
        qv = embedder.embed([query])[0]
        for kind in ("turn", "summary"):
            for near in store.vectors(kind, embedder.name).search(qv, CANDIDATES, skip[kind]):
                dense[(kind, near.id)] = max(0.0, near.cosine)
                if kind == "turn":
                    part[near.id] = near.part
    turns = store.turns_by_id(r for kind, r in keyword.keys() | dense.keys() if kind == "turn")
    summaries = store.summaries() if any(kind == "summary" for kind, _ in keyword.keys() | dense.keys()) else {}
    said, best_coverage = _keyword_relevance(store, query, keyword, turns, summaries)
    weight = adaptive_weight(keyword_weight, best_coverage) if adaptive else keyword_weight
    candidates = keyword.keys() | dense.keys()
    if method == "hybrid" and fusion == "rrf":
        order = lambda scores: sorted(scores, key=lambda key: (-scores[key], key))
        fused = rrf([order(keyword), order(dense)])
        relevance = {key: max(keyword.get(key, 0.0), dense.get(key, 0.0)) for key in candidates}
    elif method == "hybrid":
        # A line that matches the query only by its speaker's name is no sign the
        # keyword side found anything: counted, it lifts every line of that person
        # above the paraphrase the embedding found.  With a word said, the name
        # sharpens (Caroline's sister, not Melanie's).
        fused = relevance = {key: weight * (keyword.get(key, 0.0) if key in said else 0.0)
                             + (1 - weight) * dense.get(key, 0.0) for key in candidates}
        if feedback_weight > 0:
            fused = relevance = _feedback(store, query, fused, turns, skip["turn"], feedback_weight, part)
    else:
        fused = relevance = keyword if method == "keyword" else dense
    hits = []
    for key in fused:
        kind, ref = key
        if relevance[key] < threshold or relevance[key] <= 0:
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
        kw = keyword.get(key, 0.0) if method != "hybrid" or fusion == "rrf" or key in said else 0.0
        hits.append(Hit(kind, ref, speaker, text, created, kw, dense.get(key, 0.0), relevance[key],
                        fused[key] * (1 + recency_weight * recency)))
    hits.sort(key=lambda h: (-h.score, -h.created, h.kind, h.id))
    return hits[:k]
