"""Why batched greedy replies can differ from one-at-a-time ones: padding noise against decision margins.

    OMP_NUM_THREADS=1 python bench/padding_numerics.py --json docs/replies/padding-numerics.json

For the prompts of bench/batched_replies.py (SmolLM2-135M-Instruct, the first
--n Sir Toby Belch samples of Twelfth Night), in fp32 and bf16:
- noise: the largest |logit difference| at each prompt's last position between
  the prompt run alone and the same prompt inside a left-padded batch of all
  --n (the first decoding step of evaluate.py's batch vs chat's single prompt);
- margin: along each prompt's one-at-a-time greedy continuation
  (--max_new_tokens), the smallest gap between the top two logits.
A greedy batched reply can only differ where the noise reaches a margin: the
batch takes another token there and the two replies part.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from charlora.adapter import load_with_adapters  # noqa: E402
from charlora.config import EvalConfig  # noqa: E402
from charlora.dialogue import read_dialogue_file  # noqa: E402
from charlora.samples import build_samples  # noqa: E402


def measure(dtype: str, prompts: list[str], max_new_tokens: int) -> dict:
    import torch

    model, tok, what = load_with_adapters(EvalConfig(model_name="SmolLM2-135M-Instruct", dtype=dtype,
                                                     quantization="none"), [], None, print)
    side, tok.padding_side = tok.padding_side, "left"
    with torch.inference_mode():
        batch = tok(prompts, return_tensors="pt", padding=True)
        # as generate() does for left padding: positions count real tokens only
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        batched = model(**batch, position_ids=positions).logits[:, -1].float()
        noise, margins = [], []
        for i, prompt in enumerate(prompts):
            alone = tok(prompt, return_tensors="pt")
            noise.append((model(**alone).logits[0, -1].float() - batched[i]).abs().max().item())
            out = model.generate(**alone, max_new_tokens=max_new_tokens, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
            top2 = [s[0].float().topk(2).values for s in out.scores]
            margins.append(min((t[0] - t[1]).item() for t in top2))
    tok.padding_side = side
    return {"model": what, "max_noise": max(noise), "noise": noise, "min_margin_per_prompt": margins,
            "prompts_with_a_margin_under_the_max_noise": sum(m <= max(noise) for m in margins)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=8, help="prompts")
    p.add_argument("--max_new_tokens", type=int, default=40)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()
    import peft
    import torch
    import transformers

    lines, _ = read_dialogue_file("data/twelfth-night.txt")
    prompts = [s["input"] for s in build_samples(lines, "Sir Toby Belch", 5)[: args.n]]
    result = {dtype: measure(dtype, prompts, args.max_new_tokens) for dtype in ("fp32", "bf16")}
    result.update({
        "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
        "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu": platform.processor() or platform.machine(),
    })
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
