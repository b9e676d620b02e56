"""Settings of a training run (lora_finetune.py): `TrainConfig`, one field per
flag with its reason, `check_train_config`, the pure range check that
refuses a bad flag in one line before anything is read or loaded, and
`lora_placement`, where on the loaded model the LoRA layers go.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from charlora.errors import CharloraError

DEFAULT_EVAL_SPLIT = 0.1


@dataclass
class TrainConfig:
    """Every knob of a run; saved as charlora_config.json next to the adapter."""

    dataset_name: str = "processed_dataset.json"
    """Processed dataset written by prepare_dataset.py."""
    model_name: str = "pygmalion-6b"
    """Folder name under the models folder."""
    lora_name: str = "lora_test"
    """Adapter folder name under the loras folder."""
    batch_size: int = 4
    """Samples per forward pass (per device)."""
    epochs: float = 10
    """Passes over the dataset."""
    cutoff_len: int = 256
    """Longest sample in tokens; longer ones lose the start of their context."""
    lora_rank: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    """0, not the original 0.05: dropout makes PEFT copy each LoRA layer's input
    (7 per block, in fp32), which on SmolLM2-135M / CPU cost ~700 MB of peak
    memory and about half the step time, while NEFTune already regularizes.
    Measured (Falstaff, 4 epochs, seed 42): held-out loss -5.3% -> -5.2%,
    clean endings 38/40 -> 38/40, 720 s at 2 threads -> 608 s at 1 thread."""
    learning_rate: float = 1e-3
    """1e-3, not the original 3e-4: measured on SmolLM2-135M, 150 lines, 4 epochs,
    3e-4 on q/v left 0/40 greedy replies ending by EOS, 1e-3 on all linear layers 36/40."""
    grad_accum: int = 2
    """Micro-batches per optimizer step (the original's 2)."""
    warmup: float = 0.05
    """Warm-up as a share of all optimizer steps: the original fixed 60 steps
    outlasted a whole 38-step run, so the peak rate was never reached."""
    target_modules: str = "all-linear"
    """'all-linear' (PEFT's rule: every linear layer but the output head),
    'default' (PEFT's per-architecture attention map, q/v for LLaMA), or a comma list."""
    lora_layers: int = 0
    """LoRA on the last N transformer blocks only (0: every block).  The
    blocks below run forward only: no backward pass through them at all."""
    quantization: str = "auto"
    """auto|8bit|4bit|none; auto loads 8-bit only when 16-bit weights won't fit."""
    dtype: str = "auto"
    """auto|bf16|fp16|fp32 for the base weights and autocast."""
    eval_split: float | None = None
    """Share of samples held out, taken from the END of the dataset (the last
    scenes, the newest messages): consecutive samples share context lines, so a
    randomly held-out line would sit in its neighbours' contexts.  Their reply
    loss is measured after every epoch, with the metric evaluate.py reports,
    and the adapter of the best epoch is the one saved.  None (the default):
    0.1, when that leaves at least source.MIN_HELD_OUT held out and
    source.MIN_TRAIN to train on; 0 turns it off.  Measured at the original
    `-e 10` (docs/benchmarks.md): without it the Falstaff adapter ends worse
    than the base model on his lines in another play."""
    early_stop: int = 1
    """With a held-out slice: stop after this many scored epochs without a new
    best (0 = run every epoch).  --epochs is then the most that may run.  1:
    at lr 1e-3 the held-out loss climbs steeply once past its best (Falstaff,
    seed 42: 3.98, 3.94, 4.05, 4.29 over epochs 1-4), so a second stale epoch
    bought nothing but time."""
    retrain: bool = False
    """With a held-out slice, once the best epoch is known: train again from
    the start (same seed, same samples) for just that many epochs, so the
    learning rate has decayed to 0 by the end instead of being cut off at
    its height; the second adapter is the one saved.  Costs the kept epochs
    once more."""
    others_weight: float = 0.0
    """Loss weight of other speakers' lines (0 = off), relative to the
    character's 1.  They come from <dataset>.source.json, which
    prepare_dataset.py writes beside the samples; each is prompted with its
    own speaker's name, so the adapter learns the world's language from
    everyone and the person from the person."""
    contrast_weight: float = 0.0
    """Weight of an unlikelihood loss on other speakers' lines prompted with the
    character's `Name:` (0 = off): the adapter learns what the person would
    NOT say in that context, not only what anyone in the text says.  Uses the
    same source lines and --others_ratio cap as --others_weight."""
    pair_weight: float = 0.0
    """Weight of a preference loss (0 = off) that asks the adapter's gain over
    the base to be larger on each of the character's lines than on what
    another speaker said at that point, under the character's name
    (charlora.pairs): it learns what sets the person apart.  Costs a second
    row (the rival line) per character sample and one base-model pass
    before training."""
    preserve_weight: float = 0.0
    """Weight of a loss that keeps the adapter's predictions on other speakers'
    lines (each under its own name) those of the base model: the KL divergence
    from the base's next-token distribution, per reply token (0 = off).  What
    the adapter changes is then tied to the character's name, not spread over
    everyone in the text.  Uses the same source lines and --others_ratio cap
    as --others_weight; costs one base-model forward (no gradient) of those
    rows per step."""
    others_ratio: float = 1.0
    """With --others_weight, --contrast_weight or --preserve_weight: at most this many other speakers' samples per
    character sample, spread evenly over the source (each costs as much
    compute as a character sample)."""
    seed: int = 42
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run all epochs)."""
    neftune_noise_alpha: float = 5.0
    """NEFTune: uniform noise on the input embeddings while training (0 = off),
    a regularizer against memorizing a small dataset.  Measured (SmolLM2-135M,
    Falstaff, 4 epochs, lr 1e-3): held-out loss -4.6% -> -5.3% and clean greedy
    endings 35/40 -> 38/40 (docs/benchmarks.md)."""
    packing: bool = False
    """Padding-free batches: a micro-batch's samples concatenated into one row
    with restarting position ids, so no compute goes to padding.  Same loss as
    padded batches (tested); falls back to padding on families whose masks
    ignore position ids (OPT)."""
    pcw_windows: int = 0
    """Train on Parallel Context Windows (0 = off): each sample's older context
    is split into this many windows that share one position range and see only
    themselves, while the last pcw_recent lines and the reply see them all
    (charlora.pcw).  Inference-only PCW degrades past about 3 windows
    (Ratner et al. 2023); training on the layout teaches the adapter to read
    it.  Costs: every context token is still computed (a sample is longer than
    cutoff_len, which now bounds positions), plus a dense (T x T) mask per
    sample; sdpa runs without its flash kernels.  Not with --packing."""
    pcw_recent: int = 2
    """With pcw_windows: context lines kept next to the reply, outside the windows."""
    banded: bool = False
    """Line-banded attention (charlora.banded): a run of consecutive lines is one
    sequence with every reply in it labeled, and a 4D mask lets each reply see
    only its own --rounds window, so shared context is computed once, not in
    every sample that holds it.  A step holds about as many replies as a
    per-sample step (one band a forward, bands accumulated); held-out scoring
    stays per sample.  Exact for one layer; deeper, a context token reads its
    own window, up to --rounds lines further back than inside a sample.  Off by
    default: docs/benchmarks.md, "Line-banded attention", has its quality and
    speed.  What it can't be combined with: INCOMPATIBLE, below."""
    frozen_context: bool = False
    """Run each sample's context forward only, into a key/value cache, and
    train through the reply alone (charlora.frozen_context): the same loss,
    no backward pass over the context the batch's rows hold before its
    earliest reply (most of the ~85% of play-sample tokens that are context).
    The gradient no longer reaches how the adapter changes the context's keys
    and values.  What it can't be combined with: INCOMPATIBLE, below."""
    save_steps: int = 0
    """Checkpoint every N optimizer steps into loras/<name>/checkpoints/
    (0: every tenth of the run).  Always also at the last step and on Ctrl-C."""
    save_total_limit: int = 2
    """Checkpoints kept (older ones are deleted)."""
    resume: bool = False
    """Continue from the newest checkpoint of this --lora_name."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% slower."""
    models_dir: str | None = None
    loras_dir: str | None = None
    overwrite: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    """Load pickle (.bin) weights, which can run code; safetensors only otherwise."""
    sample_replies: int = 2
    """Greedy replies to print after training, from held-out (or last) prompts."""
    export_character: bool = False
    """Also write <Name>.yaml into the webui characters folder (a copy is always in the adapter folder)."""
    characters_dir: str | None = None
    merge: bool = False
    """Also save base + adapter merged as a full model folder models/<base>-<lora>."""
    export_gguf: bool = False
    """Also write loras/<name>/<name>.gguf, the adapter as a llama.cpp LoRA (LLaMA-architecture bases)."""



