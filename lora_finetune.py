"""Train a LoRA adapter that makes a causal language model talk like one character.

    python lora_finetune.py -m SmolLM2-135M-Instruct -e 4 -l toby

Reads the processed dataset from prepare_dataset.py, loads models/<model_name>
and writes loras/<lora_name>/ (adapter_config.json + adapter_model.safetensors),
which loads with PeftModel.from_pretrained and in text-generation-webui.
"""
from __future__ import annotations

import argparse
import dataclasses

from charlora import cli
from charlora.train import TrainConfig
from charlora.train_config import incompatible_with

D = TrainConfig()


def not_with(flag: str) -> str:
    """ " (not with --a, --b)": the flags that can't train with --flag, from the one table check_train_config uses."""
    return " (not with " + ", ".join("--" + f for f in incompatible_with(flag)) + ")"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # The original tool's flags: names, short forms and defaults kept.
    p.add_argument("-d", "--dataset_name", default=D.dataset_name, help="processed dataset (JSON) from prepare_dataset.py")
    p.add_argument("-m", "--model_name", default=D.model_name, help="base model folder inside the models folder")
    p.add_argument("-l", "--lora_name", default=D.lora_name, help="adapter folder name inside the loras folder")
    p.add_argument("-b", "--batch_size", type=int, default=D.batch_size, help="samples per forward pass")
    p.add_argument("-e", "--epochs", type=float, default=D.epochs, help="passes over the dataset")
    p.add_argument("-c", "--cutoff_len", type=int, default=D.cutoff_len, help="longest sample in tokens (the start of long contexts is cut)")
    p.add_argument("-r", "--lora_rank", type=int, default=D.lora_rank, help="LoRA rank")
    # New flags.
    p.add_argument("--lora_alpha", type=int, default=D.lora_alpha, help="LoRA scale numerator (scale = alpha / rank)")
    p.add_argument("--lora_dropout", type=float, default=D.lora_dropout, help="dropout on the LoRA input")
    p.add_argument("--learning_rate", "--lr", type=float, default=D.learning_rate, help="peak learning rate (measured: 1e-3 teaches the character to stop; 3e-4 did not)")
    p.add_argument("--grad_accum", type=int, default=D.grad_accum, help="micro-batches per optimizer step")
    p.add_argument("--warmup", type=float, default=D.warmup, help="linear warm-up, as a share of all optimizer steps")
    p.add_argument("--target_modules", default=D.target_modules, help="'all-linear', 'default' (PEFT's per-architecture q/v map) or a comma list of module names")
    p.add_argument("--lora_layers", type=int, default=D.lora_layers, help="LoRA on the last N transformer blocks only; the blocks below get no backward pass (0: every block)")
    p.add_argument("--quantization", choices=["auto", "8bit", "4bit", "none"], default=D.quantization, help="auto: 16-bit when the model fits in memory, else 8-bit (8-bit trains ~2x slower)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default=D.dtype, help="auto: bf16 on CPU and recent GPUs, fp16 on older GPUs")
    p.add_argument("--eval_split", type=float, default=D.eval_split,
                   help="share of samples held out from the END of the dataset (the last scenes or messages) and scored "
                        "after every epoch; the best epoch's adapter is saved (default: 0.1 when the dataset can spare "
                        "it; 0: off)")
    p.add_argument("--early_stop", type=int, default=D.early_stop,
                   help="with a held-out slice, stop after this many epochs without a better held-out loss (0: run all "
                        "--epochs, which is otherwise the most that may run)")
    p.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=D.retrain,
                   help="with a held-out slice, once the best epoch is known, train again from the start for that many "
                        "epochs so the learning rate decays to 0 by then (costs those epochs again)")
    p.add_argument("--others_weight", type=float, default=D.others_weight,
                   help="loss weight, in [0, 1], of other speakers' lines as extra samples (0: off); needs the "
                        "<dataset>.source.json that prepare_dataset.py writes beside the dataset" + not_with("others_weight"))
    p.add_argument("--contrast_weight", type=float, default=D.contrast_weight,
                   help="weight, in [0, 1], of an unlikelihood loss on other speakers' lines put under the character's "
                        "name (0: off): teaches what the character would not say; needs <dataset>.source.json" + not_with("contrast_weight"))
    p.add_argument("--pair_weight", type=float, default=D.pair_weight,
                   help="weight of a preference loss: the adapter's gain over the base must be larger on each of the "
                        "character's lines than on what another speaker said there, under the character's name (0: "
                        "off); a second row per sample; needs <dataset>.source.json" + not_with("pair_weight"))
    p.add_argument("--preserve_weight", type=float, default=D.preserve_weight,
                   help="weight, in [0, 1], of a loss that keeps the adapter's predictions on other speakers' lines "
                        "(under their own names) those of the base model (0: off), so what it learns is tied to the "
                        "character; one extra forward of those lines per step; needs <dataset>.source.json"
                        + not_with("preserve_weight"))
    p.add_argument("--others_ratio", type=float, default=D.others_ratio,
                   help="with --others_weight / --contrast_weight / --preserve_weight: at most this many other speakers' samples (of each "
                        "kind) per character sample")
    p.add_argument("--seed", type=int, default=D.seed, help="random seed (data order, LoRA init, held-out split)")
    p.add_argument("--max_steps", type=int, default=D.max_steps, help="stop after this many optimizer steps (-1: all epochs)")
    p.add_argument("--neftune_noise_alpha", type=float, default=D.neftune_noise_alpha, help="NEFTune embedding noise while training (0: off), against memorizing small datasets")
    p.add_argument("--packing", action="store_true", help="padding-free batches: samples concatenated with per-sample attention (same loss, no compute on padding)" + not_with("packing"))
    p.add_argument("--pcw_windows", type=int, default=D.pcw_windows, help="train on Parallel Context Windows: older context split into N windows sharing positions (0: off); costs the full context's compute" + not_with("pcw_windows"))
    p.add_argument("--pcw_recent", type=int, default=D.pcw_recent, help="with --pcw_windows: context lines kept next to the reply, outside the windows")
    p.add_argument("--frozen_context", action=argparse.BooleanOptionalAction, default=D.frozen_context,
                   help="run each sample's context forward only (into a cache) and train through the reply alone: the "
                        "same loss without the backward pass over the context before the batch's earliest reply"
                        + not_with("frozen_context"))
    p.add_argument("--banded", action="store_true", help="line-banded attention: a run of lines one sequence, each reply seeing only its --rounds window, so shared context is computed once" + not_with("banded"))
    p.add_argument("--gradient_checkpointing", action="store_true", help="trade ~30%% speed for much less activation memory")
    p.add_argument("--save_steps", type=int, default=D.save_steps, help="checkpoint every N optimizer steps into loras/<lora_name>/checkpoints/ (0: every tenth of the run; also at the end and on Ctrl-C)")
    p.add_argument("--save_total_limit", type=int, default=D.save_total_limit, help="checkpoints kept")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its newest checkpoint (same flags as the original run)")
    p.add_argument("--models_dir", default=D.models_dir, help="models folder (default: models/, or user_data/models/ of a text-generation-webui install)")
    p.add_argument("--loras_dir", default=D.loras_dir, help="adapters folder (default: loras/, or user_data/loras/ of a text-generation-webui install)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing adapter of the same name (only once training succeeded)")
    p.add_argument("--trust_remote_code", action="store_true", help="allow model code shipped inside the model folder to run")
    p.add_argument("--allow_pickle", action="store_true", help="load pickle (.bin) weights, which can run code; only safetensors otherwise")
    p.add_argument("--sample_replies", type=int, default=D.sample_replies, help="greedy replies to print after training")
    p.add_argument("--export_character", action="store_true", help="also write <Name>.yaml to the webui characters folder (characters/ or user_data/characters/)")
    p.add_argument("--characters_dir", default=D.characters_dir, help="where --export_character writes")
    p.add_argument("--merge", action="store_true", help="also save base + adapter merged as models/<model_name>-<lora_name> for tools that can't load adapters")
    p.add_argument("--export_gguf", action="store_true", help="also write loras/<lora_name>/<lora_name>.gguf for llama.cpp (--lora); LLaMA-architecture bases")
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    from charlora.errors import quiet_libraries

    quiet_libraries(progress_bars=True)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    from charlora.checkpoints import Interrupted
    from charlora.train import train

    return cli.run(lambda: report(train(cfg)), errors={Interrupted: ("interrupted", 130)},
                   interrupted="\ninterrupted; no adapter was written (an existing one is untouched); checkpoints "
                               "saved so far stay for --resume")


def report(result) -> int:
    if not result.main_process:
        return 0
    loss = f"train loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}" if result.losses else "no loss logged"
    if result.eval_loss is not None:
        loss += f", best held-out loss {result.eval_loss:.3f}"
    print(f"saved {result.adapter_dir} after {result.optimizer_steps} steps in {result.seconds:.0f} s; {loss}")
    for path in result.exported:
        print(f"wrote {path}")
    for prompt, reply, eos in result.samples:
        who = prompt.rsplit("\n", 1)[-1]
        print(f"  ...{prompt[-120:]!r}\n  -> {who}{reply}{'' if eos else '   [no end-of-sequence]'}")
    return 0


if __name__ == "__main__":
    cli.exit_process(main())
