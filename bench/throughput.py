"""Training speed and memory: the naive recipe, this toolkit, and TRL, side by side.

    .venv/bin/pip install -r requirements-bench.txt     # TRL, the peer
    python bench/throughput.py -m SmolLM2-135M-Instruct
    python bench/throughput.py -m SmolLM2-135M-Instruct --variants naive,default,packed --epochs 2

Every variant trains the same LoRA (rank 16 on all linear layers, same
learning rate, schedule, batch 4 x accumulation 2, cutoff 256; the
exceptions are named below) on the same
tokenized samples for the same number of epochs, each in its own process so
that peak memory is its own.  Two datasets are made from one play in
../shared/data/: "play" (5 lines of context, as prepare_dataset.py's default;
a third of the samples reach the cutoff) and "short" (1 line of context: short
chat-like samples, where padding dominates).

Variants (`--variants`; VARIANTS below is the one source of each one's settings):
  naive          the recipe users had, in 16-bit: every sample padded to
                 cutoff_len (the padding runs through every layer, masked),
                 logits over the whole vocabulary at every position; bf16 (fp16
                 on GPUs without bf16); LoRA dropout 0, as ours
  naive_8bit     the recipe exactly as users had it: the same, with the base
                 loaded in 8-bit and prepared by PEFT's
                 prepare_model_for_kbit_training (which turns on gradient
                 checkpointing) and its LoRA dropout 0.05, as the original
                 script did (the one variant whose LoRA is not ours)
  default        lora_finetune.py's defaults: per-batch padding, batches
                 grouped by length, vocabulary projection at reply positions
  packed         default + --packing (padding-free, per-sample attention)
  checkpointing  default + --gradient_checkpointing (the memory-saving path)
  frozen         default + --frozen_context (each sample's context forward
                 only into a cache, the reply trained through; computed
                 tokens count both passes)
  8bit           default + --quantization 8bit --gradient_checkpointing (the
                 smallest-memory path; 8-bit is slow on CPU)
  layers15, layers10  default + --lora_layers 15 / 10: LoRA on the last 15 / 10
                 of the 30 blocks, no backward pass below them (a smaller
                 adapter: not the same LoRA, and its quality is measured apart)
  trl_defaults   TRL's SFTTrainer with SFTConfig's own defaults where we set
                 none: gradient checkpointing ON (SFTConfig's default in 1.16),
                 random batches, padded per batch
  trl            SFTTrainer at its best honest setting on this data:
                 gradient_checkpointing=False, batches grouped by length
                 (train_sampling_strategy="group_by_length")
  trl_nogc       trl_defaults with gradient_checkpointing=False only
  trl_padding_free  trl_nogc + padding_free=True (one flattened row a batch;
                 max_length=None, the samples are already cut to cutoff_len)
  trl_packed     trl_nogc + packing=True (best-fit packing, padding-free)
  trl_dropout05  trl at LoRA dropout 0.05 (the dropout the older pages used)

Every variant but naive_8bit, trl_dropout05 and layers15/10 trains the same LoRA (rank 16,
alpha 16, dropout 0, all linear layers); tests/test_bench_settings.py builds
each variant's settings and fails where they differ.  TRL gets our token ids
and labels; its data preparation would drop a sample whose labels are all
-100 after its truncation, so each row reports the samples and real tokens the
trainer kept.

Reported per variant: real (non-padding) tokens trained per second, tokens
computed per second (with padding), seconds per epoch, peak memory (RSS on
CPU, torch.cuda.max_memory_allocated on GPU), mean train loss over the run,
and, on a GPU, model FLOPs utilization.  Speeds are also given as ratios to
the naive recipe measured in the same run: absolute times on shared machines
drift, ratios much less.  Writes <out>.json, <out>.md and <out>.png.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))



@dataclass(frozen=True)
class Variant:
    """What one bench variant changes; everything else is `shared_settings`.

    runner: "charlora" (charlora.train.train), "naive" (transformers' Trainer)
    or "trl" (SFTTrainer).  padding: "max_length" (every sample padded to
    cutoff_len), "batch" (to the batch's longest), "free" (one flattened row,
    positions restarting per sample) or "packed" (TRL best-fit packing).
    """

    runner: str
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = False
    group_by_length: bool = False
    padding: str = "batch"
    quantization: str = "none"
    banded: bool = False
    """charlora only: --banded (a run of lines a sequence, charlora.banded)."""
    frozen_context: bool = False
    """charlora only: --frozen_context (context forward only, charlora.frozen_context)."""
    lora_layers: int = 0
    """charlora only: --lora_layers (LoRA on the last N blocks; a smaller adapter, not the same LoRA)."""


VARIANTS = {
    "naive": Variant("naive", padding="max_length"),
    "naive_8bit": Variant("naive", lora_dropout=0.05, gradient_checkpointing=True, padding="max_length",
                          quantization="8bit"),
    "default": Variant("charlora", group_by_length=True),
    "packed": Variant("charlora", group_by_length=True, padding="free"),
    "checkpointing": Variant("charlora", group_by_length=True, gradient_checkpointing=True),
    # real_tokens stays the per-sample encoding's count: the same replies with the
    # same context windows, computed once where samples overlap
    "banded": Variant("charlora", group_by_length=True, banded=True),
    # computed_tokens counts both passes: the context block (forward only) and the trained block
    "frozen": Variant("charlora", group_by_length=True, frozen_context=True),
    "8bit": Variant("charlora", group_by_length=True, gradient_checkpointing=True, quantization="8bit"),
    "layers15": Variant("charlora", group_by_length=True, lora_layers=15),
    "layers10": Variant("charlora", group_by_length=True, lora_layers=10),
    "trl_defaults": Variant("trl", gradient_checkpointing=True),
    "trl_nogc": Variant("trl"),
    "trl": Variant("trl", group_by_length=True),
    "trl_padding_free": Variant("trl", padding="free"),
    "trl_packed": Variant("trl", padding="packed"),
    "trl_dropout05": Variant("trl", lora_dropout=0.05, group_by_length=True),
}
# The variants the page calls "the same LoRA": everything but the recipe as
# users had it, the dropout probe and the top-blocks-only adapters.
# tests/test_bench_settings.py holds them to it.
SAME_LORA = [v for v in VARIANTS if v not in ("naive_8bit", "trl_dropout05", "layers15", "layers10")]
DEFAULT_VARIANTS = ["naive", "naive_8bit", "default", "packed", "checkpointing", "trl_defaults", "trl_nogc", "trl",
                    "trl_padding_free", "trl_packed"]
LORA = dict(r=16, lora_alpha=16, target_modules="all-linear", bias="none", task_type="CAUSAL_LM")


def shared_settings(a) -> dict:
    """What every variant shares, from the command line: data, batch, schedule."""
    return dict(dataset=str(a.dataset), cutoff_len=a.cutoff_len, batch_size=a.batch_size, grad_accum=2,
                epochs=a.epochs, learning_rate=1e-3, warmup=0.05, seed=a.seed)


def charlora_config(name: str, a, loras_dir: str):
    """The TrainConfig a charlora variant trains with."""
    from charlora.train import TrainConfig

    v, s = VARIANTS[name], shared_settings(a)
    assert v.runner == "charlora" and v.group_by_length, name  # train() always groups by length
    return TrainConfig(dataset_name=s["dataset"], model_name=a.model, models_dir=a.models_dir, loras_dir=loras_dir,
                       lora_name="bench", epochs=s["epochs"], batch_size=s["batch_size"], grad_accum=s["grad_accum"],
                       cutoff_len=s["cutoff_len"], learning_rate=s["learning_rate"], warmup=s["warmup"],
                       seed=s["seed"], sample_replies=0, lora_rank=LORA["r"], lora_alpha=LORA["lora_alpha"],
                       # every sample trains, as in the peers: the default held-out tail would train
                       # on 90% of them (while real_tokens counts all) and add its scoring to the time
                       eval_split=0,
                       lora_dropout=v.lora_dropout, target_modules=LORA["target_modules"],
                       gradient_checkpointing=v.gradient_checkpointing, packing=v.padding == "free", banded=v.banded,
                       frozen_context=v.frozen_context, lora_layers=v.lora_layers,
                       quantization="8bit" if v.quantization == "8bit" else "auto")


def peer_lora(name: str):
    """The LoraConfig a naive or TRL variant trains with."""
    from peft import LoraConfig

    return LoraConfig(lora_dropout=VARIANTS[name].lora_dropout, **LORA)


def peer_args(name: str, a, dtype_name: str, gpu: bool, output_dir: str):
    """The TrainingArguments (naive) or SFTConfig (TRL) of a peer variant.

    dtype_name: "bf16" or "fp16", the autocast the variant runs in.
    """
    v, s = VARIANTS[name], shared_settings(a)
    common = dict(output_dir=output_dir, per_device_train_batch_size=s["batch_size"],
                  gradient_accumulation_steps=s["grad_accum"], num_train_epochs=s["epochs"],
                  learning_rate=s["learning_rate"], warmup_steps=s["warmup"], lr_scheduler_type="linear",
                  bf16=dtype_name == "bf16", fp16=dtype_name == "fp16", logging_steps=10, save_strategy="no",
                  report_to="none", seed=s["seed"], data_seed=s["seed"], use_cpu=not gpu, disable_tqdm=True,
                  # gradient_checkpointing's new name since transformers 5 (the old one is an alias)
                  activation_checkpointing=v.gradient_checkpointing,
                  train_sampling_strategy="group_by_length" if v.group_by_length else "random")
    if v.runner == "naive":
        from transformers import TrainingArguments

        # prepare_model_for_kbit_training turns checkpointing on for naive_8bit itself.
        return TrainingArguments(**{**common, "activation_checkpointing": False})
    from trl import SFTConfig

    # padding_free without packing refuses a max_length (it would not be
    # enforced); the samples are cut to cutoff_len before TRL sees them.
    max_length = None if v.padding == "free" else s["cutoff_len"]
    return SFTConfig(**common, max_length=max_length, packing=v.padding == "packed",
                     padding_free=v.padding == "free", dataset_num_proc=None)


def effective_settings(name: str, a) -> dict:
    """The settings a variant really trains with, read back from the objects
    handed to the trainers (TrainConfig, LoraConfig, TrainingArguments /
    SFTConfig), in one vocabulary, for tests/test_bench_settings.py."""
    v = VARIANTS[name]
    if v.runner == "charlora":
        c = charlora_config(name, a, "unused")
        return dict(r=c.lora_rank, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                    target_modules=c.target_modules, gradient_checkpointing=c.gradient_checkpointing,
                    grad_accum=c.grad_accum, batch_size=c.batch_size, epochs=c.epochs, learning_rate=c.learning_rate,
                    warmup=c.warmup, dataset=c.dataset_name, cutoff_len=c.cutoff_len, seed=c.seed,
                    every_sample_trains=c.eval_split == 0, lora_layers=c.lora_layers)
    lora = peer_lora(name)
    args = peer_args(name, a, "bf16", gpu=False, output_dir=tempfile.mkdtemp())
    checkpointing = args.activation_checkpointing or v.quantization == "8bit"  # kbit preparation turns it on
    return dict(r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                target_modules=lora.target_modules, gradient_checkpointing=checkpointing,
                grad_accum=args.gradient_accumulation_steps, batch_size=args.per_device_train_batch_size,
                epochs=args.num_train_epochs, learning_rate=args.learning_rate, warmup=args.warmup_steps,
                dataset=shared_settings(a)["dataset"], cutoff_len=shared_settings(a)["cutoff_len"], seed=args.seed,
                every_sample_trains=True, lora_layers=0)  # the peers hold nothing out; LoRA on every block


# Dense bf16 peak of one GPU, for model FLOPs utilization (vendor figures, no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}

# A ~1B model from a real config (TinyLlama-1.1B's shape) with random
# weights: speed does not depend on what the weights know.
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                tie_word_embeddings=False)


def make_datasets(play: Path, name: str, workdir: Path) -> dict[str, Path]:
    from charlora.dialogue import read_dialogue_file
    from charlora.samples import build_samples, write_json_atomic

    lines, _ = read_dialogue_file(play)
    out = {}
    for label, rounds in (("play", 5), ("short", 1)):
        path = workdir / f"{label}.json"
        write_json_atomic(build_samples(lines, name, rounds), path)
        out[label] = path
    return out


def make_random_1b(models_dir: Path, tokenizer_from: Path) -> str:
    """models/llama-1b-random: TinyLlama's shape, random weights, the default model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    dest = models_dir / "llama-1b-random"
    if not (dest / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(tokenizer_from)
        cfg = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **LLAMA_1B)
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(dest)
        tok.save_pretrained(dest)
    return dest.name


# ----------------------------------------------------------------- worker side

class TokenCounter:
    """Counts the token positions every training forward computes (padding
    included), from a hook on the input embeddings."""

    def __init__(self, model):
        self.tokens = 0
        model.get_input_embeddings().register_forward_hook(self._count)

    def _count(self, module, args, output):
        if module.training:  # not the probes and evaluations around training
            self.tokens += args[0].numel()


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_charlora(variant: str, a, counter_box: list) -> dict:
    from charlora import models
    from charlora.train import train

    original = models.load_model

    def counted_load(*args, **kwargs):
        model = original(*args, **kwargs)
        counter_box.append(TokenCounter(model))
        return model

    models.load_model = counted_load
    with tempfile.TemporaryDirectory() as loras:
        result = train(charlora_config(variant, a, loras), log=lambda *_: None)
    # every sample, every epoch: eval_split=0, so train() holds none out and drops none
    return {"seconds": result.seconds, "train_loss": result.train_loss, "steps": result.optimizer_steps,
            "kept_samples": None}


def naive_collator(tokenizer, cutoff_len: int):
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding="max_length", max_length=cutoff_len,
                                  label_pad_token_id=-100, return_tensors="pt")