# Flags that can't train together, each rule written once: (flag, the flags
# it refuses, why).  check_combinations enforces them and lora_finetune.py's
# help lists each flag's partners from here, so the two can't drift apart
# (the hand-written lists did, twice).
_NO_LOSS_WEIGHT = "their collator carries no per-sample loss weight"
INCOMPATIBLE: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("preserve_weight", ("others_weight", "contrast_weight"),
     "it keeps other speakers' lines at the base model's predictions, which the other flag trains on"),
    ("others_weight", ("packing", "pcw_windows"), _NO_LOSS_WEIGHT),
    ("contrast_weight", ("packing", "pcw_windows"), _NO_LOSS_WEIGHT),
    ("pair_weight", ("packing", "pcw_windows"), _NO_LOSS_WEIGHT),
    ("preserve_weight", ("packing", "pcw_windows"), _NO_LOSS_WEIGHT),
    ("banded", ("packing", "pcw_windows", "others_weight", "contrast_weight", "pair_weight", "preserve_weight"),
     "a band has its own layout and one loss weight"),
    ("frozen_context", ("packing", "pcw_windows", "banded", "pair_weight", "preserve_weight"),
     "it lays out each batch's context itself"),
    ("packing", ("pcw_windows",), "a packed row has no room for each sample's window mask"),
)


