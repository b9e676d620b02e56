"""One LoRA adapter = (1 + mu) x D - mu x C, for issue 12's task-arithmetic probe.

    python bench/combine_loras.py loras/f9-seed1 loras/o9-seed1 0.5 loras/amp0.5-seed1

D is trained on the character's lines, C (the control) at the same settings
on other speakers' lines of the same play, none of the character's.  If what
the two share is the play's language and what D alone has is the person,
(1 + mu) D - mu C keeps the shared part once and scales the person's part
by 1 + mu.  Exact, not approximate: the factors are stacked, A = [A_D; A_C]
and B = [(1 + mu) B_D, -mu B_C], with rank and alpha both doubled so that
alpha / r, the LoRA scale, is unchanged.  Both adapters must share rank,
alpha and target modules.  docs/benchmarks.md has what it measured.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def combine(d: dict, c: dict, mu: float) -> dict:
    from residual_lora import stack  # bench/, beside this script

    if d.keys() != c.keys():
        raise SystemExit("the two adapters have different LoRA tensors")
    return stack([d, c], [1 + mu, -mu])


def main(argv: list[str]) -> int:
    from safetensors.torch import load_file, save_file

    d, c, mu, out = Path(argv[0]), Path(argv[1]), float(argv[2]), Path(argv[3])
    cfg, other = (json.loads((f / "adapter_config.json").read_text()) for f in (d, c))
    if (cfg["r"], cfg["lora_alpha"], sorted(cfg["target_modules"])) != (
            other["r"], other["lora_alpha"], sorted(other["target_modules"])):
        raise SystemExit("the two adapters differ in rank, alpha or target modules")
    tensors = combine(load_file(d / "adapter_model.safetensors"), load_file(c / "adapter_model.safetensors"), mu)
    out.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():  # tokenizer files, charlora_config.json: D's
        if f.is_file() and f.name not in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copy(f, out / f.name)
    cfg["r"], cfg["lora_alpha"] = 2 * cfg["r"], 2 * cfg["lora_alpha"]
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(tensors, out / "adapter_model.safetensors")
    print(f"wrote {out} (rank {cfg['r']}, alpha {cfg['lora_alpha']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
