"""Stage 5: train a LoRA adapter on a processed dataset and save it to loras/<name>.

Built on transformers' Trainer and PEFT so that logging, gradient accumulation,
mixed precision, length-grouped batches and (later) multi-GPU come from
well-kept code.  What is ours: loss only on the reply + EOS (tokens.py), no
padding to cutoff_len, a warm-up that is a share of the run, 16-bit unless the
model does not fit, and an adapter folder that is never half-written.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from charlora.errors import CharloraError
from charlora.files import strict_json

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
    others_ratio: float = 1.0
    """With --others_weight: at most this many other speakers' samples per
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
    speed.  Not with --packing, --pcw_windows, --others_weight or --contrast_weight."""
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


@dataclass
class TrainResult:
    adapter_dir: Path
    train_samples: int
    eval_samples: int
    optimizer_steps: int
    losses: list[float] = field(default_factory=list)
    eval_loss: float | None = None
    train_loss: float | None = None
    """Mean training loss over the whole run (Trainer's figure)."""
    seconds: float = 0.0
    samples: list[tuple[str, str, bool]] = field(default_factory=list)
    exported: list[Path] = field(default_factory=list)
    main_process: bool = True
    """False in the other processes of a multi-process run: they write and print nothing."""


class ReplyOnlyHead:
    """Project to the vocabulary only at positions whose next token is labelled.

    Context tokens carry no loss, yet the standard forward still multiplies
    every position by the (vocab x hidden) output matrix and materializes
    float32 logits for all of them: on SmolLM2 (49k vocab) that head is ~20% of
    the forward FLOPs and most of its memory traffic, while only ~15% of the
    play samples' tokens are reply tokens.  A forward pre-hook on the output
    layer keeps just the positions t with labels[t+1] != -100; the loss is then
    the same sum of cross-entropies over the same tokens.  It works through
    the model's own forward (so DDP, checkpointing and PEFT are untouched) and
    through any elementwise logit post-processing a family applies.
    """

    def __init__(self, model: Any):
        from charlora.tokens import IGNORE_INDEX

        self.ignore = IGNORE_INDEX
        self.keep = None
        head = model.get_base_model().get_output_embeddings() if hasattr(model, "get_base_model") else model.get_output_embeddings()
        self.handle = head.register_forward_pre_hook(self._select)

    def _select(self, module, args):
        if self.keep is None:
            return None  # generation / evaluation outside training: untouched
        return (args[0][:, :-1][self.keep].unsqueeze(0), *args[1:])

    def arm(self, labels, weights=None) -> None:
        self.keep = labels[:, 1:] != self.ignore
        # one loss weight per kept token: its sample's (--others_weight)
        self.weights = None if weights is None else weights[:, None].expand_as(self.keep)[self.keep]

    def loss(self, outputs, labels, num_items_in_batch=None):
        """Trainer's compute_loss_func: sum of (weighted) token losses / the
        (weighted) token count of the whole accumulated batch, which
        weighted_items() gives the Trainer, so gradient accumulation weighs
        every reply token by its weight alone."""
        import torch
        import torch.nn.functional as F

        target = labels[:, 1:][self.keep]
        self.keep = None
        if self.weights is None:
            total = F.cross_entropy(outputs.logits[0].float(), target, reduction="sum")
            count = target.numel()
        else:
            w = self.weights.to(outputs.logits.device, torch.float32)
            nll = F.cross_entropy(outputs.logits[0].float(), target, reduction="none")
            # a negative weight marks a line the character did NOT say (--contrast_weight):
            # unlikelihood, -log(1 - p), which pushes p down but, unlike a negated
            # cross-entropy, is bounded below and stops pushing once p is small
            unlikely = -torch.log1p(-torch.exp(-nll.clamp(min=1e-4)))
            total = (torch.where(w < 0, unlikely, nll) * w.abs()).sum()
            count = w.abs().sum()
        return total / (num_items_in_batch if num_items_in_batch is not None else max(1, count))


def weighted_items(batches: list[dict]):
    """Sum of loss weights over every labelled (shifted) token of an
    accumulated batch: the weighted counterpart of Trainer's token count."""
    return sum(((b["labels"][:, 1:] != -100) * b["loss_weight"].abs()[:, None]).sum() for b in batches)


def make_trainer_class():
    from transformers import Trainer

    class ReplyOnlyTrainer(Trainer):
        """Trainer whose loss projects only reply positions (see ReplyOnlyHead)."""

        def __init__(self, *args, reply_head: ReplyOnlyHead, **kwargs):
            super().__init__(*args, compute_loss_func=reply_head.loss, **kwargs)
            self.reply_head = reply_head

        def compute_loss(self, model, inputs, *args, **kwargs):
            self.reply_head.arm(inputs["labels"], inputs.pop("loss_weight", None))
            return super().compute_loss(model, inputs, *args, **kwargs)

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            batches, items = super().get_batch_samples(epoch_iterator, num_batches, device)
            if items is not None and batches and "loss_weight" in batches[0]:
                items = weighted_items(batches).to(device)
                if self.args.world_size > 1:
                    items = self.accelerator.gather(items).sum()
            return batches, items

    return ReplyOnlyTrainer


def make_best_keeper(model: Any, tokenizer: Any, held_out: list[dict[str, str]], cutoff_len: int, log=print,
                     resume_from: Path | None = None, pcw_windows: int = 0, pcw_recent: int = 2, patience: int = 0):
    """A Trainer callback that scores the held-out samples after every epoch
    and keeps a copy of the best adapter weights (a few MB, in memory).

    The score is evaluate.reply_loss, token-weighted and on exactly the
    tokens training learns (reply + EOS), so "best" means what evaluate.py
    would report.  On 159 lines of Falstaff, 1 epoch generalized better than
    4 (docs/benchmarks.md): with a held-out split, more epochs can't hurt.
    Its scores and best weights go into every checkpoint, so a resumed run
    picks the same epoch as an uninterrupted one.  With pcw_windows the
    held-out samples are scored in the layout the adapter trains on.
    patience > 0: training stops once that many scored epochs in a row
    brought no new best (early stopping; --epochs becomes a ceiling).
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file
    from transformers import TrainerCallback

    from charlora.evaluate import pcw_reply_loss, reply_loss

    class KeepBestAdapter(TrainerCallback):
        def __init__(self):
            self.stopped_early = False
            self.history: list[tuple[int, float]] = []  # (optimizer step, held-out loss)
            self.best: tuple[float, int, dict] | None = None  # (loss, step, adapter weights)
            if resume_from is not None and (resume_from / "held_out.json").is_file():
                saved = json.loads((resume_from / "held_out.json").read_text())
                self.history = [tuple(h) for h in saved["history"]]
                if saved.get("best_step") is not None:
                    self.best = (saved["best_loss"], saved["best_step"], load_file(resume_from / "best_adapter.safetensors"))

        def save_to(self, folder: Path) -> None:
            """Into a checkpoint (called by the checkpoint saver before it marks the checkpoint complete)."""
            best = {"best_loss": self.best[0], "best_step": self.best[1]} if self.best else {}
            (folder / "held_out.json").write_text(strict_json({"history": self.history, **best}, indent=None))
            if self.best:
                save_file({k: v.contiguous() for k, v in self.best[2].items()}, folder / "best_adapter.safetensors")

        def score(self, step: int, epoch: float, batch_size: int) -> None:
            if pcw_windows:
                loss = pcw_reply_loss(model, tokenizer, held_out, cutoff_len, pcw_windows, pcw_recent, batch_size=batch_size)
            else:
                loss = reply_loss(model, tokenizer, held_out, cutoff_len, batch_size=batch_size)
            model.train()
            self.history.append((step, loss))
            better = self.best is None or loss < self.best[0]
            log(f"epoch {epoch:.2f} (step {step}): held-out reply loss {loss:.4f}{'  (best so far)' if better else ''}")
            if better:
                weights = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}
                self.best = (loss, step, weights)

        def stale(self) -> int:
            """Scored epochs since the best one."""
            if self.best is None:
                return 0
            return sum(step > self.best[1] for step, _ in self.history)

        def on_step_end(self, args, state, control, **kwargs):
            # At the last step of each epoch, and here rather than in
            # on_epoch_end: this runs before the step's checkpoint is saved,
            # so a run resumed from that checkpoint has this epoch's score.
            if state.epoch is not None and abs(state.epoch - round(state.epoch)) < 1e-6:
                self.score(state.global_step, state.epoch, args.per_device_eval_batch_size)
                if patience and self.stale() >= patience and state.global_step < state.max_steps:
                    log(f"stopping early: {patience} epoch{'s' if patience > 1 else ''} without a better held-out loss")
                    self.stopped_early = True
                    control.should_training_stop = True
                    control.should_save = True  # the finished run's checkpoint, as at the last step

        def on_train_end(self, args, state, control, **kwargs):
            # --max_steps can end a run between epochs
            if not self.history or self.history[-1][0] != state.global_step:
                self.score(state.global_step, state.epoch, args.per_device_eval_batch_size)

        def restore_best(self) -> bool:
            """Put the best epoch's weights back; True if that was not the last epoch."""
            if self.best is None or self.best[1] == self.history[-1][0]:
                return False
            set_peft_model_state_dict(model, self.best[2])
            return True

    return KeepBestAdapter()


def adapter_destination(loras_dir: Path, lora_name: str, overwrite: bool, resume: bool = False) -> Path:
    """loras/<name>, refusing names that leave loras/, silent overwrites, and
    a fresh start over an interrupted run's checkpoints."""
    from charlora.checkpoints import CHECKPOINTS, is_adapter, newest_checkpoint
    from charlora.guards import check_lora_name, is_abandoned_run

    check_lora_name(loras_dir, lora_name)  # plain, printable, short enough for every file made from it
    dest = loras_dir / lora_name
    if resume:
        if newest_checkpoint(dest / CHECKPOINTS) is None:
            raise CharloraError(f"--resume: no checkpoint in {dest / CHECKPOINTS}; start the run without --resume")
        return dest
    if dest.exists() and not overwrite and not is_abandoned_run(dest):
        if not is_adapter(dest) and newest_checkpoint(dest / CHECKPOINTS) is not None:
            raise CharloraError(f"an interrupted run left checkpoints in {dest / CHECKPOINTS}; add --resume to "
                                "continue it, or --overwrite to start over")
        raise CharloraError(f"{dest} already exists; pick another --lora_name or pass --overwrite")
    return dest


def ensure_writable(folder: Path) -> None:
    """Fail before hours of training, not after, when adapters can't be written."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".charlora-write-test"):
            pass
    except OSError as exc:
        raise CharloraError(f"cannot write to {folder}: {exc.strerror or exc}") from None


def resolve_target_modules(spec: str) -> Any:
    if spec == "all-linear":
        return "all-linear"
    if spec == "default":
        return None  # PEFT fills it from its per-architecture map
    modules = [m.strip() for m in spec.split(",") if m.strip()]
    if not modules:
        raise CharloraError("--target_modules is empty")
    return modules


def held_out_size(n_samples: int, share: float | None) -> int:
    """How many of the last samples --eval_split holds out.  None: the
    default share, only where the dataset can spare it; an explicit share is
    taken as given (at least one sample)."""
    from charlora.source import held_out_count

    if share is None:
        return held_out_count(n_samples, DEFAULT_EVAL_SPLIT)
    if share <= 0:
        return 0
    n_eval = max(1, round(n_samples * share))
    if n_eval >= n_samples:
        raise CharloraError(f"--eval_split {share} leaves no training samples out of {n_samples}")
    return n_eval


def split_samples(samples: list, n_eval: int) -> tuple[list, list]:
    """(train, held-out): the last n_eval samples held out, a contiguous tail."""
    return list(samples[: len(samples) - n_eval]), list(samples[len(samples) - n_eval :])


def tokenize_dataset(samples: list[dict[str, str]], tokenizer: Any, cutoff_len: int, pcw_windows: int = 0,
                     pcw_recent: int = 2, weights: list[float] | None = None):
    """Encoded samples; with pcw_windows, in Parallel Context Windows layout
    (pcw.pcw_sample); with weights, each row also carries its loss weight."""
    from datasets import Dataset

    from charlora.pcw import pcw_sample
    from charlora.tokens import encode_sample

    def encode(s):
        if pcw_windows:
            return pcw_sample(tokenizer, s["input"], s["output"], cutoff_len, pcw_windows, pcw_recent)
        enc = encode_sample(tokenizer, s["input"], s["output"], cutoff_len)
        if s.get("loss_weight", 1.0) < 0 and enc["labels"][-1] == tokenizer.eos_token_id:
            # a line the character did not say: unlikely words, but not an
            # unlikely END, or the adapter would unlearn stopping
            enc["labels"] = enc["labels"][:-1] + [-100]
        return enc

    rows = samples if weights is None else [{**s, "loss_weight": w} for s, w in zip(samples, weights)]
    return Dataset.from_list(rows).map(
        encode,
        remove_columns=["input", "output"],
        desc="tokenizing",
    )


def make_collator(tokenizer: Any, packing: bool, flash_attention: bool = False, pcw_dtype=None, banded: bool = False):
    """Batches of encoded samples: padded per batch, or packed into one row.

    Packed: the batch's samples are concatenated without padding and their
    position ids restart at 0 for each sample.  transformers turns position
    restarts into a block-diagonal causal mask (or, under FlashAttention, into
    sequence boundaries), so no token attends across samples and the loss is
    the padded batch's (tests/test_packing.py) while no compute goes to padding.
    pcw_dtype: the samples are in PCW layout; pad them and build their 4D
    masks in this dtype (the one attention runs in); with banded, they are
    charlora.banded's bands.
    """
    from functools import partial

    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if banded:
        from charlora.banded import collate_banded

        return partial(collate_banded, pad_token_id=tokenizer.pad_token_id, dtype=pcw_dtype)
    if pcw_dtype is not None:
        from charlora.pcw import collate_pcw

        return partial(collate_pcw, pad_token_id=tokenizer.pad_token_id, padding_side="right", dtype=pcw_dtype)
    if packing:
        # Our labels already mask each sample's first token (it is context),
        # so the collator's separator label changes nothing.
        return DataCollatorWithFlattening(return_flash_attn_kwargs=flash_attention)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")


def replace_folder(new: Path, dest: Path) -> None:
    """Put the finished folder at dest in two renames, so an interruption at
    any point leaves either the old adapter or the new one, never a mix.  The
    old folder, with the checkpoints of the run that just finished, goes."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        dest.rename(old)
        new.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(dest)


def add_other_speakers(cfg: TrainConfig, train_samples: list, held_out: bool, src, why_not: str | None, log):
    """(training samples, loss weights or None): the character's samples, then
    other speakers' lines at --others_weight and/or, under the character's
    name, at -(--contrast_weight) (unlikelihood).  Only lines before the
    held-out tail, so nothing of the tail's scenes is trained on."""
    from charlora.source import other_samples

    if not (cfg.others_weight > 0 or cfg.contrast_weight > 0):
        return train_samples, None
    end = (src.character_index()[len(train_samples)] if held_out else len(src.lines)) if src is not None else 0
    cap = math.floor(cfg.others_ratio * len(train_samples))
    others = other_samples(src, end, cap=cap) if src is not None else []
    if not others:
        log("note: " + (why_not or "the source has no other speakers' lines") + "; training on the character's lines only")
        return train_samples, None
    weights = [1.0] * len(train_samples)
    if cfg.others_weight > 0:
        log(f"other speakers: {len(others)} of their lines as extra samples at loss weight {cfg.others_weight:g}")
        train_samples, weights = train_samples + others, weights + [cfg.others_weight] * len(others)
    if cfg.contrast_weight > 0:
        as_character = other_samples(src, end, cap=cap, as_speaker=src.name)
        log(f"contrast: {len(as_character)} other speakers' lines under {src.name}: at unlikelihood weight "
            f"{cfg.contrast_weight:g}")
        train_samples, weights = train_samples + as_character, weights + [-cfg.contrast_weight] * len(as_character)
    return train_samples, weights


def check_train_config(cfg: TrainConfig) -> None:
    """Refuse any flag out of its range, one line naming it, before anything
    is read or loaded.  Pure: testable without a model."""
    from charlora.config import require_finite
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
    if (cfg.others_weight or cfg.contrast_weight) and (cfg.packing or cfg.pcw_windows):
        raise CharloraError("--others_weight and --contrast_weight can't be combined with --packing or --pcw_windows yet: their collators "
                            "carry no per-sample loss weight; drop one of the two")
    if cfg.banded and (cfg.packing or cfg.pcw_windows or cfg.others_weight or cfg.contrast_weight):
        raise CharloraError("--banded can't be combined with --packing, --pcw_windows, --others_weight or "
                            "--contrast_weight: a band has its own layout and one loss weight; drop one of them")
    if cfg.pcw_windows and cfg.packing:
        raise CharloraError("--packing can't be combined with --pcw_windows: a packed row has no room for "
                            "each sample's window mask; drop one of the two")
    if cfg.save_steps < 0 or cfg.save_total_limit < 1:
        raise CharloraError("--save_steps must be 0 (auto) or more and --save_total_limit at least 1, "
                            f"got {cfg.save_steps} and {cfg.save_total_limit}")
    # the older checks above keep their own words; these close the rest of each range
    require_finite("--seed", cfg.seed, 0, 2**32 - 1)  # numpy's seeding range
    require_finite("--cutoff_len", cfg.cutoff_len, 8, 1_000_000)
    require_finite("--epochs", cfg.epochs, 0, 100_000)
    require_finite("--max_steps", cfg.max_steps, -1, 10**9)
    require_finite("--lora_alpha", cfg.lora_alpha, 0, 1e6, lo_open=True)
    require_finite("--lora_rank", cfg.lora_rank, 1, 65536)


def train(cfg: TrainConfig, log=print) -> TrainResult:
    import time

    from charlora import adapter, models
    from charlora.samples import load_samples
    from charlora.source import data_report, load_source
    from charlora.tokens import token_lengths

    check_train_config(cfg)

    # torchrun / accelerate launch: only the first process writes files and talks.
    main_process = int(os.environ.get("RANK", "0")) == 0
    if not main_process:
        log = lambda *args, **kwargs: None  # noqa: E731
    samples = load_samples(cfg.dataset_name)
    models_dir, note = models.resolve_dir(cfg.models_dir, "models")
    if note:
        log(note)
    loras_dir, note = models.resolve_dir(cfg.loras_dir, "loras")
    if note:
        log(note)
    model_path = models.find_model(models_dir, cfg.model_name)
    from charlora import files, guards

    # held until train() returns; by the first process only (the others of a torchrun job are the same run)
    lock = guards.lock_adapter(loras_dir, cfg.lora_name) if main_process else None  # noqa: F841
    dest = adapter_destination(loras_dir, cfg.lora_name, cfg.overwrite, cfg.resume)
    ensure_writable(loras_dir)
    from charlora import checkpoints

    ckpt_dir = dest / checkpoints.CHECKPOINTS
    settings = {**asdict(cfg), checkpoints.DATASET_DIGEST: guards.file_digest(cfg.dataset_name)}
    resume_from = checkpoints.newest_checkpoint(ckpt_dir) if cfg.resume else None
    if resume_from is not None:
        checkpoints.check_resumable(ckpt_dir, settings)
    merge_dest = models_dir / files.safe_name(f"{model_path.name}-{cfg.lora_name}") if cfg.merge else None
    if merge_dest is not None and merge_dest.exists():
        raise CharloraError(f"{merge_dest} already exists; remove it or pick another --lora_name before merging")
    if cfg.export_gguf:
        from charlora import gguf

        gguf.check_base(gguf.read_json(model_path / "config.json"))
    target_modules = resolve_target_modules(cfg.target_modules)

    # Only now, after the checks of the user's own input: importing the
    # training stack takes seconds and can log library warnings (bitsandbytes
    # on some CPUs) that would come before a one-line error.
    import torch
    from transformers import TrainingArguments, set_seed

    set_seed(cfg.seed)
    device = models.pick_device()
    dtype = models.pick_dtype(cfg.dtype, device)
    tokenizer = models.load_tokenizer(model_path, cfg.trust_remote_code)
    # Right padding in training: every sample's positions start at 0, as they
    # do when the prompt is fed alone at chat time.
    tokenizer.padding_side = "right"

    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    models.check_vocabulary(tokenizer, model_config, model_path)
    models.check_weights(model_path, cfg.allow_pickle)
    n_params = models.count_parameters(model_config)
    quant = models.choose_quantization(cfg.quantization, 2 * n_params, models.available_memory(device))
    if quant != "none" and device == "cpu" and cfg.quantization == "auto":
        log("note: the model does not fit in memory in 16-bit; loading it in 8-bit (slower)")
    log(f"model {model_path} ({n_params / 1e6:.0f}M parameters) on {device}, {str(dtype).removeprefix('torch.')}, quantization {quant}")

    n_eval = held_out_size(len(samples), cfg.eval_split)
    train_samples, eval_samples = split_samples(samples, n_eval)
    src, why_not = load_source(cfg.dataset_name, samples)
    if cfg.eval_split is None and not n_eval:
        log(f"note: {len(samples)} samples are too few to hold out the last lines and still train; "
            "training on all of them, every epoch kept (--eval_split to force a split)")
    elif n_eval:
        log(f"held out: the last {n_eval} samples (scored after every epoch; the best epoch's adapter is kept"
            + (f", training stops after {cfg.early_stop} epoch{'s' if cfg.early_stop > 1 else ''} without a better "
               "one)" if cfg.early_stop else ")"))
    train_samples, weights = add_other_speakers(cfg, train_samples, bool(eval_samples), src, why_not, log)
    for line in data_report(samples, token_lengths(tokenizer, samples), cfg.cutoff_len, n_eval, src).lines(cfg.cutoff_len):
        log(line)
    band_args = {}
    if cfg.banded:
        from charlora.banded import banded_training

        data, band_args = banded_training(train_samples, tokenizer, cfg.cutoff_len, cfg.batch_size, cfg.grad_accum,
                                          cfg.neftune_noise_alpha)
    else:
        data = tokenize_dataset(train_samples, tokenizer, cfg.cutoff_len, cfg.pcw_windows, cfg.pcw_recent, weights)
    # Replies shown at the end: to held-out prompts when there are some.
    show = (eval_samples or train_samples)[-cfg.sample_replies :] if cfg.sample_replies > 0 else []

    model = models.load_model(model_path, quant, dtype, device, cfg.trust_remote_code, cfg.allow_pickle)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quant != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=target_modules, bias="none", task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise CharloraError(f"cannot put LoRA on this model: {str(exc).splitlines()[0]}") from None
    trainable, total = model.get_nb_trainable_parameters()
    log(f"LoRA r={cfg.lora_rank} on {cfg.target_modules}: {trainable / 1e6:.2f}M trainable parameters ({100 * trainable / total:.2f}%)")

    # Under torchrun / accelerate launch every process takes its own batches.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch_size = band_args.get("per_device_train_batch_size", cfg.batch_size)
    grad_accum = band_args.get("gradient_accumulation_steps", cfg.grad_accum)
    steps_per_epoch = math.ceil(math.ceil(len(data) / (batch_size * world)) / grad_accum)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    save_steps = cfg.save_steps if cfg.save_steps > 0 else max(1, total_steps // 10)
    work_dir = dest.with_name(f".{dest.name}.partial")
    if main_process:
        shutil.rmtree(work_dir, ignore_errors=True)
        if not cfg.resume:
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # --overwrite: an old run's checkpoints go
        checkpoints.record_run(ckpt_dir, settings)
    args = TrainingArguments(**{**dict(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup,
        lr_scheduler_type="linear",
        neftune_noise_alpha=cfg.neftune_noise_alpha or None,
        # bucket samples of similar length into a batch: with per-batch padding
        # that is what keeps compute on real tokens.
        train_sampling_strategy="group_by_length",
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        logging_steps=max(1, total_steps // 20),
        logging_first_step=True,
        eval_strategy="no",  # held-out samples are scored by make_best_keeper's callback
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        use_cpu=device == "cpu",
        ddp_backend="gloo" if device == "cpu" and world > 1 else None,
        ddp_find_unused_parameters=False,  # every LoRA weight is used in every step
        disable_tqdm=not main_process,
        # PCW's "segments" column becomes the collator's mask; "loss_weight" goes to the loss
        remove_unused_columns=not (cfg.pcw_windows or weights),
    ), **band_args})  # --banded: one band a forward, bands_per_step a step, its NEFTune scale
    packing = cfg.packing and models.supports_packing(model)
    if cfg.packing and not packing:
        log("note: this model family does not keep packed samples apart; padding per batch instead of --packing")
    # The key/value cache is for generation; in training it only holds
    # memory, and transformers ignores packed positions while one exists.
    model.config.use_cache = False
    pcw_dtype = None
    if cfg.pcw_windows or cfg.banded:
        from charlora.pcw import check_attention

        check_attention(model)
        pcw_dtype = model.get_input_embeddings().weight.dtype
    collator = make_collator(tokenizer, packing, flash_attention="flash" in str(model.config._attn_implementation),
                             pcw_dtype=pcw_dtype, banded=cfg.banded)
    reply_head = ReplyOnlyHead(model)
    keeper = make_best_keeper(model, tokenizer, eval_samples, cfg.cutoff_len, log, resume_from,
                              cfg.pcw_windows, cfg.pcw_recent, cfg.early_stop) if eval_samples else None
    saver = checkpoints.make_interrupt_saver(log, keeper.save_to if keeper else None)
    trainer = make_trainer_class()(model=model, args=args, train_dataset=data, data_collator=collator,
                                   reply_head=reply_head, callbacks=[saver] + ([keeper] if keeper else []) + [guards.make_divergence_guard()])
    per_step = batch_size * grad_accum * world
    unit = "bands" if cfg.banded else "samples"
    if cfg.banded:
        log(f"banded: {len(train_samples)} replies in {len(data)} bands of up to "
            f"{max(len(row) for row in data['input_ids'])} tokens")
    log(f"training on {len(data)} {unit} ({len(eval_samples)} held out), {total_steps} optimizer steps of "
        f"{per_step} {unit} ({batch_size} a batch x {grad_accum} accumulated x {world} process"
        f"{'es' if world > 1 else ''}); checkpoints every {save_steps} steps in {ckpt_dir}")
    if resume_from is not None:
        log(f"resuming from {resume_from}")
    start = time.time()
    try:
        run = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except BaseException as exc:
        for callback in trainer.callback_handler.callbacks:  # end the progress bar before the error line
            if getattr(callback, "training_bar", None) is not None:
                callback.training_bar.close()
                callback.training_bar = None
        # The checkpoints stay for --resume; a folder that holds nothing else
        # (the run failed before its first checkpoint) goes.
        if main_process and checkpoints.newest_checkpoint(ckpt_dir) is None:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
            if dest.is_dir() and not any(dest.iterdir()):
                dest.rmdir()
        if isinstance(exc, OSError):  # disk full, folder gone read-only, ...
            kept = checkpoints.newest_checkpoint(ckpt_dir) if main_process else None
            raise CharloraError(f"training stopped: could not write {exc.filename or 'a checkpoint'} "
                                f"({exc.strerror or exc}); " + (f"{kept} is kept for --resume" if kept else
                                                                "no checkpoint had been saved")) from None
        raise
    seconds = time.time() - start
    if saver.interrupted:
        raise checkpoints.Interrupted(
            f"stopped at step {trainer.state.global_step} of {total_steps}; checkpoint saved in "
            f"{checkpoints.newest_checkpoint(ckpt_dir)}; run the same command with --resume to continue")

    history = trainer.state.log_history
    logged = [(h["step"], h["loss"]) for h in history if "loss" in h]
    losses = [loss for _, loss in logged]
    evals = keeper.history if keeper else []
    eval_loss, best_step = (keeper.best[0], keeper.best[1]) if keeper else (None, trainer.state.global_step)
    if keeper:
        epoch_of = {step: k + 1 for k, (step, _) in enumerate(evals)}
        restored = keeper.restore_best()
        log(f"kept the adapter of epoch {epoch_of.get(best_step, '?')} (step {best_step}, held-out loss {eval_loss:.4f}): "
            f"the best of {len(evals)} scored epoch{'s' if len(evals) > 1 else ''}" + ("" if restored else ", the last one")
            + ("; stopped early" if keeper.stopped_early else ""))

    reply_head.handle.remove()
    model.config.use_cache = True
    result = TrainResult(dest, len(data), len(eval_samples), trainer.state.global_step, losses, eval_loss,
                         run.training_loss, seconds, main_process=main_process)
    if not main_process:
        return result
    character = adapter.character_name(samples)
    record = {"config": asdict(cfg), "base_model": str(model_path), "adapter_dir": str(dest), "character": character,
              "quantization": quant, "dtype": str(dtype).removeprefix("torch."),
              "train_samples": result.train_samples, "eval_samples": result.eval_samples,
              "optimizer_steps": result.optimizer_steps, "train_losses": losses,
              "train_loss_steps": [step for step, _ in logged], "mean_train_loss": run.training_loss,
              "eval_losses": evals, "eval_loss": eval_loss, "kept_step": best_step,
              "stopped_early": bool(keeper and keeper.stopped_early),
              "packing": packing, "pcw_windows": cfg.pcw_windows, "world_size": world,
              "samples_per_step": cfg.batch_size * cfg.grad_accum * world,  # --banded: the replies a step aims at
              **({"bands": len(data), "bands_per_step": per_step} if cfg.banded else {}),
              "train_seconds": round(seconds, 1)}
    card = adapter.character_card(character, samples, lambda text: len(tokenizer(text)["input_ids"]))
    try:
        model.save_pretrained(work_dir)
        adapter.record_base(work_dir, model_path)
        (work_dir / "charlora_config.json").write_text(strict_json(record) + "\n")
        adapter.write_card(work_dir, record, logged)
        adapter.plot_losses(work_dir, logged, evals)
        adapter.write_character(work_dir / f"{files.safe_name(character, 'character')}.yaml", card)
        replace_folder(work_dir, dest)
    except OSError as exc:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise CharloraError(f"could not write the adapter ({exc.strerror or exc}); {dest} is as it was, and the "
                            f"finished run's checkpoint is in {ckpt_dir}: free the space and rerun with --resume") from None

    if cfg.export_character:
        characters_dir, _ = models.resolve_dir(cfg.characters_dir, "characters")
        adapter.write_character(characters_dir / f"{files.safe_name(character, 'character')}.yaml", card)
        result.exported.append(characters_dir / f"{files.safe_name(character, 'character')}.yaml")
    if merge_dest is not None:
        adapter.merge_into_model(model_path, dest, merge_dest, dtype)
        result.exported.append(merge_dest)
    if cfg.export_gguf:
        result.exported.append(gguf.export_lora(dest, model_path))

    if show:
        from charlora.reply import sample_reply as generate_reply

        model.eval()
        for s in show:
            reply, eos = generate_reply(model, tokenizer, s["input"])
            result.samples.append((s["input"], reply, eos))
    return result
