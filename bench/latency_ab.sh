#!/bin/bash
# Recall latency of two versions of charlora, A/B, alternating runs on one core:
# the machine's speed drifts by up to 1.5x from minute to minute, so only runs
# made side by side compare.  Each side is a checkout (e.g. `git worktree add
# ../before <commit>`) with a .venv.  Writes one JSON with every run's 100k-turn
# figures and the mean ratio before/after with its standard error.
#   bash bench/latency_ab.sh BEFORE_DIR AFTER_DIR PAIRS OUT.json [bench/memory.py flags, e.g. --chatty]
set -euo pipefail
before=$(realpath "$1"); after=$(realpath "$2"); pairs=$3; out=$(realpath -m "$4"); shift 4
tmp=$(mktemp -d)
for i in $(seq "$pairs"); do
  for side in before after; do
    dir=$before; [ "$side" = after ] && dir=$after
    (cd "$dir" && OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python bench/memory.py --latency 100000 "$@" --out "$tmp/$side-$i.json")
  done
done
python3 - "$tmp" "$pairs" "$out" "$*" <<'PY'
import json, statistics, sys
tmp, pairs, out, flags = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
runs = {side: [json.load(open(f"{tmp}/{side}-{i}.json")) for i in range(1, pairs + 1)] for side in ("before", "after")}
at = lambda r: r["latency"]["100000"]
result = {"command": f"bash bench/latency_ab.sh BEFORE AFTER {pairs} OUT {flags}".strip(),
          "before_commit": runs["before"][0]["commit"], "after_commit": runs["after"][0]["commit"],
          "threads": runs["after"][0]["threads"], "torch": runs["after"][0]["torch"], "numpy": runs["after"][0]["numpy"],
          "runs": [{"before": at(b), "after": at(a), "load_average": a["load_average"]}
                   for b, a in zip(runs["before"], runs["after"])]}
for q in ("p50_ms", "p95_ms"):
    ratios = [at(b)[q] / at(a)[q] for b, a in zip(runs["before"], runs["after"])]
    result[f"{q}_before_over_after"] = {"mean": round(statistics.mean(ratios), 3),
                                        "se": round(statistics.stdev(ratios) / len(ratios) ** 0.5, 3) if len(ratios) > 1 else None}
    for side in ("before", "after"):
        xs = [at(r)[q] for r in runs[side]]
        result[f"{q}_{side}"] = {"median": round(statistics.median(xs), 1), "min": min(xs), "max": max(xs)}
json.dump(result, open(out, "w"), indent=1)
print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
PY
