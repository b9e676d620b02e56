"""Stage 5: train a LoRA adapter on a processed dataset and save it to loras/<name>.

Built on transformers' Trainer and PEFT so that logging, gradient accumulation,
mixed precision, length-grouped batches and (later) multi-GPU come from
well-kept code.  What is ours: loss only on the reply + EOS (tokens.py), no
padding to cutoff_len, a warm-up that is a share of the run, 16-bit unless the
model does not fit, and an adapter folder that is never half-written.
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from charlora.errors import CharloraError, write_failure
# The stages' pieces live in their own modules; the names callers and tests
# import from charlora.train are kept here (noqa: re-exported, not used).
from charlora.keeper import make_best_keeper
from charlora.objective import ReplyOnlyHead, make_trainer_class, weighted_items  # noqa: F401
from charlora.run_folder import Plan, export_extras, plan_run, save_adapter
from charlora.train_config import TrainConfig, check_train_config, lora_placement
from charlora.train_data import (add_other_speakers, held_out_size, make_collator, split_samples,
                                 tokenize_dataset)


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


@dataclass
class Base:
    """The base model as it will be loaded, and its tokenizer."""

    tokenizer: Any
    device: str
    dtype: Any
    quant: str
    positions: int | None = None
    """The most positions the model reads (None: no known limit)."""


@dataclass
class Data:
    """The tokenized training rows and the held-out samples."""

    rows: Any
    eval_samples: list
    show: list
    """Prompts whose greedy replies are printed at the end."""
    weights: list[float] | None
    """Per-sample loss weights (other speakers' lines), or None."""
    trainer_args: dict = field(default_factory=dict)
    """TrainingArguments that differ for these rows (--banded: banded.banded_training's)."""
    replies: int | None = None
    """--banded: the training samples the bands label (the rows are bands)."""
    paired: list = field(default_factory=list)
    """--pair_weight: the training samples, each with its "rival" line (None when it has none)."""


@dataclass
class Setup:
    """The Trainer and what is read back from the run it drives."""

    trainer: Any
    reply_head: ReplyOnlyHead
    keeper: Any
    saver: Any
    packing: bool
    world: int
    per_step: int
    total_steps: int


def inspect_base(cfg: TrainConfig, model_path: Path, log) -> Base:
    """Device, dtype and quantization for the base model, and its tokenizer,
    after the checks that need only its config (vocabulary, weight format)."""
    from charlora import models

    device = models.pick_device()
    dtype = models.pick_dtype(cfg.dtype, device)
    tokenizer = models.load_tokenizer(model_path, cfg.trust_remote_code)
    # Right padding in training: every sample's positions start at 0, as they
    # do when the prompt is fed alone at chat time.
    tokenizer.padding_side = "right"

    model_config = models.read_config(model_path, cfg.trust_remote_code)
    models.check_vocabulary(tokenizer, model_config, model_path)
    positions = models.config_positions(model_config, tokenizer)
    models.check_cutoff(cfg.cutoff_len, positions)
    models.check_weights(model_path, cfg.allow_pickle)
    n_params = models.count_parameters(model_config)
    quant = models.choose_quantization(cfg.quantization, 2 * n_params, models.available_memory(device))
    if quant != "none" and device == "cpu" and cfg.quantization == "auto":
        log("note: the model does not fit in memory in 16-bit; loading it in 8-bit (slower)")
    log(f"model {model_path} ({n_params / 1e6:.0f}M parameters) on {device}, {str(dtype).removeprefix('torch.')}, quantization {quant}")
    return Base(tokenizer, device, dtype, quant, positions)


def prepare_data(cfg: TrainConfig, samples: list[dict[str, str]], tokenizer: Any, log,
                 positions: int | None = None) -> Data:
    """Hold out the tail, add other speakers' lines, report the data and tokenize it.  `positions`:
    the most the model reads, which --banded's bands are checked against."""
    from charlora.source import data_report, load_source
    from charlora.tokens import token_lengths

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
    n_char = len(train_samples)
    train_samples, weights = add_other_speakers(cfg, train_samples, bool(eval_samples), src, why_not, log)
    if cfg.pair_weight > 0:
        from charlora.pairs import add_rivals

        train_samples, weights = add_rivals(train_samples, weights, n_char, src, bool(eval_samples), cfg.pair_weight, log)
    for line in data_report(samples, token_lengths(tokenizer, samples), cfg.cutoff_len, n_eval, src).lines(cfg.cutoff_len):
        log(line)
    trainer_args = {}
    if cfg.banded:
        from charlora.banded import banded_training

        data, trainer_args = banded_training(train_samples, tokenizer, cfg.cutoff_len, cfg.batch_size, cfg.grad_accum,
                                             cfg.neftune_noise_alpha)
        log(f"banded: {len(train_samples)} replies in {len(data)} bands of up to "
            f"{max(len(row) for row in data['input_ids'])} tokens")
        # Positions run on through a band (charlora.banded), so they can pass
        # a learned position table (GPT-2, OPT) that every sample fits in.
        reach = max(max(row) for row in data["position_ids"]) + 1
        if positions is not None and reach > positions:
            raise CharloraError(f"--banded: a band reaches position {reach}, past the {positions} this model reads; "
                                "train without --banded, or with a smaller --cutoff_len")
    else:
        data = tokenize_dataset(train_samples, tokenizer, cfg.cutoff_len, cfg.pcw_windows, cfg.pcw_recent, weights)
    # Replies shown at the end: to held-out prompts when there are some.
    show = (eval_samples or train_samples)[-cfg.sample_replies :] if cfg.sample_replies > 0 else []
    return Data(data, eval_samples, show, weights, trainer_args, len(train_samples) if cfg.banded else None,
                train_samples if any(s.get("rival") for s in train_samples) else [])


def load_lora_model(cfg: TrainConfig, model_path: Path, base: Base, target_modules: Any, data: Data, log) -> Any:
    """The base model with fresh LoRA layers on target_modules (kbit-prepared when quantized)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from charlora import models

    model = models.load_model(model_path, base.quant, base.dtype, base.device, cfg.trust_remote_code, cfg.allow_pickle)
    if data.paired and "pair_ref" not in data.rows.column_names:  # the base model's view of each pair, before LoRA exists
        from charlora.pairs import add_reference

        data.rows = add_reference(data.rows, model, base.tokenizer, data.paired, cfg.cutoff_len)
    if base.quant != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                      task_type="CAUSAL_LM", **lora_placement(model, target_modules, cfg.lora_layers))
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise CharloraError(f"cannot put LoRA on this model: {str(exc).splitlines()[0]}") from None
    trainable, total = model.get_nb_trainable_parameters()
    log(f"LoRA r={cfg.lora_rank} on {cfg.target_modules}: {trainable / 1e6:.2f}M trainable parameters ({100 * trainable / total:.2f}%)")
    return model


def training_arguments(cfg: TrainConfig, ckpt_dir: Path, base: Base, world: int, total_steps: int, save_steps: int,
                       main_process: bool, weights: list[float] | None, overrides: dict | None = None):
    """transformers' TrainingArguments for this run (overrides: Data.trainer_args)."""
    import torch
    from transformers import TrainingArguments

    dtype, device = base.dtype, base.device
    return TrainingArguments(**{**dict(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        # warm-up's first step runs at rate 0: in a one-step run (a small chat) the adapter stayed all zero
        warmup_steps=cfg.warmup if total_steps > 1 else 0,
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
    ), **(overrides or {})})


def build_trainer(cfg: TrainConfig, plan: Plan, base: Base, model: Any, data: Data, main_process: bool, log) -> Setup:
    """The Trainer with our loss, collator and callbacks (best epoch, Ctrl-C, divergence)."""
    from charlora import checkpoints, guards, models

    # Under torchrun / accelerate launch every process takes its own batches.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch_size = data.trainer_args.get("per_device_train_batch_size", cfg.batch_size)
    grad_accum = data.trainer_args.get("gradient_accumulation_steps", cfg.grad_accum)
    steps_per_epoch = math.ceil(math.ceil(len(data.rows) / (batch_size * world)) / grad_accum)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    save_steps = cfg.save_steps if cfg.save_steps > 0 else max(1, total_steps // 10)
    if main_process:
        shutil.rmtree(plan.work_dir, ignore_errors=True)
        if not cfg.resume:
            shutil.rmtree(plan.ckpt_dir, ignore_errors=True)  # --overwrite: an old run's checkpoints go
        checkpoints.record_run(plan.ckpt_dir, plan.settings)
    args = training_arguments(cfg, plan.ckpt_dir, base, world, total_steps, save_steps, main_process, data.weights,
                              data.trainer_args)
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
    collator = make_collator(base.tokenizer, packing, flash_attention="flash" in str(model.config._attn_implementation),
                             pcw_dtype=pcw_dtype, banded=cfg.banded)
    if data.paired:
        from functools import partial

        from charlora.pairs import collate_with_rivals

        collator = partial(collate_with_rivals, collate=collator)
    reply_head = ReplyOnlyHead(model, base.tokenizer.eos_token_id, cfg.pair_weight)
    keeper = make_best_keeper(model, base.tokenizer, data.eval_samples, cfg.cutoff_len, log, plan.resume_from,
                              cfg.pcw_windows, cfg.pcw_recent, cfg.early_stop) if data.eval_samples else None
    saver = checkpoints.make_interrupt_saver(log, keeper.save_to if keeper else None)
    trainer = make_trainer_class()(model=model, args=args, train_dataset=data.rows, data_collator=collator,
                                   reply_head=reply_head, frozen_context=cfg.frozen_context, callbacks=[saver] + ([keeper] if keeper else []) + [guards.make_divergence_guard()])
    per_step = batch_size * grad_accum * world
    unit = "bands" if cfg.banded else "samples"
    log(f"training on {len(data.rows)} {unit} ({len(data.eval_samples)} held out), {total_steps} optimizer steps of "
        f"{per_step} {unit} ({batch_size} a batch x {grad_accum} accumulated x {world} process"
        f"{'es' if world > 1 else ''}); checkpoints every {save_steps} steps in {plan.ckpt_dir}")
    if plan.resume_from is not None:
        log(f"resuming from {plan.resume_from}")
    return Setup(trainer, reply_head, keeper, saver, packing, world, per_step, total_steps)


def run_trainer(setup: Setup, plan: Plan, main_process: bool):
    """(Trainer's TrainOutput, seconds): the run, with failures turned into
    one line that says what is kept for --resume, and Ctrl-C into Interrupted."""
    import time

    from charlora import checkpoints

    trainer, ckpt_dir, dest = setup.trainer, plan.ckpt_dir, plan.dest
    start = time.time()
    try:
        run = trainer.train(resume_from_checkpoint=str(plan.resume_from) if plan.resume_from else None)
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
        if (why := write_failure(exc)) is not None:  # disk full, folder gone read-only, ...
            kept = checkpoints.newest_checkpoint(ckpt_dir) if main_process else None
            raise CharloraError(f"training stopped: could not write {getattr(exc, 'filename', None) or 'a checkpoint'}"
                                f" ({why}); " + (f"{kept} is kept for --resume" if kept else
                                                 "no checkpoint had been saved")) from None
        raise
    seconds = time.time() - start
    if setup.saver.interrupted:
        raise checkpoints.Interrupted(
            f"stopped at step {trainer.state.global_step} of {setup.total_steps}; checkpoint saved in "
            f"{checkpoints.newest_checkpoint(ckpt_dir)}; run the same command with --resume to continue")
    return run, seconds


def finish_run(cfg: TrainConfig, plan: Plan, base: Base, setup: Setup, data: Data, run, seconds: float,
               character: str, log) -> tuple[TrainResult, dict, list]:
    """(result, run record, logged (step, loss)): the best epoch's weights put
    back and what the adapter folder records of the run."""
    trainer, keeper = setup.trainer, setup.keeper
    history = trainer.state.log_history
    logged = [(h["step"], h["loss"]) for h in history if "loss" in h]
    losses = [loss for _, loss in logged]
    evals = keeper.history if keeper else []
    eval_loss, best_step = (keeper.best[0], keeper.best[1]) if keeper else (None, trainer.state.global_step)
    if keeper:
        epoch = kept_epoch(evals, best_step)
        restored = keeper.restore_best()
        log(f"kept the adapter of epoch {epoch or '?'} (step {best_step}, held-out loss {eval_loss:.4f}): "
            f"the best of {len(evals)} scored epoch{'s' if len(evals) > 1 else ''}" + ("" if restored else ", the last one")
            + ("; stopped early" if keeper.stopped_early else ""))
    result = TrainResult(plan.dest, data.replies or len(data.rows), len(data.eval_samples), trainer.state.global_step, losses, eval_loss,
                         run.training_loss, seconds)
    record = {"config": asdict(cfg), "base_model": str(plan.model_path), "adapter_dir": str(plan.dest), "character": character,
              "quantization": base.quant, "dtype": str(base.dtype).removeprefix("torch."),
              "train_samples": result.train_samples, "eval_samples": result.eval_samples,
              "optimizer_steps": result.optimizer_steps, "train_losses": losses,
              "train_loss_steps": [step for step, _ in logged], "mean_train_loss": run.training_loss,
              "eval_losses": evals, "eval_loss": eval_loss, "kept_step": best_step,
              "stopped_early": bool(keeper and keeper.stopped_early),
              "packing": setup.packing, "pcw_windows": cfg.pcw_windows, "world_size": setup.world,
              "samples_per_step": cfg.batch_size * cfg.grad_accum * setup.world,  # --banded: the replies a step aims at
              **({"bands": len(data.rows), "bands_per_step": setup.per_step} if cfg.banded else {}),
              "train_seconds": round(seconds, 1)}
    return result, record, logged


def kept_epoch(history: list[tuple[int, float]], best_step: int) -> int | None:
    """The number (from 1) of the scored epoch whose step was kept; None if no score is at that step."""
    return next((k + 1 for k, (step, _) in enumerate(history) if step == best_step), None)


def retrain_length(history: list[tuple[int, float]], best_step: int, epochs: float) -> int | None:
    """--retrain: how many epochs to train again for - the number of the epoch
    kept, when that is short of the planned --epochs (its learning rate had
    not decayed yet); None when the kept epoch was the last planned one."""
    kept = kept_epoch(history, best_step)
    return kept if kept is not None and kept < epochs else None


def retrain(cfg: TrainConfig, epochs: int, plan: Plan, base: Base, data: Data, setup: Setup, first: dict,
            character: str, main_process: bool, log):
    """The second pass of --retrain: a fresh LoRA trained for `epochs` with
    the schedule fitted to them.  (model, setup, result, record, logged) as
    the first pass gives them; the record keeps the first pass's scores."""
    from dataclasses import replace

    from transformers import set_seed

    from charlora import checkpoints

    log(f"retraining from the start for the {epochs} epoch{'s' if epochs > 1 else ''} kept, the learning rate "
        "decaying to 0 over them (--retrain)")
    setup.reply_head.handle.remove()
    # resume=False: a first pass resumed with --resume left its checkpoints,
    # and an interrupted second pass would otherwise be resumed from the
    # first pass's newest one; this pass starts, and keeps, its own.
    again = replace(cfg, epochs=epochs, early_stop=0, retrain=False, resume=False)
    plan = replace(plan, settings={**plan.settings, "epochs": epochs, "early_stop": 0, "retrain": False}, resume_from=None)
    set_seed(cfg.seed)  # the same initial LoRA and data order as a direct `-e {epochs}` run
    model = load_lora_model(again, plan.model_path, base, plan.target_modules, data, log)
    setup = build_trainer(again, plan, base, model, data, main_process, log)
    try:
        run, seconds = run_trainer(setup, plan, main_process)
    except checkpoints.Interrupted as exc:
        raise checkpoints.Interrupted(f"{exc} -e {epochs} --early_stop 0 --no-retrain (this was the retraining pass)") from None
    result, record, logged = finish_run(again, plan, base, setup, data, run, seconds, character, log)
    record.update(config=asdict(cfg), retrained_epochs=epochs, train_seconds=round(first["train_seconds"] + seconds, 1),
                  first_pass={k: first[k] for k in ("eval_losses", "kept_step", "stopped_early", "optimizer_steps",
                                                    "train_losses", "train_seconds")})
    result.seconds += first["train_seconds"]
    return model, setup, result, record, logged


def train(cfg: TrainConfig, log=print) -> TrainResult:
    """Train, keep the best epoch and save loras/<lora_name>; the stages above, in order."""
    from charlora.adapter import character_name
    from charlora.samples import load_samples

    check_train_config(cfg)

    # torchrun / accelerate launch: only the first process writes files and talks.
    main_process = int(os.environ.get("RANK", "0")) == 0
    if not main_process:
        log = lambda *args, **kwargs: None  # noqa: E731
    samples = load_samples(cfg.dataset_name)
    plan = plan_run(cfg, main_process, log, character_name(samples))

    # Only now, after the checks of the user's own input: importing the
    # training stack takes seconds and can log library warnings (bitsandbytes
    # on some CPUs) that would come before a one-line error.
    from transformers import set_seed

    set_seed(cfg.seed)
    base = inspect_base(cfg, plan.model_path, log)
    data = prepare_data(cfg, samples, base.tokenizer, log, base.positions)
    model = load_lora_model(cfg, plan.model_path, base, plan.target_modules, data, log)
    setup = build_trainer(cfg, plan, base, model, data, main_process, log)
    run, seconds = run_trainer(setup, plan, main_process)
    result, record, logged = finish_run(cfg, plan, base, setup, data, run, seconds, character_name(samples), log)
    length = (retrain_length(setup.keeper.history, record["kept_step"], cfg.epochs)
              if cfg.retrain and setup.keeper and cfg.max_steps <= 0 else None)
    if length:
        model, setup, result, record, logged = retrain(cfg, length, plan, base, data, setup, record,
                                                       character_name(samples), main_process, log)
    setup.reply_head.handle.remove()
    model.config.use_cache = True
    if not main_process:
        result.main_process = False
        return result
    card = save_adapter(plan, model, base.tokenizer, samples, record, logged)
    result.exported.extend(export_extras(cfg, plan, base.dtype, card))

    if data.show:
        from charlora.reply import sample_reply as generate_reply

        model.eval()
        for s in data.show:
            reply, eos = generate_reply(model, base.tokenizer, s["input"])
            result.samples.append((s["input"], reply, eos))
    return result
