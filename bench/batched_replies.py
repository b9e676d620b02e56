"""Are evaluate.py's batched greedy replies the replies chat gives one at a time?

    OMP_NUM_THREADS=1 python bench/batched_replies.py --dtype bf16 --json docs/replies/batched-bf16.json

Loads the default model as evaluate.py does (charlora.adapter.load_with_adapters),
takes the first --n samples of Sir Toby Belch in Twelfth Night, and generates
greedy replies with charlora.reply.generate_replies in left-padded batches of
--batch_size and one prompt at a time: how many replies (and whole
continuations) are byte-identical, and the time of each way.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from charlora.adapter import load_with_adapters  # noqa: E402
from charlora.config import EvalConfig  # noqa: E402
from charlora.dialogue import read_dialogue_file  # noqa: E402
from charlora.reply import Sampling, generate_replies  # noqa: E402
from charlora.samples import build_samples, speaker_counts  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--n", type=int, default=8, help="prompts")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_new_tokens", type=int, default=40)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()
    import peft
    import torch
    import transformers

    cfg = EvalConfig(model_name="SmolLM2-135M-Instruct", dtype=args.dtype, quantization="none")
    model, tok, what = load_with_adapters(cfg, [], None, print)
    lines, _ = read_dialogue_file("data/twelfth-night.txt")
    name = "Sir Toby Belch"
    prompts = [s["input"] for s in build_samples(lines, name, 5)[: args.n]]
    speakers = list(speaker_counts(lines))
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    started = time.time()
    batched = generate_replies(model, tok, prompts, name, speakers, sampling, stop=False, batch_size=args.batch_size)
    batched_s = time.time() - started
    started = time.time()
    single = [generate_replies(model, tok, [p], name, speakers, sampling, stop=False)[0] for p in prompts]
    single_s = time.time() - started
    result = {
        "model": what, "prompts": len(prompts), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
        "same_reply": sum(a.reply == b.reply for a, b in zip(batched, single)),
        "same_continuation": sum(a.text == b.text for a, b in zip(batched, single)),
        "batched_s": round(batched_s, 1), "one_at_a_time_s": round(single_s, 1),
        "differing": [{"batched": a.reply, "one_at_a_time": b.reply} for a, b in zip(batched, single) if a.reply != b.reply],
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
