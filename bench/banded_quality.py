"""Banded against per-sample training: the same adapters' scores over seeds, and their training time.

    python bench/banded_quality.py --per_sample docs/throughput/banded-quality-per-sample.json \
        --banded docs/throughput/banded-quality-banded-seed{1,2,3}.json \
        --train_per_sample 'docs/person/train-falstaff-seed*.json' \
        --train_banded 'docs/person/train-falstaff-banded-seed*.json' --json docs/throughput/banded-quality.json

Reads evaluate.py JSONs: one per method, or several whose adapters are
pooled (each of --seeds N, or one adapter each; the same held-out text and
base model, checked by the base's loss; each adapter scored per sample, so
the numbers compare), and
the training records (charlora_config.json copies).  For each score: mean
and sample standard deviation over seeds both ways, the difference of the
means, its standard error sqrt(sd_a^2/n_a + sd_b^2/n_b), and "no
difference" where the difference is under 2 standard errors.  Pure
arithmetic over the JSONs: no model.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCORES = ("character_loss", "others_loss", "character_loss_change", "others_loss_change", "specificity",
          "text_specificity", "attribution_auc", "clean_ends", "repeated_4gram", "copied_8gram")


def per_seed(evaluation: dict) -> dict[str, list[float]]:
    """Each score, one value per adapter (seed), from an evaluate.py JSON."""
    from charlora.evaluate import seed_scores

    return seed_scores(evaluation["reports"][0], evaluation["reports"][1:])


def pooled(evaluations: list[dict]) -> dict:
    """One evaluation from several of the same base and text: the first base, every adapter."""
    base = evaluations[0]["reports"][0]
    for e in evaluations[1:]:
        if abs(e["reports"][0]["character_loss"] - base["character_loss"]) > 1e-6:
            raise SystemExit("evaluations of one method scored the base model differently: not the same text")
    return {"reports": [base] + [r for e in evaluations for r in e["reports"][1:]]}


def compare(a: list[float], b: list[float]) -> dict:
    """b against a (charlora.metrics.compare_seeds), under this JSON's names for the two methods."""
    from charlora.metrics import compare_seeds

    c = compare_seeds(a, b)
    names = {"a_mean": "per_sample_mean", "a_sd": "per_sample_sd", "b_mean": "banded_mean", "b_sd": "banded_sd"}
    return {"per_sample": a, "banded": b, **{names.get(k, k): v for k, v in c.items()}}


def training(pattern: str) -> list[dict]:
    """Seconds, epochs scored and the kept epoch of each training record matching `pattern`."""
    out = []
    for path in sorted(glob.glob(str(ROOT / pattern) if not Path(pattern).is_absolute() else pattern)):
        r = json.loads(Path(path).read_text())
        epochs = len(r["eval_losses"])
        kept = next(k + 1 for k, (step, _) in enumerate(r["eval_losses"]) if step == r["kept_step"])
        out.append({"record": str(Path(path).relative_to(ROOT)) if Path(path).is_relative_to(ROOT) else path,
                    "seed": r["config"]["seed"], "train_seconds": r["train_seconds"], "epochs_run": epochs,
                    "epoch_kept": kept, "seconds_per_epoch": r["train_seconds"] / epochs,
                    "optimizer_steps": r["optimizer_steps"], "held_out_loss": r["eval_loss"],
                    "bands": r.get("bands")})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per_sample", nargs="+", required=True, help="evaluate.py JSON(s) of the per-sample adapters")
    p.add_argument("--banded", nargs="+", required=True, help="evaluate.py JSON(s) of the banded adapters")
    p.add_argument("--train_per_sample", help="glob of the per-sample training records")
    p.add_argument("--train_banded", help="glob of the banded training records")
    p.add_argument("--json", dest="json_out")
    a = p.parse_args(argv)

    runs = {k: pooled([json.loads(Path(f).read_text()) for f in getattr(a, k)]) for k in ("per_sample", "banded")}
    base = [runs[k]["reports"][0]["character_loss"] for k in runs]
    if abs(base[0] - base[1]) > 1e-6:
        raise SystemExit(f"the two evaluations scored the base model differently ({base[0]} vs {base[1]}): "
                         "not the same held-out text or settings")
    a_scores, b_scores = per_seed(runs["per_sample"]), per_seed(runs["banded"])
    scores = {k: compare(a_scores[k], b_scores[k]) for k in SCORES}
    for k, s in scores.items():
        print(f"{k:22} per sample {s['per_sample_mean']:.4f} ± {s['per_sample_sd']:.4f}   banded "
              f"{s['banded_mean']:.4f} ± {s['banded_sd']:.4f}   diff {s['difference']:+.4f} "
              f"({s['difference_in_se']:+.1f} SE): {s['verdict']}")
    result = {"inputs": {"per_sample": a.per_sample, "banded": a.banded}, "base_character_loss": base[0],
              "scores": scores}
    if a.train_per_sample and a.train_banded:
        result["training"] = {"per_sample": training(a.train_per_sample), "banded": training(a.train_banded)}
        for k, rows in result["training"].items():
            print(k, [(r["seed"], r["train_seconds"], r["epochs_run"], r["epoch_kept"]) for r in rows])
        # the held-out tail of the training text (Henry IV's last Falstaff lines), scored per sample by the keeper
        tail = compare(*[[r["held_out_loss"] for r in result["training"][k]] for k in ("per_sample", "banded")])
        scores["training_held_out_loss"] = tail
        print(f"training held-out loss  per sample {tail['per_sample_mean']:.4f} ± {tail['per_sample_sd']:.4f}   "
              f"banded {tail['banded_mean']:.4f} ± {tail['banded_sd']:.4f}   ({tail['difference_in_se']:+.1f} SE): "
              f"{tail['verdict']}")
    if a.json_out:
        from charlora.provenance import environment

        result["environment"] = environment()
        Path(a.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
