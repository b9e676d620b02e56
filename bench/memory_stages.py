"""Where one recall's time goes at 100k stored turns: the latency bench's setup
(bench/memory.py --latency), with each stage of retrieve() timed (FTS5 searches,
the query's embedding, the vector search, reading turns, keyword scoring).

    OMP_NUM_THREADS=1 taskset -c 1 python bench/memory_stages.py [--plain]

Prints p50 and p95 per stage over 60 questions (the first recall, which reads
the vectors, left out).  A profile, not a claim: compare versions side by side.
"""
import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]
import memory as bench  # noqa: E402  (bench/memory.py)
from charlora.memory import embed, retrieve, store, vectors  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plain", action="store_true", help="one-sentence turns (default: --chatty turns)")
    p.add_argument("--turns", type=int, default=100_000)
    args = p.parse_args()
    torch.set_num_threads(1)
    spent = collections.defaultdict(float)

    def timed(owner, name, label):
        inner = getattr(owner, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                spent[label] += (time.perf_counter() - t0) * 1000

        setattr(owner, name, wrapper)

    timed(store.MemoryStore, "keyword_search", "fts")
    timed(store.MemoryStore, "turns_by_id", "turns_by_id")
    timed(embed.MiniLM, "embed", "embed")
    timed(vectors.VectorCache, "search", "vector search")
    timed(retrieve, "_keyword_relevance", "keyword scoring")
    per_query = []
    whole = bench.retrieve

    def one(*a, **k):
        spent.clear()
        t0 = time.perf_counter()
        out = whole(*a, **k)
        spent["total"] = (time.perf_counter() - t0) * 1000
        per_query.append(dict(spent))
        return out

    bench.retrieve = one
    bench.run_latency(argparse.Namespace(latency=[args.turns], latency_queries=60, seed=0, chatty=not args.plain),
                      bench.CachedEmbedder(embed.MiniLM()))
    per_query = per_query[1:]  # the first recall reads the vectors
    for label in per_query[0]:
        xs = [q.get(label, 0.0) for q in per_query]
        print(f"{label:16s} p50 {np.percentile(xs, 50):6.1f} ms   p95 {np.percentile(xs, 95):6.1f} ms")


if __name__ == "__main__":
    main()