def incompatible_with(flag: str) -> list[str]:
    """Every flag that can't be combined with `flag` (either way round), in TrainConfig's order."""
    from dataclasses import fields

    partners = {o for f, others, _ in INCOMPATIBLE if f == flag for o in others}
    partners |= {f for f, others, _ in INCOMPATIBLE if flag in others}
    return [f.name for f in fields(TrainConfig) if f.name in partners]


def check_combinations(cfg: TrainConfig) -> None:
    """One line for the first pair of set flags that can't train together."""
    for flag, others, why in INCOMPATIBLE:
        clash = [o for o in others if getattr(cfg, o)] if getattr(cfg, flag) else []
        if clash:
            raise CharloraError(f"--{flag} can't be combined with --{clash[0]}: {why}; drop one of the two")


def check_train_config(cfg: TrainConfig) -> None:
    """Refuse any flag out of its range, one line naming it, before anything
    is read or loaded.  Pure: testable without a model."""
    from charlora.config import require_finite
    from charlora.pcw import MAX_WINDOWS
    from charlora.source import check_others_weight

    if cfg.cutoff_len < 8:
        raise CharloraError(f"--cutoff_len must be at least 8 tokens, got {cfg.cutoff_len}")
    if cfg.eval_split is not None and not 0 <= cfg.eval_split < 1:
        raise CharloraError(f"--eval_split must be in [0, 1), got {cfg.eval_split}")
    if cfg.early_stop < 0:
        raise CharloraError(f"--early_stop must be 0 (off) or a number of epochs, got {cfg.early_stop}")
    if not (math.isfinite(cfg.others_ratio) and cfg.others_ratio > 0):
        raise CharloraError(f"--others_ratio must be a positive number, got {cfg.others_ratio}")
    check_others_weight(cfg.others_weight, "--others_weight")
    check_others_weight(cfg.contrast_weight, "--contrast_weight")
    check_others_weight(cfg.preserve_weight, "--preserve_weight")
    require_finite("--pair_weight", cfg.pair_weight, 0, 100)
    if not 0 <= cfg.warmup < 1:
        raise CharloraError(f"--warmup is a share of the run, in [0, 1), got {cfg.warmup}")
    for flag in ("batch_size", "grad_accum", "lora_rank"):
        if getattr(cfg, flag) < 1:
            raise CharloraError(f"--{flag} must be at least 1, got {getattr(cfg, flag)}")
    if not (math.isfinite(cfg.epochs) and (cfg.epochs > 0 or cfg.max_steps > 0)):
        raise CharloraError(f"--epochs must be a positive number, got {cfg.epochs}")
    if not (math.isfinite(cfg.learning_rate) and cfg.learning_rate > 0):
        raise CharloraError(f"--learning_rate must be a positive number, got {cfg.learning_rate}")
    if not 0 <= cfg.lora_dropout < 1:
        raise CharloraError(f"--lora_dropout is a probability, in [0, 1), got {cfg.lora_dropout}")
    if cfg.lora_alpha <= 0:
        raise CharloraError(f"--lora_alpha must be positive, got {cfg.lora_alpha}")
    if not (math.isfinite(cfg.neftune_noise_alpha) and cfg.neftune_noise_alpha >= 0):
        raise CharloraError(f"--neftune_noise_alpha must be 0 (off) or positive, got {cfg.neftune_noise_alpha}")
    if cfg.pcw_windows < 0 or cfg.pcw_recent < 0:
        raise CharloraError(f"--pcw_windows and --pcw_recent must be 0 or more, got {cfg.pcw_windows} and {cfg.pcw_recent}")
    check_combinations(cfg)
    if cfg.save_steps < 0 or cfg.save_total_limit < 1:
        raise CharloraError("--save_steps must be 0 (auto) or more and --save_total_limit at least 1, "
                            f"got {cfg.save_steps} and {cfg.save_total_limit}")
    # the older checks above keep their own words; these close the rest of each range
    require_finite("--seed", cfg.seed, 0, 2**32 - 1)  # numpy's seeding range
    require_finite("--cutoff_len", cfg.cutoff_len, 8, 1_000_000)
    require_finite("--epochs", cfg.epochs, 0, 100_000)
    require_finite("--max_steps", cfg.max_steps, -1, 10**9)
    if cfg.max_steps == 0:  # transformers then stops after one step, while the run's plan says every epoch
        raise CharloraError("--max_steps must be -1 (every epoch) or a number of steps, got 0")
    require_finite("--lora_alpha", cfg.lora_alpha, 0, 1e6, lo_open=True)
    require_finite("--lora_rank", cfg.lora_rank, 1, 65536)
    require_finite("--lora_layers", cfg.lora_layers, 0, 65536)
    if cfg.lora_layers and cfg.target_modules == "default":  # refused in lora_placement too, but after the model loaded
        raise CharloraError("--lora_layers needs --target_modules 'all-linear' or a list of module names")
    # past sys.maxsize the data loader's islice raised mid-run; no batch of a million samples fits in memory
    require_finite("--batch_size", cfg.batch_size, 1, 1_000_000)
    require_finite("--grad_accum", cfg.grad_accum, 1, 1_000_000)
    require_finite("--pcw_windows", cfg.pcw_windows, 0, MAX_WINDOWS)
    # NEFTune's paper uses 5-15; past float32's range the noise draw raised mid-run (1e300)
    require_finite("--neftune_noise_alpha", cfg.neftune_noise_alpha, 0, 1000)


