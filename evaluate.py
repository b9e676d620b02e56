"""Measure how well an adapter mimics a character on held-out dialogue.

    python evaluate.py -m SmolLM2-135M-Instruct -l falstaff --name Falstaff -t data/the-merry-wives-of-windsor.txt

Builds samples from the held-out text exactly as prepare_dataset.py does and
reports, for the base model and the adapter: loss per reply token of the
character's lines and of everyone else's, and how many greedy replies end by
themselves or go on to speak for another speaker.
"""
from __future__ import annotations

import sys

from charlora import cli
from charlora.config import EvalConfig, check_config, from_args

D = EvalConfig()


def make_parser():
    p = cli.parser(__doc__)
    cli.add_loading_flags(p, D)
    p.add_argument("-l", "--lora_name", help="adapter folder inside the loras folder, or a path (omit: base model only)")
    p.add_argument("-n", "--name", required=True, help="the character, as written before the colon")
    p.add_argument("-t", "--txtfilename", required=True, help="held-out `Name:line` dialogue")
    p.add_argument("-r", "--rounds", type=int, default=D.rounds, help="context lines per sample (as in prepare_dataset.py)")
    p.add_argument("-c", "--cutoff_len", type=int, default=D.cutoff_len, help="longest sample in tokens (as in training)")
    p.add_argument("--generate", type=int, default=D.generate, help="greedy replies to generate (the first N samples)")
    cli.add_sampling_flags(p, D.sampling, ["max_new_tokens", "repetition_penalty", "no_repeat_ngram_size",
                                                "reply_ngram_block"])
    p.add_argument("--batch_size", type=int, default=D.batch_size,
                   help="replies generated together; 1: exactly chat's replies also in bf16 (batches shift bf16 rounding)")
    p.add_argument("--others", type=int, default=D.others, help="other speakers' lines to score (0: skip)")
    p.add_argument("--json", dest="json_out", help="also write the results as JSON to this file")
    p.add_argument("--examples", type=int, default=D.examples, help="example replies to print side by side")
    p.add_argument("--seeds", type=int, default=D.seeds,
                   help="evaluate -l NAME-seed1 ... NAME-seedN and give each score's mean ± standard deviation")
    p.add_argument("-d", "--train_dataset", default=D.train_dataset,
                   help="with --seeds: train the seeds' adapters that are missing on this processed dataset, at "
                        "lora_finetune.py's defaults")
    return p


def run(cfg: EvalConfig) -> int:
    from dataclasses import asdict

    from charlora.errors import quiet_libraries
    from charlora.evaluate import check_json_target, evaluate, input_files, print_reports

    from charlora.files import check_outputs, write_json_atomic

    cfg = check_config(cfg)
    if cfg.json_out is not None:
        # a bad --json path fails now, not after the whole evaluation; one naming
        # the held-out text or the adapter's config replaced it with the results
        check_outputs([cfg.json_out], input_files(cfg))
        check_json_target(cfg.json_out)
    quiet_libraries(progress_bars=True)
    reports = evaluate(cfg, log=lambda message: print(message, file=sys.stderr))
    print_reports(reports, cfg.examples)
    if cfg.json_out is not None:
        from charlora.evaluate import summary
        from charlora.provenance import environment

        summ = summary(reports) if len(reports) > 1 else {}
        write_json_atomic({"reports": [asdict(r) for r in reports],
                           # one adapter has no spread: null, not the 0.0 mean_sd gives it
                           "summary": {k: {"mean": m, "sd": sd if len(reports) > 2 else None}
                                       for k, (m, sd) in summ.items()},
                           "settings": asdict(cfg), "environment": environment()}, cfg.json_out)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return cli.run(lambda: run(from_args(EvalConfig, args)))


if __name__ == "__main__":
    sys.exit(main())
