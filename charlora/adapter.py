"""Stage 6: what goes next to the adapter weights, and where else it can go.

- README.md: the adapter's card (base model, character, data, every
  hyper-parameter, losses, how to load it);
- loss.png: the training (and eval) loss curve;
- <Name>.yaml: a text-generation-webui character file, so chat there starts in
  character;
- merge: the adapter folded into a full model folder, for tools that can't
  load adapters;
- loading: find adapters, refuse one made for another base model before PEFT
  reads it, and put one or several (scaled) on a model: load_with_adapters,
  the loader of chat, evaluation and any server.
"""
from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import yaml

from charlora.errors import CharloraError
from charlora.files import ordinary_modes

if TYPE_CHECKING:
    from charlora.config import LoadConfig


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

{card_usage(name, lora, folder, base_id)}
## Hyper-parameters

| setting | value |
| --- | --- |
{rows}
"""
    (dest / "README.md").write_text(text, encoding="utf-8")


def card_usage(name: str, lora: str, folder: str, base_id: str) -> str:
    """The adapter card's how-to sections: the base model, chat.py / serve.py /
    PEFT, text-generation-webui and llama.cpp, with this adapter's names in."""
    return f"""## The base model

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
"""


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


def character_yaml(card: dict[str, str]) -> str:
    return yaml.dump(card, Dumper=_CardDumper, sort_keys=False, allow_unicode=True, width=1000)


