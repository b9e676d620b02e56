"""Does Parallel Context Windows let a model use more context than its window?

    python bench/pcw.py -m SmolLM2-135M-Instruct -l falstaff falstaff-r20 falstaff-pcw3 \\
        --name Falstaff -t data/the-merry-wives-of-windsor.txt --rounds 20 --window 128 --samples 60 \\
        --json runs/pcw-bench.json

Held-out samples are built as prepare_dataset.py builds them (with a long
--rounds, so most contexts exceed one window).  Each sample's last --recent
context lines and `Name:` are the task and the reply is scored after it (mean
loss per reply token, EOS included, as evaluate.py reports); the older lines
are given as
  truncated  their newest --window tokens, one ordinary causal sequence;
  pcw N      N parallel windows of at most --window tokens each (charlora.pcw):
             the newest N x window tokens, all at the truncated case's positions;
  full       all of them, one ordinary sequence (it needs more positions).
Every row but "full" keeps prefix + window + task + reply positions, so
"truncated" and "pcw N" compare what fits the same position range.  Run for
the base model and each adapter given with -l.  Samples are scored one at a
time (no padding), so each setting's difference from "truncated" comes with a
paired standard error over samples.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-m", "--model_name", default="SmolLM2-135M-Instruct")
    p.add_argument("-l", "--lora_names", nargs="*", default=[], help="adapters in the loras folder, scored besides the base model")
    p.add_argument("--name", default="Falstaff", help="the character whose held-out lines are scored")
    p.add_argument("-t", "--txtfilename", default="data/the-merry-wives-of-windsor.txt")
    p.add_argument("--rounds", type=int, default=20, help="context lines before each line (prepare_dataset.py -r)")
    p.add_argument("--recent", type=int, default=2, help="context lines next to the reply, outside the windows")
    p.add_argument("--window", type=int, default=128, help="tokens of older context per window")
    p.add_argument("--windows", type=int, nargs="+", default=[2, 3, 5], help="PCW window counts to score")
    p.add_argument("--samples", type=int, default=60, help="first N held-out samples (time is linear in it)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    p.add_argument("--models_dir", default=None)
    p.add_argument("--loras_dir", default=None)
    p.add_argument("--json", dest="json_out", default=None, help="write the results here")
    return p


def context_stats(tokenizer, samples, recent: int, window: int, counts: list[int]) -> dict:
    """Mean older-context tokens per sample, and the share each setting keeps."""
    from charlora.pcw import TASK, pcw_sample

    whole = [pcw_sample(tokenizer, x["input"], x["output"], 1 << 20, 1, recent) for x in samples]
    older = [sum(1 for s in ex["segments"] if s > 0) for ex in whole]
    task = [sum(1 for s in ex["segments"] if s == TASK) for ex in whole]
    return {"mean_older_tokens": sum(older) / len(older), "max_older_tokens": max(older),
            "share_over_window": sum(o > window for o in older) / len(older),
            "mean_task_and_reply_tokens": sum(task) / len(task),
            "longest_full_sequence": max(len(ex["input_ids"]) for ex in whole),
            "share_of_older_kept": {n: sum(min(o, n * window) for o in older) / max(1, sum(older)) for n in counts}}


def paired_difference(losses: list[float], base: list[float], tokens: list[int]) -> tuple[float, float]:
    """(token-weighted mean of losses - of base, its standard error over samples), the ratio estimator's."""
    import math

    total = sum(tokens)
    d = [(a - b) * n for a, b, n in zip(losses, base, tokens)]
    mean = sum(d) / total
    var = sum((di - mean * n) ** 2 for di, n in zip(d, tokens)) * len(d) / max(1, len(d) - 1)
    return mean, math.sqrt(var) / total


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from charlora import models
    from charlora.dialogue import read_dialogue_file
    from charlora.errors import quiet_libraries
    from charlora.evaluate import pcw_reply_loss
    from charlora.pcw import pcw_sample
    from charlora.samples import build_samples

    quiet_libraries(progress_bars=False)
    lines, _ = read_dialogue_file(args.txtfilename)
    samples = build_samples(lines, args.name, args.rounds)[: args.samples]
    models_dir, _ = models.resolve_dir(args.models_dir, "models")
    path = models.find_model(models_dir, args.model_name)
    device = models.pick_device()
    dtype = models.pick_dtype(args.dtype, device)
    tokenizer = models.load_tokenizer(path)
    model = models.load_model(path, "none", dtype, device)
    big = model.config.max_position_embeddings

    # (label, windows, tokens per window, positions the model may use)
    settings = [("truncated", 1, args.window, None)] + [(f"pcw {n}", n, args.window, None) for n in args.windows]
    settings.append(("full", 1, None, big))
    stats = context_stats(tokenizer, samples, args.recent, args.window, [1, *args.windows])
    print(f"{len(samples)} held-out {args.name} samples, --rounds {args.rounds}, window {args.window} tokens, "
          f"{str(dtype).removeprefix('torch.')}, {device}; older context: mean {stats['mean_older_tokens']:.0f} "
          f"tokens (max {stats['max_older_tokens']}), {100 * stats['share_over_window']:.0f}% over one window; "
          f"task + reply mean {stats['mean_task_and_reply_tokens']:.0f} tokens", flush=True)

    labels = ["base", *args.lora_names]
    if args.lora_names:
        from peft import PeftModel

        loras_dir, _ = models.resolve_dir(args.loras_dir, "loras")
        model = PeftModel.from_pretrained(model, loras_dir / args.lora_names[0], adapter_name=args.lora_names[0])
        for name in args.lora_names[1:]:
            model.load_adapter(loras_dir / name, adapter_name=name)

    import contextlib

    from charlora.tokens import IGNORE_INDEX

    tokens = [sum(1 for x in pcw_sample(tokenizer, s["input"], s["output"], big, 1, args.recent)["labels"]
                  if x != IGNORE_INDEX) for s in samples]
    results, per_sample = {}, {}
    for label in labels:
        if label != "base":
            model.set_adapter(label)
        context = model.disable_adapter() if label == "base" and args.lora_names else contextlib.nullcontext()
        with context:
            for name, n, window_len, cutoff in settings:
                start = time.time()
                losses = [pcw_reply_loss(model, tokenizer, [s], cutoff or big, n, args.recent, window_len)
                          for s in samples]
                per_sample.setdefault(label, {})[name] = losses
                loss = sum(x * k for x, k in zip(losses, tokens)) / sum(tokens)
                results.setdefault(label, {})[name] = loss
                print(f"  {label:<14} {name:<10} {loss:.4f}  ({time.time() - start:.0f} s)", flush=True)

    names = [s[0] for s in settings]
    print("\nloss per reply token; in brackets: difference from truncated +- its standard error over samples")
    print("| model | " + " | ".join(names) + " |")
    print("| --- " * (len(names) + 1) + "|")
    for label in labels:
        cells = [f"{results[label][names[0]]:.3f}"]
        for n in names[1:]:
            diff, se = paired_difference(per_sample[label][n], per_sample[label][names[0]], tokens)
            cells.append(f"{results[label][n]:.3f} ({diff:+.3f} +- {se:.3f})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json_out:
        from charlora.provenance import environment
        from charlora.samples import write_json_atomic

        write_json_atomic({"environment": environment(), "args": vars(args), "samples": len(samples), "dtype": str(dtype), "context": stats,
                           "loss_per_reply_token": results, "reply_tokens": tokens,
                           "per_sample_loss": per_sample}, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
