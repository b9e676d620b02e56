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

from charlora.decoding import REPLY_NGRAM_BLOCK


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
    p.add_argument("--ngram_block", type=int, default=REPLY_NGRAM_BLOCK,
                   help="greedy replies may not repeat a token n-gram of their own (chat's default; 0: plain greedy)")
    p.add_argument("--seeds", type=int, default=0,
                   help="evaluate -l NAME-seed1 ... NAME-seedN and give each score's mean ± standard deviation")
    p.add_argument("-d", "--train_dataset",
                   help="with --seeds: train the seeds' adapters that are missing, on this processed dataset, at "
                        "lora_finetune.py's defaults")
    return p


def adapter_names(args) -> list[tuple[str, int | None]]:
    """(adapter folder, training seed): -l alone, or -l NAME --seeds N -> NAME-seed1 ... NAME-seedN."""
    if not args.seeds:
        return [(args.lora_name, None)] if args.lora_name else []
    return [(f"{args.lora_name}-seed{k}", k) for k in range(1, args.seeds + 1)]


def train_missing(args, loras_dir) -> None:
    """--seeds with --train_dataset: train each seed's adapter that is not there yet, at the training defaults."""
    from charlora.checkpoints import is_adapter
    from charlora.train import TrainConfig, train

    for name, seed in adapter_names(args):
        if not is_adapter(loras_dir / name):
            print(f"training {name} (seed {seed}) on {args.train_dataset} at the defaults", flush=True)
            train(TrainConfig(dataset_name=args.train_dataset, model_name=args.model_name, lora_name=name, seed=seed,
                              sample_replies=0, models_dir=args.models_dir, loras_dir=args.loras_dir, overwrite=True))


def training_lines(adapter_dir) -> list[str] | None:
    """Every line the adapter was trained from (its source file, else its replies), for the copying score."""
    import json
    from pathlib import Path

    from charlora.samples import load_samples
    from charlora.source import load_source

    try:
        dataset = json.loads((adapter_dir / "charlora_config.json").read_text())["config"]["dataset_name"]
        samples = load_samples(dataset)
    except Exception:  # an adapter from another tool, or its dataset moved: copying stays unknown
        return None
    src, _ = load_source(Path(dataset), samples)
    return [line.text for line in src.lines] if src is not None else [s["output"] for s in samples]


def run(args) -> list:
    from charlora import evaluate as ev
    from charlora import metrics, models
    from charlora.dialogue import read_dialogue_file
    from charlora.errors import CharloraError
    from charlora.samples import build_samples, missing_speaker_message, speaker_counts

    if args.seeds and not args.lora_name:
        raise CharloraError("--seeds needs -l NAME: the adapters are NAME-seed1 ... NAME-seedN")
    lines, _ = read_dialogue_file(args.txtfilename)
    counts = speaker_counts(lines)
    samples = build_samples(lines, args.name, args.rounds)
    if not samples:
        raise CharloraError(missing_speaker_message(args.name, counts, args.txtfilename))
    others = ev.other_speaker_samples(lines, args.name, args.rounds)[: args.others]

    models_dir, _ = models.resolve_dir(args.models_dir, "models")
    loras_dir, _ = models.resolve_dir(args.loras_dir, "loras")
    path = models.find_model(models_dir, args.model_name)
    if args.train_dataset:
        train_missing(args, loras_dir)
    names = adapter_names(args)
    for name, _ in names:
        if not (loras_dir / name / "adapter_config.json").is_file():
            raise CharloraError(f"adapter {loras_dir / name} not found (no adapter_config.json)"
                                + ("; add --train_dataset to train it" if args.seeds else ""))
    device = models.pick_device()
    tokenizer = models.load_tokenizer(path)
    model = models.load_model(path, "none", models.pick_dtype(args.dtype, device), device, allow_pickle=args.allow_pickle)

    def measure(m):
        char = ev.line_losses(m, tokenizer, samples, args.cutoff_len)
        other = ev.line_losses(m, tokenizer, others, args.cutoff_len) if others else []
        gens = ev.greedy_replies(m, tokenizer, samples[: args.generate], args.name, counts, args.max_new_tokens,
                                 ngram_block=args.ngram_block)
        return char, other, gens

    base_char, base_other, base_gens = measure(model)
    b_char, b_other = metrics.mean_loss(base_char), metrics.mean_loss(base_other)
    reports = [ev.Report.of("base", b_char, b_other, base_gens)]
    from peft import PeftModel

    for name, seed in names:
        tuned = PeftModel.from_pretrained(model, loras_dir / name)
        char, other, gens = measure(tuned)
        model = tuned.unload()  # the LoRA layers out again: the next adapter starts from the plain base
        t_char, t_other = metrics.mean_loss(char), metrics.mean_loss(other)
        train_text = training_lines(loras_dir / name)
        reports.append(ev.Report.of(
            name if len(names) > 1 else "adapter", t_char, t_other, gens,
            metrics.ngram_index(train_text) if train_text is not None else None,
            specificity=metrics.specificity(b_char, t_char, b_other, t_other) if others else None,
            text_specificity=metrics.specificity(*(metrics.text_loss(x) for x in (base_char, char, base_other, other)))
            if others else None,
            attribution_auc=metrics.auc(metrics.gains(base_char, char), metrics.gains(base_other, other)) if others else None,
            seed=seed))
    return reports


