"""Training never loses work: checkpoints, --resume, and a Ctrl-C that saves.

Checkpoints are transformers Trainer checkpoints (adapter, optimizer,
scheduler, RNG states, data position) in loras/<name>/checkpoints/, so a
resumed run continues where the interrupted one stopped, and ends with the
same adapter as an uninterrupted run with the same seed, from a checkpoint
at an epoch's end or in mid-epoch (tests/test_resume.py; each epoch's sample
order comes from the seed and the epoch alone: objective.epoch_seeded).  The
finished adapter replaces the folder only at the end; the checkpoints go with
the run that made them.
"""
from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path
from typing import Any, Callable

from charlora.errors import CharloraError

CHECKPOINTS = "checkpoints"
RUN_FILE = "charlora_run.json"
COMPLETE = "charlora_complete"
# Settings that may differ between an interrupted run and its resumption:
# they change what is written or shown afterwards, not what is learned.
RESUME_FREE = {"resume", "overwrite", "sample_replies", "export_character", "characters_dir", "merge",
               "models_dir", "loras_dir", "save_steps", "save_total_limit", "trust_remote_code"}


class Interrupted(CharloraError):
    """Training stopped by Ctrl-C after saving a checkpoint."""


def is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def newest_checkpoint(folder: Path) -> Path | None:
    """checkpoint-<step> with the highest step whose save completed: the
    marker is written after Trainer's files and ours, so a checkpoint cut
    short by a crash is passed over for the one before it."""
    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / COMPLETE).is_file():
            found.append((int(match[1]), path))
    return max(found)[1] if found else None


# The run record's key for the dataset's SHA-256 (charlora.guards.file_digest).
DATASET_DIGEST = "dataset_sha256"


def record_run(folder: Path, settings: dict[str, Any]) -> None:
    from charlora.files import write_json_atomic

    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(settings, folder / RUN_FILE)


def check_intact(checkpoint: Path) -> None:
    """Read what Trainer reads back from a checkpoint (JSON, safetensors
    headers, the zip archives torch.save writes), so a file damaged after the
    checkpoint completed is one error line, not a traceback from inside
    Trainer.  Nothing is unpickled: the zip CRCs alone find cut or junk files."""
    import zipfile

    from safetensors import SafetensorError, safe_open

    for path in sorted(checkpoint.iterdir()):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as f:
                    list(f.keys())
            elif path.suffix in (".pt", ".pth"):
                with zipfile.ZipFile(path) as archive:
                    if archive.testzip() is not None:
                        raise zipfile.BadZipFile("a member fails its CRC check")
        except (OSError, ValueError, SafetensorError, zipfile.BadZipFile) as exc:
            from charlora.models import one_line

            raise CharloraError(f"checkpoint {checkpoint} is damaged ({path.name}: {one_line(exc)}); delete that "
                                "folder to resume from the one before it, or --overwrite to start over") from None


def check_resumable(folder: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume a run with different training settings: the
    optimizer state and schedule in the checkpoint belong to the old ones."""
    try:
        saved = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        raise CharloraError(f"{folder} has no readable {RUN_FILE}; it cannot be resumed (use --overwrite to start over)") from None
    if not isinstance(saved, dict):
        raise CharloraError(f"{folder / RUN_FILE} is damaged; it cannot be resumed (use --overwrite to start over)")
    # Records from before the digest was kept have none: nothing to compare.
    if saved.get(DATASET_DIGEST) and settings.get(DATASET_DIGEST) and saved[DATASET_DIGEST] != settings[DATASET_DIGEST]:
        raise CharloraError(f"cannot resume: the dataset {settings.get('dataset_name')} changed since the checkpoints in "
                            f"{folder} were made; resuming would mix two datasets' training. Restore it, or "
                            "--overwrite to start over")
    saved.pop(DATASET_DIGEST, None)
    settings = {k: v for k, v in settings.items() if k != DATASET_DIGEST}
    # One file by two names (-d bob.json, then -d ./bob.json) is the same dataset.
    for both in (saved, settings):
        if isinstance(both.get("dataset_name"), str):
            both["dataset_name"] = os.path.realpath(both["dataset_name"])
    changed = [k for k in sorted(set(saved) | set(settings))
               if k not in RESUME_FREE and saved.get(k) != settings.get(k)]
    if changed:
        diff = ", ".join(f"--{k} {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed[:4])
        raise CharloraError(f"cannot resume: the checkpoints in {folder} were made with other settings ({diff}); "
                            "rerun with the original flags, or --overwrite to start over")


def make_interrupt_saver(log=print, save_extra: Callable[[Path], None] | None = None):
    """A Trainer callback: the first Ctrl-C finishes the current optimizer
    step, saves a checkpoint and stops; a second one interrupts at once.  It
    also completes each checkpoint: `save_extra(folder)` adds our own state,
    then the marker that newest_checkpoint looks for."""
    from transformers import TrainerCallback

    class SaveOnInterrupt(TrainerCallback):
        def __init__(self):
            self.interrupted = False
            self._previous = None

        def _handle(self, signum, frame):
            self.interrupted = True
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            log("\nCtrl-C: saving a checkpoint after this step (Ctrl-C again to quit without it)")

        def on_train_begin(self, args, state, control, **kwargs):
            if threading.current_thread() is threading.main_thread():
                self._previous = signal.signal(signal.SIGINT, self._handle)

        def on_step_end(self, args, state, control, **kwargs):
            if self.interrupted:
                control.should_save = True
                control.should_training_stop = True
            elif state.global_step >= state.max_steps:
                # a checkpoint of the finished run: if writing the adapter
                # fails (disk full), --resume writes it without retraining
                control.should_save = True

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                if save_extra is not None:
                    save_extra(folder)
                (folder / COMPLETE).write_text(f"{state.global_step}\n")

        def on_train_end(self, args, state, control, **kwargs):
            if self._previous is not None and not self.interrupted:
                signal.signal(signal.SIGINT, self._previous)

    return SaveOnInterrupt()
