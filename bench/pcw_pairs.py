"""Training with the PCW layout against its control, over seeds: pairs bench/pcw.py's scores.

    python bench/pcw_pairs.py runs/pcw-seeds.json --control falstaff-r20-seed{1,2,3} \\
        --treated falstaff-pcw3-seed{1,2,3} --json docs/pcw/pcw-seeds-pairs.json

Reads one bench/pcw.py JSON in which the base model and every adapter named
were scored on the same held-out samples.  Two questions, each answered over
training seeds (one value per adapter), never over samples alone, because two
seeds of the same recipe differ by more than most of these effects:

- per setting (truncated, pcw N, full): does the treated adapter (trained
  with --pcw_windows) reach a lower loss than its control (the same data and
  flags without it)?  The seeds' mean losses, their difference and its
  standard error (charlora.metrics.compare_seeds);
- per setting and method: does the setting beat truncation for that method?
  Each adapter's own difference from its truncated loss, then the same
  comparison over seeds against zero.

Under 2 standard errors is "no difference".  Pure arithmetic: no model.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def setting_losses(scores: dict, labels: list[str]) -> dict[str, list[float]]:
    """Per setting, one loss per adapter in `labels` (bench/pcw.py's loss_per_reply_token)."""
    missing = [x for x in labels if x not in scores]
    if missing:
        raise SystemExit(f"not scored in this bench JSON: {', '.join(missing)}")
    settings = list(scores[labels[0]])
    return {s: [scores[x][s] for x in labels] for s in settings}


def pair(scores: dict, control: list[str], treated: list[str]) -> dict:
    """Treated against control per setting, and each method's settings against its own truncation."""
    from charlora.metrics import compare_seeds

    ctl, trt = setting_losses(scores, control), setting_losses(scores, treated)
    out: dict = {"treated_vs_control": {s: compare_seeds(ctl[s], trt[s]) for s in ctl}, "vs_truncated": {}}
    for method, losses in (("control", ctl), ("treated", trt)):
        base = losses["truncated"]
        out["vs_truncated"][method] = {
            s: compare_seeds([0.0] * len(base), [v - t for v, t in zip(vals, base)])
            for s, vals in losses.items() if s != "truncated"}
    return out


def table(result: dict) -> str:
    rows = ["| setting | control | treated | treated - control | |", "| --- | --- | --- | --- | --- |"]
    for s, c in result["treated_vs_control"].items():
        rows.append(f"| {s} | {c['a_mean']:.3f} ± {c['a_sd']:.3f} | {c['b_mean']:.3f} ± {c['b_sd']:.3f} "
                    f"| {c['difference']:+.3f} ({c['difference_in_se']:+.1f} SE) | {c['verdict']} |")
    rows += ["", "| setting minus truncated | control | treated |", "| --- | --- | --- |"]
    for s in result["vs_truncated"]["control"]:
        cells = [f"{m[s]['difference']:+.3f} ± {m[s]['standard_error']:.3f} ({m[s]['verdict']})"
                 for m in (result["vs_truncated"]["control"], result["vs_truncated"]["treated"])]
        rows.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bench_json", help="bench/pcw.py --json output that scored every adapter below")
    p.add_argument("--control", nargs="+", required=True, help="adapters trained without --pcw_windows, one per seed")
    p.add_argument("--treated", nargs="+", required=True, help="adapters trained with --pcw_windows, one per seed")
    p.add_argument("--json", dest="json_out")
    a = p.parse_args(argv)

    bench = json.loads(Path(a.bench_json).read_text())
    result = {"input": a.bench_json, "control": a.control, "treated": a.treated, "samples": bench["samples"],
              **pair(bench["loss_per_reply_token"], a.control, a.treated)}
    print(table(result))
    if a.json_out:
        from charlora.provenance import environment

        result["environment"] = environment()
        Path(a.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
