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
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml


def character_name(samples: Sequence[dict[str, str]]) -> str:
    """The character a dataset trains: the `Name:` every input ends with."""
    names = Counter(s["input"].rsplit("\n", 1)[-1].rstrip(":\uff1a").strip() for s in samples)
    return names.most_common(1)[0][0] if names else ""


# Hub ids of the models charlora installs itself (get_default_model.py), so an
# adapter names a base that another machine can download; any other base is
# recorded by its folder name unless its config.json names a hub id.
HUB_IDS = {"SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

# The character file's `context` is sent with every webui prompt: this many
# tokens at most, so a 2048-token model keeps most of its window for the chat.
CHARACTER_CONTEXT_TOKENS = 384


def base_model_id(model_path: Path) -> str:
    """What to record as the adapter's base: a hub id where one is known
    (HUB_IDS, or config.json's `_name_or_path`), else the folder name.  Never
    a local path: another machine has other folders, and tools that see a
    path that isn't there (llama.cpp's convert_lora_to_gguf.py) fall back to
    asking the hub for it."""
    folder = Path(model_path).name
    if folder in HUB_IDS:
        return HUB_IDS[folder]
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    named = config.get("_name_or_path") if isinstance(config, dict) else None
    if isinstance(named, str) and _HUB_ID.fullmatch(named) and named.rsplit("/", 1)[1] == folder:
        return named
    return folder


def record_base(adapter_dir: Path, model_path: Path) -> str:
    """Put base_model_id in adapter_config.json's base_model_name_or_path
    (PEFT writes the path the model was loaded from); returns it."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_model_id(model_path)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return config["base_model_name_or_path"]


def write_card(dest: Path, record: dict[str, Any], losses: Sequence[tuple[int, float]]) -> None:
    """README.md for the adapter folder (replaces PEFT's empty template);
    `losses` are the logged (step, train loss) pairs."""
    cfg = record["config"]
    name = record["character"]
    lora = Path(record["adapter_dir"]).name
    folder = Path(record["base_model"]).name
    base_id = base_model_id(Path(record["base_model"]))
    hub_note = "" if base_id == folder else f" (`{base_id}` on the Hugging Face hub)"
    loss_line = f"{losses[0][1]:.3f} at step {losses[0][0]} -> {losses[-1][1]:.3f} at step {losses[-1][0]}" if losses else "not logged"
    rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in cfg.items())
    eval_line = (f"{record['eval_loss']:.3f} per reply token on the held-out samples, best of "
                 f"{len(record['eval_losses'])} evaluations; this adapter is step {record['kept_step']}'s"
                 if record.get("eval_loss") is not None else "no held-out split (`--eval_split`)")
    text = f"""---
library_name: peft
base_model: {base_id}
tags: [lora, charlora, character]
---
# {lora}: a LoRA adapter that talks like {name}

- Base model: `{folder}`{hub_note}, trained in {record['dtype']}, quantization {record['quantization']}
- Character: **{name}**
- Data: {record['train_samples']} training samples, {record['eval_samples']} held out, from `{cfg['dataset_name']}`
- Optimizer steps: {record['optimizer_steps']} in {record['train_seconds']} s
- Train loss (reply tokens + end-of-sequence): {loss_line}
- Held-out loss: {eval_line}

![loss curve](loss.png)

## The base model

`adapter_config.json` names the base as `{base_id}`, never a local path. Tools
that load the base themselves take it from wherever your copy is: `-m {folder}`
for charlora's scripts (a folder in `models/`), the folder path for PEFT and
for llama.cpp's converter (`convert_lora_to_gguf.py --base models/{folder}`).

## Talk to it

```bash
python chat.py -m {folder} -l {lora} --name "{name}" --user You
python serve.py -m {folder} -l {lora} --name "{name}"      # OpenAI-compatible API on 127.0.0.1:5001
```

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
base = AutoModelForCausalLM.from_pretrained("models/{folder}")
model = PeftModel.from_pretrained(base, "loras/{lora}")
tokenizer = AutoTokenizer.from_pretrained("models/{folder}")
```

Prompts are `Name:line` lines, one a line, ending with `{name}:`; replies end
with the model's end-of-sequence token.

## In text-generation-webui

1. Copy this folder into `user_data/loras/` (`loras/` in older versions) and the base into
   `user_data/models/`; load the base model, then pick `{lora}` under LoRA(s).
2. Copy `{name}.yaml` into `user_data/characters/` (`characters/` in older versions) and pick it in
   the Chat tab's character menu.
3. Set the chat mode to **chat**. Not `instruct` (the default) or `chat-instruct`: those wrap every
   line in the base model's own chat template and ignore the character, and the adapter never saw
   that shape. In `chat` mode webui sends the character's context, then the conversation as
   `Name: text` lines, then `{name}:`, and stops before your next `Name:`, as charlora's chat does
   (webui puts a space after the colon; training had none).

## In llama.cpp

```bash
python export_gguf.py -l {lora}                                  # -> loras/{lora}/{lora}.gguf
llama-cli -m {folder}.gguf --lora loras/{lora}/{lora}.gguf       # the base as a GGUF of its own
```

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


def character_card(name: str, samples: Sequence[dict[str, str]], count_tokens: Callable[[str], int] | None = None,
                   budget: int = CHARACTER_CONTEXT_TOKENS, examples: int = 4) -> dict[str, str]:
    """text-generation-webui's characters/<Name>.yaml: name, greeting, context.

    The greeting is the character's shortest line (a natural opener).  The
    context is a line of introduction and up to `examples` real exchanges
    from the dataset (the line before a reply, then the reply) in the
    `Name:line` shape the adapter learned: those with the longest replies, no
    dataset line twice (neighbouring samples share their context, so whole
    contexts repeated one passage), in dataset order, within `budget` tokens
    as `count_tokens` counts them (default: a word-and-punctuation count,
    which no BPE tokenizer undercuts by much; pass the model's tokenizer).
    """
    count = count_tokens or (lambda text: len(re.findall(r"\w+|[^\w\s]", text)))
    ranked = sorted(samples, key=lambda s: len(s["output"]))
    greeting = ranked[0]["output"] if ranked else ""
    intro = f"The following is a conversation with {name}, who speaks as in these examples.\n"
    used: set[str] = set()
    picked: list[tuple[int, str]] = []
    for i in sorted(range(len(samples)), key=lambda i: (-len(samples[i]["output"]), i)):
        before = samples[i]["input"].rsplit("\n", 1)[0] if "\n" in samples[i]["input"] else ""
        lines = [*([before.rsplit("\n", 1)[-1]] if before else []), f"{name}:{samples[i]['output']}"]
        if len(picked) == examples or used.intersection(lines):
            continue
        trial = sorted([*picked, (i, "\n".join(lines))])
        if count(intro + "\n" + "\n\n".join(text for _, text in trial) + "\n") > budget:
            continue
        picked, used = trial, used | set(lines)
    context = intro + "\n" + "\n\n".join(text for _, text in picked) + "\n" if picked else intro
    return {"name": name, "greeting": greeting, "context": context}


class _CardDumper(yaml.SafeDumper):
    """Multi-line values (the context) as `|` blocks, so the file reads as the
    dialogue it holds; YAML itself quotes any value a block can't carry."""


_CardDumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def write_character(path: Path, card: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.dump(card, Dumper=_CardDumper, sort_keys=False, allow_unicode=True, width=1000),
                    encoding="utf-8")


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
