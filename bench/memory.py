"""Does chat memory recall on long, multi-session conversations?  And how fast at 100k turns?

    python bench/memory.py --split tune       # the split retrieval choices were made on
    python bench/memory.py --split heldout    # the reported numbers (never tuned on)
    python bench/memory.py --latency 1000 10000 100000   # recall latency at these memory sizes

Conversations come from bench/memory_data.py (10 a split, 20 sessions over
100-160 days, 440-460 turns, 100 questions each: single-fact, paraphrased
with no content word of the evidence, multi-hop over two turns, temporal),
and are fed in as chat.py feeds them: ChatMemory.record, line by line, each
at the time it was said, embedded at write time.  Every question is asked a
day after the last session, over the whole memory.

Per question kind, for chat's retrieval (charlora.memory.retrieve, threshold
0 so the ranking is what counts) in its default (hybrid) and its keyword-only
and embedding-only settings, a few fusion and feedback variants, and baselines computed
in the same run: plain BM25 (bm25s, no stemming, English stop words) over
the text alone and over "Speaker: text", and MiniLM cosine over each:
- evidence recall@5 / @10: the share of a question's evidence turns in the top 5 / 10;
- all@5: the share of questions with all their evidence in the top 5;
- prompt: the share of questions whose evidence turns all appear in the
  memory lines chat builds (ChatMemory.items, default settings and budgets,
  counted with the chat model's tokenizer), and the same for a memory-less
  prompt (the newest lines within the same token budget).
Rolling summaries are not made here (chat makes them as the window moves;
that would cost a context() call a line), so recall is over turns.

--chatty pads every turn to one to three sentences (memory_data.chatty_turn), as
chat is typed: a turn of several sentences is stored with a vector for each
(embed.turn_rows), so it costs more rows to search; with --latency it times
recall over the rows such turns make.

--latency stores N turns (lines of generated conversations, said in turn by the
two people of the first conversation, whose names its questions hold),
with random unit vectors in place of their embeddings (embedding 100k lines
on one thread takes ~10 min; the search cost does not depend on the values),
and times retrieve() end to end with the query embedded for real by MiniLM.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory_data import KINDS, conversations  # noqa: E402

from charlora.dialogue import Line  # noqa: E402
from charlora.memory import ChatMemory, MemorySettings, MemoryStore  # noqa: E402
from charlora.memory.retrieve import retrieve  # noqa: E402
from charlora.memory.text import parts  # noqa: E402
from charlora.prompt import build_prompt  # noqa: E402

DAY = 86400.0
# name -> retrieve() arguments; the first is chat's default.
VARIANTS = {
    "chat default (hybrid, adaptive 0.5 x coverage, feedback 0.05)": {},
    "keyword only": {"method": "keyword"},
    "embedding only": {"method": "embedding"},
    "hybrid, no feedback (the previous default)": {"feedback_weight": 0.0},
    "hybrid, feedback 0.03": {"feedback_weight": 0.03},
    "hybrid, feedback 0.07": {"feedback_weight": 0.07},
    "hybrid, feedback 0.1": {"feedback_weight": 0.1},
    "hybrid, adaptive 0.4 x coverage, feedback 0.05": {"keyword_weight": 0.4},
    "hybrid, adaptive 0.6 x coverage, feedback 0.05": {"keyword_weight": 0.6},
    "hybrid, fixed 0.4, no feedback (an earlier default)": {"keyword_weight": 0.4, "adaptive": False,
                                                           "feedback_weight": 0.0},
    "hybrid, RRF (k=60)": {"fusion": "rrf"},
    "hybrid, recency 0.1 (7-day half-life)": {"recency_weight": 0.1},
}
# The prompt rows: chat's default --recall_threshold (None), then others to compare.
PROMPT_THRESHOLDS = (None, 0.2, 0.1)
BASELINES = ("plain BM25, text", "plain BM25, Speaker: text", "plain MiniLM, text", "plain MiniLM, Speaker: text")


class CachedEmbedder:
    """MiniLM with a memo: each distinct text is embedded once in a run."""

    def __init__(self, model):
        self.model, self.name, self.memo = model, model.name, {}

    def embed(self, texts):
        new = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if new:
            self.memo.update(zip(new, self.model.embed(new)))
        return np.stack([self.memo[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)


def recall_at(ranked: list[int], evidence: list[int], k: int) -> float:
    return sum(e in ranked[:k] for e in evidence) / len(evidence)


def bm25_rankings(docs: list[str], queries: list[str], k: int) -> list[list[int]]:
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(docs, stopwords="en", show_progress=False), show_progress=False)
    tokens = bm25s.tokenize(queries, stopwords="en", show_progress=False)
    ids, scores = retriever.retrieve(tokens, k=min(k, len(docs)), show_progress=False, n_threads=1)
    # A query with no known word scores 0 everywhere: that ranks nothing.
    return [[int(i) for i, s in zip(row, srow) if s > 0] for row, srow in zip(ids, scores)]


def feed(conv, folder: Path, embedder, count) -> tuple[ChatMemory, dict[int, int], dict]:
    """A new memory in `folder` holding `conv` as chat.py feeds it: line by line, each at
    the time it was said, a new session where the conversation has one.  Returns the
    memory, {turn id: line position}, and its clock, set to a day after the last line
    (when the questions are asked), in a new session."""
    user, name = conv.speakers
    clock = {"now": conv.times[0]}
    mem = ChatMemory.open(MemorySettings(memory_dir=folder, session="s0"), name, user,
                          count_tokens=count, embedder=embedder, clock=lambda: clock["now"])
    ids, session = [], 0
    for line, t, s in zip(conv.lines, conv.times, conv.sessions):
        clock["now"] = t
        if s != session:
            mem.new_session()
            session = s
        mem.record(line)
        ids.append(mem.ids[-1])
    clock["now"] = conv.times[-1] + DAY
    mem.new_session()
    return mem, {turn_id: pos for pos, turn_id in enumerate(ids)}, clock


def run_split(args, embedder, count) -> dict:
    convs = conversations(args.split, args.conversations, args.seed, args.chatty)
    settings = MemorySettings()
    budget = settings.short_term_tokens + settings.summary_tokens + settings.facts_tokens + settings.recall_tokens
    kmax = 10
    rows: dict[str, list[dict]] = {name: [] for name in (*VARIANTS, *BASELINES, *map(prompt_row, PROMPT_THRESHOLDS),
                                                         "memory-less prompt")}
    tmp = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    started = time.time()
    for c_i, conv in enumerate(convs):
        user, name = conv.speakers
        mem, id_to_pos, clock = feed(conv, tmp / f"c{c_i}", embedder, count)
        questions = conv.questions
        texts = [q.text for q in questions]
        for vname, kw in VARIANTS.items():
            for q in questions:
                hits = retrieve(mem.store, q.text, embedder=embedder, k=kmax, now=clock["now"], **kw)
                ranked = [id_to_pos[h.id] for h in hits if h.kind == "turn"]
                rows[vname].append(score(q, ranked))
        for speaker in (False, True):
            docs = [f"{l.speaker}: {l.text}" if speaker else l.text for l in conv.lines]
            label = "Speaker: text" if speaker else "text"
            for q, ranked in zip(questions, bm25_rankings(docs, texts, kmax)):
                rows[f"plain BM25, {label}"].append(score(q, ranked))
            sims = embedder.embed(texts) @ embedder.embed(docs).T
            for q, row in zip(questions, sims):
                rows[f"plain MiniLM, {label}"].append(score(q, list(np.argsort(-row, kind="stable")[:kmax])))
        newest = truncated(conv.lines, budget, count, name)
        for q in questions:
            for threshold in PROMPT_THRESHOLDS:
                mem.s.recall_threshold = settings.recall_threshold if threshold is None else threshold
                lines = " ".join(item.line.text for item in mem.items(q.text, []))
                rows[prompt_row(threshold)].append({"kind": q.kind,
                                                    "in": all(conv.lines[e].text in lines for e in q.evidence)})
            rows["memory-less prompt"].append({"kind": q.kind, "in": all(conv.lines[e] in newest for e in q.evidence)})
        mem.store.close()
        print(f"conversation {c_i + 1}/{len(convs)}: {len(conv.lines)} turns, {len(set(conv.sessions))} sessions over "
              f"{(conv.times[-1] - conv.times[0]) / DAY:.0f} days, {len(questions)} questions "
              f"({time.time() - started:.0f} s)", file=sys.stderr)
    return summarize(rows, convs)


def prompt_row(threshold) -> str:
    return "chat prompt" if threshold is None else f"chat prompt, threshold {threshold}"


def score(q, ranked: list[int]) -> dict:
    return {"kind": q.kind, "r5": recall_at(ranked, q.evidence, 5), "r10": recall_at(ranked, q.evidence, 10),
            "all5": recall_at(ranked, q.evidence, 5) == 1.0}


def truncated(history: list[Line], budget: int, count, name: str) -> list[Line]:
    """The newest lines whose build_prompt fits `budget` tokens: the memory-less baseline."""
    lines: list[Line] = []
    for line in reversed(history):
        if count(build_prompt([line, *lines], name)) > budget:
            break
        lines.insert(0, line)
    return lines


def summarize(rows: dict[str, list[dict]], convs) -> dict:
    out = {}
    for name, results in rows.items():
        table = {}
        for kind in ("all", *KINDS):
            these = [r for r in results if kind == "all" or r["kind"] == kind]
            if "in" in these[0]:
                table[kind] = {"prompt": round(float(np.mean([r["in"] for r in these])), 3)}
            else:
                table[kind] = {m: round(float(np.mean([r[m] for r in these])), 3) for m in ("r5", "r10", "all5")}
        out[name] = table
    return {"conversations": len(convs), "turns": [len(c.lines) for c in convs],
            "questions": {kind: sum(q.kind == kind for c in convs for q in c.questions) for kind in KINDS},
            "days": [round((c.times[-1] - c.times[0]) / DAY) for c in convs], "results": out}


def print_tables(result: dict) -> None:
    res = result["results"]
    print("| retrieval | recall@5 | recall@10 | all@5 | " + " | ".join(f"recall@5 {k}" for k in KINDS) + " |")
    print("| --- |" + " --- |" * (3 + len(KINDS)))
    for name in (*VARIANTS, *BASELINES):
        a = res[name]["all"]
        print(f"| {name} | {a['r5']:.3f} | {a['r10']:.3f} | {a['all5']:.3f} | "
              + " | ".join(f"{res[name][k]['r5']:.3f}" for k in KINDS) + " |")
    print()
    print("| prompt holds all evidence | all | " + " | ".join(KINDS) + " |")
    print("| --- |" + " --- |" * (1 + len(KINDS)))
    for name in (*map(prompt_row, PROMPT_THRESHOLDS), "memory-less prompt"):
        print(f"| {name} | " + " | ".join(f"{res[name][k]['prompt']:.3f}" for k in ("all", *KINDS)) + " |")


def run_latency(args, embedder) -> dict:
    """p50/p95 of retrieve() at each size, with the first recall (vectors read from the file) apart."""
    convs = conversations("tune", 1 + max(args.latency) // 440, args.seed + 1000, args.chatty)
    pool = [l.text for c in convs for l in c.lines]
    rows = [1 + len(parts(text)) for text in pool]  # a turn's vectors: its own and its sentences' (turn_rows)
    questions = [q.text for c in convs[:2] for q in c.questions]
    rng = np.random.default_rng(0)
    out = {}
    for n in args.latency:
        tmp = Path(tempfile.mkdtemp(prefix="memory-latency-"))
        # The memory of the first conversation's two people, whom its questions name, as in
        # a chat's memory file.  (Before the eighth session the speakers were "Sam" and
        # "Morgan", named by no question: that hid what matching a speaker's name costs.)
        user, character = convs[0].speakers
        store = MemoryStore(tmp / "m.sqlite", character, user)
        t0 = time.time()
        with store.db:
            store.db.execute("BEGIN")
            sid = None
            for i in range(n):
                if i % 22 == 0:
                    sid, _, _ = store.session(f"s{i}", 1_767_225_600.0 + i * 60)
                store.add_turn(sid, Line((user, character)[i % 2], pool[i % len(pool)]), 1_767_225_600.0 + i * 60)
        counts = [rows[i % len(pool)] for i in range(n)]
        vecs = rng.standard_normal((sum(counts), 384)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        store.add_vectors("turn", embedder.name, dict(zip(range(1, n + 1), np.split(vecs, np.cumsum(counts)[:-1]))))
        store.close()
        store = MemoryStore(tmp / "m.sqlite", character, user)  # as chat opens it: nothing cached yet
        build_s = time.time() - t0
        t0 = time.perf_counter()
        retrieve(store, questions[0], embedder=embedder.model, k=5)
        first_ms = (time.perf_counter() - t0) * 1000
        searched = store.vectors("turn", embedder.name).n  # vectors.searched_rows: fewer than stored
        times, cpu = [], []
        for q in questions[1 : 1 + args.latency_queries]:
            t0, c0 = time.perf_counter(), time.process_time()
            retrieve(store, q, embedder=embedder.model, k=5)  # the real model: no memo
            times.append((time.perf_counter() - t0) * 1000)
            # CPU time of this process too: on a shared machine wall time also counts other programs' turns.
            cpu.append((time.process_time() - c0) * 1000)
        store.close()
        pct = lambda xs, p: round(float(np.percentile(xs, p)), 1)
        out[str(n)] = {"speakers": [user, character], "vectors": sum(counts), "rows_searched": searched, "p50_ms": pct(times, 50), "p95_ms": pct(times, 95), "cpu_p50_ms": pct(cpu, 50),
                       "cpu_p95_ms": pct(cpu, 95), "first_ms": round(first_ms, 1), "queries": len(times),
                       "build_s": round(build_s, 1)}
        print(f"{n} turns ({sum(counts)} vectors, {searched} searched): p50 {out[str(n)]['p50_ms']} ms, p95 {out[str(n)]['p95_ms']} ms over {len(times)} "
              f"queries; first recall {first_ms:.0f} ms (reads the vectors)", file=sys.stderr)
    print("| stored turns | vectors (searched) | p50 ms | p95 ms | CPU p50 ms | CPU p95 ms | first recall ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n, r in out.items():
        print(f"| {int(n):,} | {r['vectors']:,} ({r['rows_searched']:,}) | {r['p50_ms']} | {r['p95_ms']} | {r['cpu_p50_ms']} | {r['cpu_p95_ms']} | {r['first_ms']} |")
    return out


def environment() -> dict:
    import bm25s
    import torch
    import transformers

    import sqlite3

    from charlora.provenance import environment as provenance

    # provenance's commit says "+uncommitted" when the tree differs from it (this file's own
    # `git rev-parse` did not, so two runs of 52b15ee's code record 0beb287 alone).
    return {"commit": provenance()["commit"], "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__, "bm25s": bm25s.__version__,
            "sqlite": sqlite3.sqlite_version, "threads": torch.get_num_threads(), "cpu": platform.processor(),
            "load_average": [round(x, 1) for x in os.getloadavg()]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", choices=("tune", "heldout"), default="heldout")
    p.add_argument("--conversations", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chatty", action="store_true",
                   help="every turn one to three sentences (a reaction before, small talk after), as chat is typed")
    p.add_argument("--latency", type=int, nargs="*", default=None, help="time recall at these memory sizes instead")
    p.add_argument("--latency_queries", type=int, default=100)
    p.add_argument("-m", "--model_name", default="SmolLM2-135M-Instruct", help="its tokenizer counts prompt tokens")
    p.add_argument("--models_dir", default="models")
    p.add_argument("--out", default=None, help="JSON (default docs/memory/<split>.json or latency.json)")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from charlora.memory.embed import MiniLM

    torch.set_num_threads(1)
    embedder = CachedEmbedder(MiniLM())
    result = {"command": "python bench/memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              **environment()}
    if args.latency:
        result["latency"] = run_latency(args, embedder)
        out = args.out or "docs/memory/latency.json"
    else:
        tokenizer = AutoTokenizer.from_pretrained(Path(args.models_dir) / args.model_name)
        count = lambda text: len(tokenizer(text)["input_ids"])
        started = time.time()
        result.update(split=args.split, seed=args.seed, **run_split(args, embedder, count))
        result["seconds"] = round(time.time() - started)
        print_tables(result)
        out = args.out or f"docs/memory/{args.split}.json"
    # The load at the end too: environment() has it at the start only, and a run on a shared
    # machine can start alone on its core and end sharing it.
    result["load_average_end"] = [round(x, 1) for x in os.getloadavg()]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