def summary(reports: list) -> dict:
    """Mean and standard deviation over the adapters (seeds) of each score."""
    from charlora.metrics import mean_sd

    base, tuned = reports[0], reports[1:]

    def share(r, k):
        v = getattr(r, k)
        return v / r.generated if v is not None and r.generated else float("nan")

    scores = {
        "character_loss_change": [r.character_loss / base.character_loss - 1 for r in tuned],
        "others_loss_change": [r.others_loss / base.others_loss - 1 for r in tuned],
        "specificity": [r.specificity if r.specificity is not None else float("nan") for r in tuned],
        "text_specificity": [r.text_specificity if r.text_specificity is not None else float("nan") for r in tuned],
        "attribution_auc": [r.attribution_auc if r.attribution_auc is not None else float("nan") for r in tuned],
        "clean_ends": [share(r, "clean_ends") for r in tuned],
        "repeated_4gram": [share(r, "repeated") for r in tuned],
        "copied_8gram": [share(r, "copied") for r in tuned],
    }
    return {k: mean_sd(v) for k, v in scores.items()}


def summary_lines(summ: dict, n: int) -> str:
    """The summary's scores in words, with ± standard deviation over seeds."""
    def fmt(key, scale=100.0, unit="%", sign="+", digits=1):
        mean, sd = summ[key]
        return f"{scale * mean:{sign}.{digits}f}{unit}" + (f" ± {scale * sd:.{digits}f}" if n > 1 else "")

    return (f"character loss change: {fmt('character_loss_change')}; other speakers: {fmt('others_loss_change')}; "
            f"specificity {fmt('specificity', unit=' pt')} (text tokens alone {fmt('text_specificity', unit=' pt')}); "
            f"attribution AUC {fmt('attribution_auc', 1.0, '', '', 3)}"
            f"{f' (mean ± sd over {n} seeds)' if n > 1 else ''}\n"
            f"clean endings {fmt('clean_ends', sign='')}; replies repeating a 4-gram {fmt('repeated_4gram', sign='')}; "
            f"sharing an 8-gram with training {fmt('copied_8gram', sign='')}")


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
    summ = summary(reports) if len(reports) > 1 else {}
    if summ:
        print(summary_lines(summ, len(reports) - 1))
    for i in range(min(args.examples, len(reports[0].examples))):
        print(f"\n...{reports[0].examples[i].prompt[-150:]!r}\n  reference: {reports[0].examples[i].reference[:150]}")
        for r in reports:
            print(f"  {r.label:<9}: {r.examples[i].reply[:150]!r}{'' if r.examples[i].ended_by_eos else ' [no EOS]'}")
    if args.json_out:
        from charlora.files import write_json_atomic
        from charlora.provenance import environment

        write_json_atomic({"reports": [asdict(r) for r in reports],
                           "summary": {k: {"mean": m, "sd": sd} for k, (m, sd) in summ.items()},
                           "settings": vars(args), "environment": environment()}, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
