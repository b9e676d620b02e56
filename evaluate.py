"""Measure how well an adapter mimics a character on held-out dialogue.

    python evaluate.py -m SmolLM2-135M-Instruct -l falstaff --name Falstaff -t data/the-merry-wives-of-windsor.txt

Builds samples from the held-out text exactly as prepare_dataset.py does and
reports, for the base model and the adapter: loss per reply token of the
character's lines and of everyone else's, and how many greedy replies end by
themselves or go on to speak for another speaker.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-m", "--model_name", required=True, help="base model folder inside the models folder")
    p.add_argument("-l", "--lora_name", help="adapter folder inside the loras folder (omit: base model only)")
    p.add_argument("-n", "--name", required=True, help="the character, as written before the colon")
    p.add_argument("-t", "--txtfilename", required=True, help="held-out `Name:line` dialogue")
    p.add_argument("-r", "--rounds", type=int, default=5, help="context lines per sample (as in prepare_dataset.py)")
    p.add_argument("-c", "--cutoff_len", type=int, default=256, help="longest sample in tokens (as in training)")
    p.add_argument("--generate", type=int, default=40, help="greedy replies to generate (the first N samples)")
    p.add_argument("--max_new_tokens", type=int, default=80, help="budget of each greedy reply")
    p.add_argument("--others", type=int, default=200, help="other speakers' lines to score (0: skip)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto", help="auto: bf16 on CPU (5x faster than fp32 here) and recent GPUs")
    p.add_argument("--models_dir", help="models folder (default: models/ or user_data/models/)")
    p.add_argument("--loras_dir", help="adapters folder (default: loras/ or user_data/loras/)")
    p.add_argument("--allow_pickle", action="store_true", help="load pickle (.bin) weights, which can run code; only safetensors otherwise")
    p.add_argument("--json", dest="json_out", help="also write the results as JSON to this file")
    p.add_argument("--examples", type=int, default=3, help="example replies to print side by side")
    return p


def run(args) -> list:
    from charlora import evaluate as ev
    from charlora import models
    from charlora.dialogue import read_dialogue_file
    from charlora.errors import CharloraError
    from charlora.samples import build_samples, missing_speaker_message, speaker_counts

    lines, _ = read_dialogue_file(args.txtfilename)
    counts = speaker_counts(lines)
    samples = build_samples(lines, args.name, args.rounds)
    if not samples:
        raise CharloraError(missing_speaker_message(args.name, counts, args.txtfilename))
    others = ev.other_speaker_samples(lines, args.name, args.rounds)[: args.others]

    models_dir, _ = models.resolve_dir(args.models_dir, "models")
    path = models.find_model(models_dir, args.model_name)
    device = models.pick_device()
    tokenizer = models.load_tokenizer(path)
    model = models.load_model(path, "none", models.pick_dtype(args.dtype, device), device, allow_pickle=args.allow_pickle)
    if args.lora_name:
        from peft import PeftModel

        loras_dir, _ = models.resolve_dir(args.loras_dir, "loras")
        adapter = loras_dir / args.lora_name
        if not (adapter / "adapter_config.json").is_file():
            raise CharloraError(f"adapter {adapter} not found (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, adapter)

    import contextlib

    reports = []
    for label in ["base", "adapter"] if args.lora_name else ["base"]:
        with model.disable_adapter() if label == "base" and args.lora_name else contextlib.nullcontext():
            char = ev.reply_loss(model, tokenizer, samples, args.cutoff_len)
            other = ev.reply_loss(model, tokenizer, others, args.cutoff_len) if others else float("nan")
            gens = ev.greedy_replies(model, tokenizer, samples[: args.generate], args.name, counts, args.max_new_tokens)
        reports.append(ev.Report.of(label, char, other, gens))
    return reports


def main(argv: list[str] | None = None) -> int:
    from charlora.errors import CharloraError, quiet_libraries
    from charlora.evaluate import HEADER

    args = make_parser().parse_args(argv)
    quiet_libraries(progress_bars=True)
    try:
        reports = run(args)
    except CharloraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(HEADER)
    for r in reports:
        print(r.row())
    if len(reports) == 2:
        base, tuned = reports
        print(f"character loss change: {100 * (tuned.character_loss / base.character_loss - 1):+.1f}%; "
              f"other speakers: {100 * (tuned.others_loss / base.others_loss - 1):+.1f}%")
    for i in range(min(args.examples, len(reports[0].examples))):
        print(f"\n...{reports[0].examples[i].prompt[-150:]!r}\n  reference: {reports[0].examples[i].reference[:150]}")
        for r in reports:
            print(f"  {r.label:<9}: {r.examples[i].reply[:150]!r}{'' if r.examples[i].ended_by_eos else ' [no EOS]'}")
    if args.json_out:
        from charlora.samples import write_json_atomic

        write_json_atomic([asdict(r) for r in reports], args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