def write_character(path: Path, card: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(character_yaml(card), encoding="utf-8")


def merge_into_model(base_path: Path, adapter_dir: Path, out: Path, dtype) -> None:
    """Fold the adapter into a 16-bit copy of the base weights, saved as a full model folder
    (a quantized base can't be merged exactly, so the base is always reloaded unquantized here)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)  # an earlier merge's leftover would mix its files into this one
    try:
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base_path).save_pretrained(tmp)
        ordinary_modes(tmp)  # safetensors writes 0600: a webui running as another user could not read it
        tmp.rename(out)
    except BaseException:  # disk full, Ctrl-C: a model-sized half folder is not left in models/
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ------------------------------------------------------------- loading


def find_adapter(loras_dir: Path, name: str) -> Path:
    """loras/<name>, or `name` as a path, holding adapter_config.json (checked: read_adapter_config)."""
    for candidate in (loras_dir / name, Path(name)):
        if (candidate / "adapter_config.json").is_file():
            read_adapter_config(candidate)
            return candidate
    there = sorted(p.name for p in loras_dir.iterdir() if (p / "adapter_config.json").is_file()) if loras_dir.is_dir() else []
    listing = f"adapters in {loras_dir}/: {', '.join(there)}" if there else f"no adapters in {loras_dir}/"
    return _raise(f"adapter {loras_dir / name} not found (no adapter_config.json); {listing}")


def _raise(message: str):
    raise CharloraError(message)


def read_adapter_config(adapter: Path) -> dict[str, Any]:
    """adapter_config.json, checked for what PEFT and the GGUF export read
    from it (a list, {} or a text "r" were tracebacks in both)."""
    import math

    path = adapter / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CharloraError(f"{path} is not readable JSON") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise CharloraError(f'{path} is not a LoRA adapter\'s config (it needs "peft_type": "LORA")')
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not (type(r) is int and r >= 1 and type(alpha) in (int, float) and math.isfinite(alpha)):
        raise CharloraError(f'{path} needs a whole "r" of 1 or more and a number "lora_alpha", got {r!r} and {alpha!r}')
    if not any((adapter / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise CharloraError(f"{adapter} has no adapter_model.safetensors (the adapter's weights)")
    return cfg


def adapter_base_name(adapter: Path) -> str | None:
    try:
        cfg = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CharloraError(f"{adapter}/adapter_config.json is not readable JSON") from None
    base = cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None
    return Path(str(base).rstrip("/\\")).name if base else None


def _adapter_shapes(adapter: Path) -> dict[str, list[int]] | None:
    """{tensor name: shape} from adapter_model.safetensors (header only), or None."""
    path = adapter / "adapter_model.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # a corrupt file: let the user know which one
        raise CharloraError(f"{path} is not a readable safetensors file: {str(exc).splitlines()[0] if str(exc) else exc}") from None


def _layer_dims(module: Any) -> tuple[int, int] | None:
    """(in, out) features of a layer LoRA can wrap (Linear, GPT-2's Conv1D)."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None:
        return int(weight.shape[0]), int(weight.shape[1])
    return None


def check_adapter_fits(adapter: Path, model: Any, model_name: str) -> None:
    """Refuse an adapter made for another base model, before PEFT fails on it.

    Compares every lora_A / lora_B tensor with the layer it wraps (`model` may be
    on the meta device); the usual cause, another model size, is named by its hidden size."""
    shapes = _adapter_shapes(adapter)
    if shapes is None:
        return
    base = adapter_base_name(adapter)
    trained = f" (it was trained on {base})" if base and base != model_name else ""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden = getattr(config, "hidden_size", None)
    modules = dict(model.named_modules())
    problems: list[tuple[str, int, int, int]] = []  # (layer, want, got, which dim: 0 in / 1 out)
    found = {key: re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key) for key in shapes}
    if not any(found.values()):  # PEFT warned, then the base model talked as if with the adapter, exit 0
        raise CharloraError(f"adapter {adapter} holds no LoRA weights (no lora_A / lora_B in "
                            "adapter_model.safetensors): it is damaged")
    for key, shape in shapes.items():
        m = found[key]
        if m is None or len(shape) != 2:
            continue
        layer, ab = m.groups()
        module = modules.get(layer)
        if module is None:
            raise CharloraError(f"adapter {adapter} does not fit model {model_name}: it has no layer {layer}{trained}")
        dims = _layer_dims(module)
        if dims is None:
            continue
        if ab == "A" and shape[1] != dims[0]:
            problems.append((layer, dims[0], shape[1], 0))
        elif ab == "B" and shape[0] != dims[1]:
            problems.append((layer, dims[1], shape[0], 1))
    if not problems:
        return
    for layer, want, got, which in problems:
        if which == 0 and hidden is not None and want == hidden:
            raise CharloraError(f"adapter {adapter} was trained for a model with hidden size {got}, "
                                f"this one ({model_name}) has {want}{trained}")
    layer, want, got, which = problems[0]
    side = "inputs" if which == 0 else "outputs"
    raise CharloraError(f"adapter {adapter} does not fit model {model_name}: layer {layer} has {want} {side}, "
                        f"the adapter expects {got}{trained}")


def check_adapters_fit(adapters: Sequence[Path], model_path: Path, trust_remote_code: bool = False) -> None:
    """check_adapter_fits for each adapter, on the base's layers without weights (before any are read)."""
    from charlora import models

    shapes = models.meta_model(model_path, trust_remote_code) if adapters else None
    for adapter in adapters:
        check_adapter_fits(adapter, shapes, model_path.name)


def attach_adapters(model: Any, adapters: Sequence[Path], scales: Sequence[float]):
    """PeftModel with every adapter active at once, each scaled by its factor."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    names = [f"a{i}" for i in range(len(adapters))]
    try:
        for i, (adapter, label) in enumerate(zip(adapters, names)):
            if i == 0:
                model = PeftModel.from_pretrained(model, adapter, adapter_name=label)
            else:
                model.load_adapter(adapter, adapter_name=label)
    except RuntimeError as exc:  # PEFT's "size mismatch for ..." if the pre-check missed it
        raise CharloraError(f"adapter {adapter} does not fit this model: {str(exc).splitlines()[-1].strip()}") from None
    except ValueError as exc:
        raise CharloraError(f"cannot load adapter {adapter}: {str(exc).splitlines()[0]}") from None
    if len(names) > 1:
        # PeftModel.set_adapter takes one name; the LoRA tuner underneath takes a
        # list and sums the active adapters' updates.
        model.base_model.set_adapter(names, inference_mode=True)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for label, scale in zip(names, scales):
                module.set_scale(label, scale)  # scale x lora_alpha / r
    model.eval()
    return model


def adapter_scales(adapters: Sequence[Path], scales: Sequence[float] | None) -> list[float]:
    """One factor per adapter from --lora_scale: none (1 each), one for all, or one each."""
    if scales and not adapters:  # accepted in silence, and the base model answered unscaled
        raise CharloraError("--lora_scale scales adapters, and no adapter was given (-l/--lora_name)")
    scales = list(scales or [1.0])
    if len(scales) not in (1, len(adapters)):
        raise CharloraError(f"--lora_scale takes one factor for all adapters or one per adapter "
                            f"({len(adapters)}), got {len(scales)}")
    return scales * len(adapters) if len(scales) == 1 else scales


def load_with_adapters(cfg: "LoadConfig", lora_names: Sequence[str], lora_scales: Sequence[float] | None,
                       log: Callable[[str], None]) -> tuple[Any, Any, str]:
    """(model, tokenizer, description): models.load_for_inference with the
    adapters on top, every check of the user's input before weights are read."""
    from charlora import models

    models_dir, note = models.resolve_dir(cfg.models_dir, "models")
    if note:
        log(note)
    model_path = models.find_model(models_dir, cfg.model_name)
    adapters: list[Path] = []
    if lora_names:
        loras_dir, note = models.resolve_dir(cfg.loras_dir, "loras")
        if note:
            log(note)
        adapters = [find_adapter(loras_dir, name) for name in lora_names]
    scales = adapter_scales(adapters, lora_scales)
    check_adapters_fit(adapters, model_path, cfg.trust_remote_code)
    loaded = models.load_for_inference(model_path, cfg.quantization, cfg.dtype, cfg.trust_remote_code,
                                       cfg.allow_pickle, log)
    model = loaded.model
    if adapters:
        model = attach_adapters(model, adapters, scales)
        for adapter in adapters:
            base = adapter_base_name(adapter)
            if base and base != model_path.name:
                log(f"note: adapter {adapter} was trained on {base}; using it on {model_path.name} (same layer shapes)")
    what = model_path.name + "".join(f" + {a.name}" + (f" x{s:g}" if s != 1 else "") for a, s in zip(adapters, scales))
    return model, loaded.tokenizer, f"{what} {loaded.describe()}"
