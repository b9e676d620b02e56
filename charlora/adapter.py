"""Stage 6: what goes next to the adapter weights, and where else it can go.

- README.md: the adapter's card (base model, character, data, every
  hyper-parameter, losses, how to load it);
- loss.png: the training (and eval) loss curve;
- <Name>.yaml: a text-generation-webui character file, so chat there starts in
  character;
- merge: the adapter folded into a full model folder, for tools that can't
  load adapters.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import yaml


def character_name(samples: Sequence[dict[str, str]]) -> str:
    """The character a dataset trains: the `Name:` every input ends with."""
    names = Counter(s["input"].rsplit("\n", 1)[-1].rstrip(":\uff1a").strip() for s in samples)
    return names.most_common(1)[0][0] if names else ""


def write_card(dest: Path, record: dict[str, Any], losses: Sequence[tuple[int, float]]) -> None:
    """README.md for the adapter folder (replaces PEFT's empty template);
    `losses` are the logged (step, train loss) pairs."""
    cfg = record["config"]
    name = record["character"]
    lora = Path(record["adapter_dir"]).name
    loss_line = f"{losses[0][1]:.3f} at step {losses[0][0]} -> {losses[-1][1]:.3f} at step {losses[-1][0]}" if losses else "not logged"
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in cfg.items())
    eval_line = (f"{record['eval_loss']:.3f} per reply token on the held-out samples, best of "
                 f"{len(record['eval_losses'])} evaluations; this adapter is step {record['kept_step']}'s"
                 if record.get("eval_loss") is not None else "no held-out split (`--eval_split`)")
    text = f"""---
library_name: peft
base_model: {record['base_model']}
tags: [lora, charlora, character]
---
# {lora}: a LoRA adapter that talks like {name}

- Base model: `{record['base_model']}` ({record['dtype']}, quantization {record['quantization']})
- Character: **{name}**
- Data: {record['train_samples']} training samples, {record['eval_samples']} held out, from `{cfg['dataset_name']}`
- Optimizer steps: {record['optimizer_steps']} in {record['train_seconds']} s
- Train loss (reply tokens + end-of-sequence): {loss_line}
- Held-out loss: {eval_line}

![loss curve](loss.png)

## Talk to it

```bash
python chat.py -m {Path(record['base_model']).name} -l {lora} --name "{name}" --user You
```

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base = AutoModelForCausalLM.from_pretrained("{record['base_model']}")
model = PeftModel.from_pretrained(base, "{record['adapter_dir']}")
tokenizer = AutoTokenizer.from_pretrained("{record['base_model']}")
```

In text-generation-webui: copy this folder into `user_data/loras/` (or `loras/`), load
the base model, pick `{lora}` in the LoRA menu, and load the character file
`{name}.yaml` from `characters/`. Prompts are `Name:line` lines, one a line,
ending with `{name}:`; replies end with the model's end-of-sequence token.

## Hyper-parameters

| setting | value |
| --- | --- |
{rows}
"""
    (dest / "README.md").write_text(text, encoding="utf-8")


def plot_losses(dest: Path, train: Sequence[tuple[int, float]], evals: Sequence[tuple[int, float]]) -> None:
    """loss.png: train loss per logged step, eval loss per epoch when present."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train", marker=".")
    if evals:
        ax.plot(*zip(*evals), label="eval", marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per reply token")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(dest / "loss.png")
    plt.close(fig)


def character_card(name: str, samples: Sequence[dict[str, str]], examples: int = 3) -> dict[str, str]:
    """text-generation-webui's characters/<Name>.yaml: name, greeting, context.

    The greeting is the character's shortest line (a natural opener), the
    context a few real exchanges from the dataset in the same `Name:line`
    shape the adapter learned.
    """
    ranked = sorted(samples, key=lambda s: len(s["output"]))
    greeting = ranked[0]["output"] if ranked else ""
    picked = sorted(samples, key=lambda s: -len(s["input"]))[:examples]
    shots = "\n\n".join(f"{s['input']}{s['output']}" for s in picked)
    context = f"The following is a conversation with {name}, who speaks as in these examples.\n\n{shots}\n"
    return {"name": name, "greeting": greeting, "context": context}


def write_character(path: Path, card: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=1000), encoding="utf-8")


def merge_into_model(base_path: Path, adapter_dir: Path, out: Path, dtype) -> None:
    """Fold the adapter into a 16-bit copy of the base weights and save a full
    model folder (a quantized base can't be merged exactly, so the base is
    always reloaded unquantized here)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    tmp = out.with_name(f".{out.name}.partial")
    merged.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(base_path).save_pretrained(tmp)
    tmp.rename(out)


def read_record(adapter_dir: Path) -> dict[str, Any]:
    return json.loads((adapter_dir / "charlora_config.json").read_text(encoding="utf-8"))
