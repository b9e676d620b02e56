"""Does a run resumed mid-epoch end with the uninterrupted run's adapter, on a real model?

    python bench/resume_check.py --reference loras/f9-seed1 --step 25 -- \\
        -m SmolLM2-135M-Instruct -d runs/falstaff.json -l r9 --seed 1 --sample_replies 0

Trains with the given lora_finetune.py arguments, stopped as by Ctrl-C after
optimizer step --step (tests/test_resume.py's stop_after: the same save and
stop as the signal, at a chosen step), then runs the same command with
--resume, and prints the largest difference between the finished adapter's
weights and --reference's, an adapter trained by the same arguments without
a stop (for the seed-1 default: evaluate.py --seeds trains them).
tests/test_resume.py checks the same on a tiny model; this is for the default one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", required=True, help="the uninterrupted run's adapter folder")
    p.add_argument("--step", type=int, required=True, help="stop after this optimizer step")
    p.add_argument("train", nargs=argparse.REMAINDER, help="-- then lora_finetune.py's arguments")
    args = p.parse_args(argv)
    train = [a for a in args.train if a != "--"]

    import lora_finetune
    from charlora import checkpoints, models
    from test_resume import stop_after, tensors

    real = checkpoints.make_interrupt_saver
    checkpoints.make_interrupt_saver = stop_after(args.step)
    try:
        assert lora_finetune.main(train) == 130, "the run was not stopped"
    finally:
        checkpoints.make_interrupt_saver = real
    assert lora_finetune.main(train + ["--resume"]) == 0
    parsed = lora_finetune.make_parser().parse_args(train)
    folder = models.resolve_dir(parsed.loras_dir, "loras")[0] / parsed.lora_name
    got, want = tensors(folder), tensors(Path(args.reference))
    print(f"largest weight difference from {args.reference}: "
          f"{max((got[k] - want[k]).abs().max().item() for k in want):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
