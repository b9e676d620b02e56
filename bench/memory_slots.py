"""Would reserved slots keep chat's hybrid recall from falling below its parts?

    python bench/memory_slots.py --split tune --seeds 0 1 2 --conversations 30 15 15 [--chatty]

Issue 16 asks that the default never fall below its own keyword-only or
embedding-only setting in any question kind.  A rule that guarantees part of
it: always keep the top a of the keyword ranking and the top b of the
embedding ranking in the top 5, and fill the rest from the hybrid's order.
Then a question whose evidence is a part's first hit cannot be lost by the
fusion.  This measures every a, b in 0..2 against the default, from the three
rankings of each question (retrieve() with method hybrid, keyword and
embedding, threshold 0, as bench/memory.py asks them), on the tuning split
only.  Writes docs/memory/slots_<split>[_chatty].json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory as bench  # noqa: E402
from memory_data import conversations  # noqa: E402

METHODS = {"hybrid": {}, "keyword": {"method": "keyword"}, "embedding": {"method": "embedding"}}


def reserved(hybrid: list[int], keyword: list[int], embedding: list[int], a: int, b: int, k: int = 5) -> list[int]:
    """The top k: keyword[:a] and embedding[:b] first, then the hybrid's order."""
    out = list(dict.fromkeys(keyword[:a] + embedding[:b]))
    out += [x for x in hybrid if x not in out]
    return out[:k]


def rankings(split: str, count: int, seed: int, chatty: bool, embedder) -> list[dict]:
    rows, tmp = [], Path(tempfile.mkdtemp(prefix="memory-slots-"))
    for c_i, conv in enumerate(conversations(split, count, seed, chatty)):
        mem, pos, clock = bench.feed(conv, tmp / f"c{c_i}", embedder, lambda text: len(text.split()))
        for q in conv.questions:
            row = {"kind": q.kind, "evidence": list(q.evidence)}
            for method, kw in METHODS.items():
                hits = bench.retrieve(mem.store, q.text, embedder=embedder, k=10, now=clock["now"], **kw)
                row[method] = [pos[h.id] for h in hits if h.kind == "turn"]
            rows.append(row)
        mem.store.close()
        print(f"seed {seed} conversation {c_i + 1}/{count}", file=sys.stderr)
    return rows


def table(rows: list[dict]) -> dict:
    schemes = {"chat default (hybrid)": lambda r: r["hybrid"], "keyword only": lambda r: r["keyword"],
               "embedding only": lambda r: r["embedding"]}
    for a in range(3):
        for b in range(3):
            if a or b:
                schemes[f"reserve keyword top {a}, embedding top {b}"] = (
                    lambda r, a=a, b=b: reserved(r["hybrid"], r["keyword"], r["embedding"], a, b))
    out = {}
    for name, pick in schemes.items():
        per = defaultdict(list)
        for r in rows:
            got = pick(r)[:5]
            value = bench.recall_at(got, r["evidence"], 5)
            per["all"].append(value)
            per[r["kind"]].append(value)
        out[name] = {kind: round(sum(v) / len(v), 4) for kind, v in sorted(per.items())}
    return out


def duels(rows: list[dict]) -> dict:
    """Per kind and part: in how many questions the default's recall@5 is above the
    part's, and in how many below (a tie in the mean can be many such swaps)."""
    out: dict = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in rows:
        mine = bench.recall_at(r["hybrid"][:5], r["evidence"], 5)
        for part in ("keyword", "embedding"):
            theirs = bench.recall_at(r[part][:5], r["evidence"], 5)
            if mine != theirs:
                out[r["kind"]][part][0 if mine > theirs else 1] += 1
    return {kind: {part: {"above": a, "below": b} for part, (a, b) in parts.items()} for kind, parts in sorted(out.items())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", choices=("tune", "heldout"), default="tune")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--conversations", type=int, nargs="+", default=[30, 15, 15], help="one count per seed")
    p.add_argument("--chatty", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if len(args.conversations) != len(args.seeds):
        p.error("give one --conversations count per seed")

    import torch

    from charlora.memory.embed import MiniLM

    torch.set_num_threads(1)
    embedder = bench.CachedEmbedder(MiniLM())
    started = time.time()
    rows = [r for seed, n in zip(args.seeds, args.conversations)
            for r in rankings(args.split, n, seed, args.chatty, embedder)]
    result = {"command": "python bench/memory_slots.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              **bench.environment(), "questions": len(rows), "recall@5": table(rows), "default against its parts": duels(rows),
              "seconds": round(time.time() - started)}
    for name, row in result["recall@5"].items():
        print(f"{name:45}", " ".join(f"{k} {v:.4f}" for k, v in row.items()))
    out = args.out or f"docs/memory/slots_{args.split}{'_chatty' if args.chatty else ''}.json"
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
