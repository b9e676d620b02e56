"""A training run's folders: where it reads and writes, settled and checked
before anything is loaded (`plan_run`), and the adapter folder written whole at
the end (`save_adapter`), with the extras beside it (`export_extras`).
"""
from __future__ import annotations

import shlex
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from charlora.errors import CharloraError, write_failure
from charlora.files import strict_json
from charlora.train_config import TrainConfig, resolve_target_modules


@dataclass
class Plan:
    """Where a run reads and writes, settled and checked before anything is loaded."""

    model_path: Path
    dest: Path
    ckpt_dir: Path
    settings: dict
    """The run's flags and the dataset's digest: what --resume must find unchanged."""
    resume_from: Path | None
    merge_dest: Path | None
    character_file: Path | None
    """Where --export_character writes, checked here and written by export_extras."""
    target_modules: Any
    lock: Any
    """The adapter name's lock, held as long as the plan is (train() keeps it to the end)."""

    @property
    def work_dir(self) -> Path:
        """The adapter folder is written here and renamed into place when complete."""
        return self.dest.with_name(f".{self.dest.name}.partial")


def plan_run(cfg: TrainConfig, main_process: bool, log, character: str = "") -> Plan:
    """Resolve the folders, take the adapter's lock and refuse what can't end well (an existing
    adapter or character file, a resume on changed data, a merge over a folder, a base gguf can't export)."""
    from charlora import checkpoints, files, guards, models

    models_dir, note = models.resolve_dir(cfg.models_dir, "models")
    if note:
        log(note)
    loras_dir, note = models.resolve_dir(cfg.loras_dir, "loras")
    if note:
        log(note)
    model_path = models.find_model(models_dir, cfg.model_name)
    # held until train() returns; by the first process only (the others of a torchrun job are the same run)
    lock = guards.lock_adapter(loras_dir, cfg.lora_name) if main_process else None
    dest = adapter_destination(loras_dir, cfg.lora_name, cfg.overwrite, cfg.resume)
    ensure_writable(loras_dir)
    character_file = None
    if cfg.export_character:  # a file in its place was a traceback after the whole run
        characters_dir = models.resolve_dir(cfg.characters_dir, "characters")[0]
        ensure_writable(characters_dir)
        character_file = characters_dir / f"{files.safe_name(character, 'character')}.yaml"
        if character_file.exists() and not cfg.overwrite:  # the user's own, hand-made file was replaced
            raise CharloraError(f"{character_file} already exists; add --overwrite to replace it, or move it away")
    ckpt_dir = dest / checkpoints.CHECKPOINTS
    settings = {**asdict(cfg), checkpoints.DATASET_DIGEST: guards.file_digest(cfg.dataset_name)}
    resume_from = checkpoints.newest_checkpoint(ckpt_dir) if cfg.resume else None
    if resume_from is not None:
        checkpoints.check_resumable(ckpt_dir, settings)
        checkpoints.check_intact(resume_from)
    merge_dest = models_dir / files.safe_name(f"{model_path.name}-{cfg.lora_name}") if cfg.merge else None
    if merge_dest is not None and merge_dest.exists():
        raise CharloraError(f"{merge_dest} already exists; remove it or pick another --lora_name before merging")
    if cfg.export_gguf:
        from charlora import gguf

        gguf.check_base(gguf.read_json(model_path / "config.json"))
    target_modules = resolve_target_modules(cfg.target_modules)
    return Plan(model_path, dest, ckpt_dir, settings, resume_from, merge_dest, character_file, target_modules, lock)


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

    from charlora.files import make_folder

    make_folder(folder)
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".charlora-write-test"):
            pass
    except OSError as exc:
        raise CharloraError(f"cannot write to {folder}: {exc.strerror or exc}") from None


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


def save_adapter(plan: Plan, model: Any, tokenizer: Any, samples: list[dict[str, str]], record: dict,
                 logged: list) -> dict:
    """Write the adapter folder (weights, base, record, card, loss plot,
    character file) beside the old one and swap it in; returns the character card."""
    from charlora import adapter, files

    character, work_dir, dest = record["character"], plan.work_dir, plan.dest
    card = adapter.character_card(character, samples, lambda text: len(tokenizer(text)["input_ids"]))
    try:
        model.save_pretrained(work_dir)
        adapter.record_base(work_dir, plan.model_path)
        (work_dir / "charlora_config.json").write_text(strict_json(record) + "\n")
        adapter.write_card(work_dir, record, logged)
        adapter.plot_losses(work_dir, logged, record["eval_losses"])
        adapter.write_character(work_dir / f"{files.safe_name(character, 'character')}.yaml", card)
        files.ordinary_modes(work_dir)
        replace_folder(work_dir, dest)
    except Exception as exc:
        shutil.rmtree(work_dir, ignore_errors=True)
        if (why := write_failure(exc)) is None:
            raise
        raise CharloraError(f"could not write the adapter ({why}); {dest} is as it was, and the "
                            f"finished run's checkpoint is in {plan.ckpt_dir}: free the space and rerun with --resume") from None
    return card


def export_extras(cfg: TrainConfig, plan: Plan, dtype: Any, card: dict) -> list[Path]:
    """What --export_character, --merge and --export_gguf ask for, beside the adapter."""
    from charlora import adapter, files

    exported = []
    if plan.character_file is not None:
        # atomic and checked: the user's folder may hold a FIFO or a read-only file of that name
        files.write_text_atomic(adapter.character_yaml(card), plan.character_file)
        exported.append(plan.character_file)
    if plan.merge_dest is not None:
        # The adapter is saved by now: a Ctrl-C here said "no adapter was written", a full disk was a traceback.
        from charlora.checkpoints import Interrupted

        later = shlex.join(["python", "merge_lora.py", "-l", cfg.lora_name, "-m", plan.model_path.name,
                            *(["--models_dir", cfg.models_dir] if cfg.models_dir else []),
                            *(["--loras_dir", cfg.loras_dir] if cfg.loras_dir else [])])
        try:
            adapter.merge_into_model(plan.model_path, plan.dest, plan.merge_dest, dtype)
        except KeyboardInterrupt:
            raise Interrupted(f"stopped during the merge: the adapter is saved in {plan.dest}, the merged model "
                              f"{plan.merge_dest} was not written; merge it with: {later}") from None
        except Exception as exc:
            if (why := write_failure(exc)) is None:
                raise
            raise CharloraError(f"could not write the merged model {plan.merge_dest} ({why}); the adapter is saved "
                                f"in {plan.dest}; merge it with: {later}") from None
        exported.append(plan.merge_dest)
    if cfg.export_gguf:
        from charlora import gguf

        exported.append(gguf.export_lora(plan.dest, plan.model_path))
    return exported
