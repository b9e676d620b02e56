"""Issue 12's residual-adapter probe: learn the person on top of the play.

    # 1. the control adapter C (no line of the character) merged into the base, in fp32:
    python bench/residual_lora.py merge models/SmolLM2-135M-Instruct loras/o9-seed1 models/smol-o9
    # 2. train P, the character's adapter, on that model:
    python lora_finetune.py -m smol-o9 -d runs/falstaff.json -l p9-seed1 --seed 1 --dtype fp32 --sample_replies 0
    # 3. one LoRA on the plain base = C + a x P (a = 1: the two as trained; a > 1: the person amplified):
    python bench/residual_lora.py sum loras/cp2-seed1 loras/o9-seed1 1 loras/p9-seed1 2

If C holds the play's language, P (trained where C already explains it) holds
what the character adds, and amplifying it should raise specificity and
attribution without undoing the shared part, as subtracting C did
(bench/combine_loras.py).  `sum` is exact: the factors are stacked, A = [A_1;
A_2; ...], B = [w_1 B_1, w_2 B_2, ...], rank and alpha multiplied by the count
(alpha / r, the LoRA scale, unchanged); every adapter must share rank, alpha
and target modules.  docs/benchmarks.md has what it measured.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def merge(base: Path, lora: Path, out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # fp32: a bf16 copy would round the control's small update away
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), lora)
    model.merge_and_unload().save_pretrained(out)
    for f in base.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "generation")):
            shutil.copy(f, out / f.name)


def stack(tensors: list[dict], weights: list[float]) -> dict:
    import torch

    return {k: torch.cat([t[k] for t in tensors], 0) if "lora_A" in k else
            torch.cat([w * t[k] for t, w in zip(tensors, weights)], 1) for k in tensors[0]}


def lora_sum(out: Path, pairs: list[tuple[Path, float]]) -> None:
    from safetensors.torch import load_file, save_file

    cfgs = [json.loads((p / "adapter_config.json").read_text()) for p, _ in pairs]
    if len({(c["r"], c["lora_alpha"], tuple(sorted(c["target_modules"]))) for c in cfgs}) != 1:
        raise SystemExit("the adapters differ in rank, alpha or target modules")
    tensors = [load_file(p / "adapter_model.safetensors") for p, _ in pairs]
    if any(t.keys() != tensors[0].keys() for t in tensors):
        raise SystemExit("the adapters have different LoRA tensors")
    out.mkdir(parents=True, exist_ok=True)
    for f in pairs[-1][0].iterdir():  # tokenizer files, charlora_config.json: the last adapter's
        if f.is_file() and f.name not in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copy(f, out / f.name)
    cfg = cfgs[-1]
    cfg["r"], cfg["lora_alpha"] = len(pairs) * cfg["r"], len(pairs) * cfg["lora_alpha"]
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(stack(tensors, [w for _, w in pairs]), out / "adapter_model.safetensors")


def main(argv: list[str]) -> int:
    if argv[:1] == ["merge"] and len(argv) == 4:
        merge(*map(Path, argv[1:]))
    elif argv[:1] == ["sum"] and len(argv) >= 4 and len(argv) % 2 == 0:
        lora_sum(Path(argv[1]), [(Path(argv[i]), float(argv[i + 1])) for i in range(2, len(argv), 2)])
    else:
        raise SystemExit(__doc__)
    print("wrote", argv[-1] if argv[0] == "merge" else argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