def resolve_target_modules(spec: str) -> Any:
    if spec == "all-linear":
        return "all-linear"
    if spec == "default":
        return None  # PEFT fills it from its per-architecture map
    modules = [m.strip() for m in spec.split(",") if m.strip()]
    if not modules:
        raise CharloraError("--target_modules is empty")
    return modules


def lora_placement(model: Any, target_modules: Any, lora_layers: int) -> dict[str, Any]:
    """LoraConfig's target_modules (and layers_to_transform for --lora_layers N:
    the last N blocks; PEFT takes a layer list only with module names, so
    'all-linear' is spelled out as the blocks' linear layers' names)."""
    modules = dict(model.named_modules())

    def named(target: str) -> list[str]:  # the modules PEFT matches to a target_modules entry
        return [n for n in modules if n == target or n.endswith(f".{target}")]

    def linear() -> list[str]:  # PEFT's "all-linear": every linear layer but the output head
        import torch
        from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

        head = model.get_output_embeddings()
        return sorted({n.rsplit(".", 1)[-1] for n, m in modules.items()
                       if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head})

    if isinstance(target_modules, list):  # PEFT trains if any one name matches: a misspelled one went unnoticed
        unknown = [m for m in target_modules if not named(m)]
        if unknown:
            raise CharloraError(f"--target_modules: this model has no module {', '.join(map(repr, unknown))}; "
                                f"its linear layers are {', '.join(linear())}")
    if not lora_layers:
        return {"target_modules": target_modules}
    if isinstance(target_modules, list):  # PEFT put LoRA on lm_head as if no layer list were given
        outside = [m for m in target_modules if any(not re.search(r"\.\d+\.", n) for n in named(m))]
        if outside:
            raise CharloraError(f"--lora_layers puts LoRA in the last blocks, and {', '.join(outside)} is outside "
                                "them; leave it out of --target_modules or drop --lora_layers")
    blocks = model.config.get_text_config().num_hidden_layers
    if target_modules == "all-linear":
        target_modules = linear()
    if not target_modules:
        raise CharloraError("--lora_layers needs --target_modules 'all-linear' or a list of module names")
    return {"target_modules": target_modules, "layers_to_transform": list(range(max(0, blocks - lora_layers), blocks))}