def run_peer(variant: str, a, counter_box: list) -> dict:
    """The naive recipe and TRL: built from the same libraries, not from charlora.train."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Trainer

    from charlora import models
    from charlora.samples import load_samples
    from charlora.train import tokenize_dataset

    v = VARIANTS[variant]
    device = models.pick_device()
    gpu = device.startswith("cuda")
    path = models.find_model(Path(a.models_dir), a.model)
    tokenizer = models.load_tokenizer(path)
    tokenizer.padding_side = "right"
    data = tokenize_dataset(load_samples(a.dataset), tokenizer, a.cutoff_len)
    if v.quantization == "8bit":  # the original recipe: 8-bit weights, fp16 autocast on GPUs
        dtype = torch.float16 if gpu else torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=BitsAndBytesConfig(load_in_8bit=True),
                                                     device_map={"": device})
        model = prepare_model_for_kbit_training(model)
    else:
        dtype = models.pick_dtype("auto", device)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map={"": device} if gpu else None)
    model.config.use_cache = False
    counter_box.append(TokenCounter(model))
    args = peer_args(variant, a, "fp16" if dtype == torch.float16 else "bf16", gpu, tempfile.mkdtemp())
    if v.runner == "naive":
        trainer = Trainer(model=get_peft_model(model, peer_lora(variant)), args=args, train_dataset=data,
                          data_collator=naive_collator(tokenizer, a.cutoff_len))
        kept = data
    else:
        from trl import SFTTrainer

        # Same token ids and labels as ours (TRL uses a `labels` column as is).
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             peft_config=peer_lora(variant))
        kept = trainer.train_dataset
    # What the trainer really trains on: TRL drops samples its truncation
    # leaves without a label, and packing may cut; count, don't assume.
    real = sum(len(ids) for ids in kept["input_ids"])
    samples = sum(len(x) for x in kept["seq_lengths"]) if "seq_lengths" in kept.column_names else len(kept)
    start = time.time()
    out = trainer.train()
    return {"seconds": time.time() - start, "train_loss": out.training_loss, "steps": trainer.state.global_step,
            "kept_samples": samples, "kept_tokens": real}


def worker(a) -> None:
    from charlora.errors import quiet_libraries

    quiet_libraries(progress_bars=False)
    import torch

    from charlora import models
    from charlora.samples import load_samples
    from charlora.train import tokenize_dataset

    device = models.pick_device()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    box: list = []
    fn = run_charlora if VARIANTS[a.worker].runner == "charlora" else run_peer
    stats = fn(a.worker, a, box)
    # Real tokens: every sample's tokens once per epoch (the tokenization all
    # variants are given); a peer that kept fewer is counted on what it kept.
    tok = models.load_tokenizer(models.find_model(Path(a.models_dir), a.model))
    lengths = [len(x) for x in tokenize_dataset(load_samples(a.dataset), tok, a.cutoff_len)["input_ids"]]
    kept_tokens = stats.pop("kept_tokens", None)
    real = (sum(lengths) if kept_tokens is None else kept_tokens) * a.epochs
    if stats["kept_samples"] is None:
        stats["kept_samples"] = len(lengths)
    stats.update(variant=a.worker, real_tokens=real, computed_tokens=box[0].tokens if box else None,
                 peak_memory_mb=round(peak_memory_mb(device)), device=device, samples=len(lengths),
                 torch_threads=torch.get_num_threads())
    if device.startswith("cuda"):
        stats["gpu"] = torch.cuda.get_device_name()
    print("RESULT " + json.dumps(stats), flush=True)


# ----------------------------------------------------------------- parent side

def lora_flops_per_token(model_dir: Path, cutoff_len: int, gradient_checkpointing: bool) -> float:
    """Training FLOPs per real token for LoRA: forward 2N, backward 2N (input
    gradients through the frozen weights; the adapters' own weight gradients
    are negligible), plus attention 12*layers*hidden*seq/2 per token.  Gradient
    checkpointing adds a second forward."""
    from transformers import AutoConfig

    from charlora.models import count_parameters

    cfg = AutoConfig.from_pretrained(model_dir)
    n = count_parameters(cfg)
    layers = getattr(cfg, "num_hidden_layers", 0)
    hidden = getattr(cfg, "hidden_size", 0)
    attention = 12 * layers * hidden * cutoff_len / 2
    return (4 + (2 if gradient_checkpointing else 0)) * n + attention


def run_variant(variant: str, dataset: Path, a) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--dataset", str(dataset), "-m", a.model,
           "--models_dir", a.models_dir, "--epochs", str(a.epochs), "--batch_size", str(a.batch_size),
           "--cutoff_len", str(a.cutoff_len), "--seed", str(a.seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
    return {"variant": variant, "error": tail or f"exit {proc.returncode}"}


def summarize(rows: list[dict], a) -> None:
    for label in {r["dataset"] for r in rows}:
        group = [r for r in rows if r["dataset"] == label and "error" not in r]
        base = next((r for r in group if r["variant"] == "naive"), None)
        orig = next((r for r in group if r["variant"] == "naive_8bit"), None)
        for r in group:
            r["real_tokens_per_s"] = r["real_tokens"] / r["seconds"]
            r["computed_tokens_per_s"] = (r["computed_tokens"] or 0) / r["seconds"]
            r["seconds_per_epoch"] = r["seconds"] / a.epochs
            if base:
                r["speedup_vs_naive"] = r["real_tokens_per_s"] / (base["real_tokens"] / base["seconds"])
                r["memory_vs_naive"] = r["peak_memory_mb"] / base["peak_memory_mb"]
            if orig:
                r["speedup_vs_naive_8bit"] = r["real_tokens_per_s"] / (orig["real_tokens"] / orig["seconds"])
                r["memory_vs_naive_8bit"] = r["peak_memory_mb"] / orig["peak_memory_mb"]
            if r.get("gpu"):
                peak = next((v for k, v in PEAK_TFLOPS.items() if k in r["gpu"]), None)
                if peak:
                    flops = lora_flops_per_token(Path(a.models_dir) / a.model, a.cutoff_len,
                                                 VARIANTS[r["variant"]].gradient_checkpointing)
                    r["mfu"] = r["real_tokens_per_s"] * flops / (peak * 1e12)


def ratio(row: dict, key: str) -> str:
    return f"{row[key]:.2f}x" if key in row else "-"


def table(rows: list[dict]) -> str:
    out = ["| data | variant | samples kept | real tok/s | computed tok/s | s/epoch | peak MB | mean train loss | speed vs naive | memory vs naive | speed vs naive_8bit | memory vs naive_8bit | MFU |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['dataset']} | {r['variant']} | failed: {r['error'].splitlines()[-1][:80]} | | | | | | | | | | |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        out.append(f"| {r['dataset']} | {r['variant']} | {r['kept_samples']}/{r['samples']} | {r['real_tokens_per_s']:.0f} | {r['computed_tokens_per_s']:.0f} "
                   f"| {r['seconds_per_epoch']:.0f} | {r['peak_memory_mb']} | {r['train_loss']:.3f} "
                   f"| {ratio(r, 'speedup_vs_naive')} | {ratio(r, 'memory_vs_naive')} "
                   f"| {ratio(r, 'speedup_vs_naive_8bit')} | {ratio(r, 'memory_vs_naive_8bit')} | {mfu} |")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    labels = sorted({r["dataset"] for r in ok})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "real_tokens_per_s", "real tokens / s"), (axes[1], "peak_memory_mb", "peak memory (MB)")):
        width = 0.8 / max(1, len(labels))
        variants = list(dict.fromkeys(r["variant"] for r in ok))
        for i, label in enumerate(labels):
            vals = [next((r[key] for r in ok if r["dataset"] == label and r["variant"] == v), 0) for v in variants]
            ax.bar([x + i * width for x in range(len(variants))], vals, width, label=label)
        ax.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(variants))], variants, rotation=30)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("-m", "--model", default="SmolLM2-135M-Instruct", help="model folder in --models_dir; 'llama-1b-random' builds TinyLlama's shape with random weights")
    p.add_argument("--models_dir", default=str(ROOT / "models"))
    p.add_argument("--play", default=str(ROOT.parent / "shared" / "data" / "twelfth-night.txt"))
    p.add_argument("--name", default="Sir Toby Belch", help="the character whose lines are trained")
    p.add_argument("--datasets", default="play,short")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list from {','.join(VARIANTS)}")
    p.add_argument("--epochs", type=int, default=1, help="whole epochs, so every variant trains every token")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--cutoff_len", type=int, default=256)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=str(ROOT / "runs" / "throughput"), help="writes OUT.json, OUT.md, OUT.png")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if a.model == "llama-1b-random":
        make_random_1b(Path(a.models_dir), Path(a.models_dir) / "SmolLM2-135M-Instruct")
    load_before = os.getloadavg()  # with the after value: how shared the machine was
    from charlora.provenance import environment

    env = environment()  # the commit that ran, before anything is edited during the run
    work = Path(tempfile.mkdtemp(prefix="charlora-bench-"))
    datasets = make_datasets(Path(a.play), a.name, work)
    rows = []
    for label in [d.strip() for d in a.datasets.split(",")]:
        for variant in variants:
            print(f"{label}: {variant} ...", file=sys.stderr, flush=True)
            row = run_variant(variant, datasets[label], a)
            row["dataset"] = label
            rows.append(row)
            print(f"  {json.dumps(row)}", file=sys.stderr, flush=True)
    summarize(rows, a)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": a.model, "play": a.play, "name": a.name, "epochs": a.epochs, "batch_size": a.batch_size,
            "cutoff_len": a.cutoff_len, "date": time.strftime("%Y-%m-%d"), **env,
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "variant_settings": {v: asdict(VARIANTS[v]) for v in variants}}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    text = table(rows)
    out.with_suffix(".md").write_text(text + "\n")
    plot(rows, out.with_suffix(".png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
