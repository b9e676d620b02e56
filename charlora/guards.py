"""Training runs that can't succeed wrongly: one run per adapter name, no
resumption on changed data, no NaN adapter saved as a success, and no name
that leaves its folder.

Each guard is small and called from charlora.train:
- check_lora_name: --lora_name as one plain, short folder name;
- lock_adapter: an OS lock per adapter name, held for the whole run;
- file_digest: the dataset's SHA-256, kept in the run record so --resume
  refuses a dataset whose contents changed;
- is_abandoned_run: a folder that only holds a run record and no finished
  checkpoint (Ctrl-C before the first step) does not block a new run;
- make_divergence_guard: a Trainer callback that stops at the first
  non-finite loss or LoRA weight, before that step is checkpointed.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from charlora.errors import CharloraError
from charlora.files import make_folder

# Bytes of UTF-8: the name becomes ".<name>.partial", ".<name>.lock" and
# "<model>-<name>" (with --merge) on file systems that allow 255.
MAX_LORA_NAME_BYTES = 100
LOCK_SUFFIX = ".lock"


def check_lora_name(loras_dir: Path, lora_name: str) -> None:
    """--lora_name must be one plain, printable folder name of reasonable length."""
    plain = (lora_name and lora_name not in {".", ".."} and Path(lora_name).name == lora_name
             and "\\" not in lora_name and lora_name.isprintable())
    if not plain:
        raise CharloraError(f"--lora_name must be a plain folder name inside {loras_dir}/, got {lora_name!r}")
    try:
        size = len(lora_name.encode("utf-8"))
    except UnicodeEncodeError:
        raise CharloraError(f"--lora_name {lora_name!r} is not valid text; use letters, digits, - and _") from None
    if size > MAX_LORA_NAME_BYTES:
        raise CharloraError(f"--lora_name is {size} bytes long; at most {MAX_LORA_NAME_BYTES} fit in the file "
                            "names made from it")


def try_lock(fd: int, msvcrt: Any = None, offset: int | None = None) -> None:
    """Take an exclusive lock on the open file `fd` without waiting, or raise
    BlockingIOError if another process holds it.  flock on POSIX; on Windows
    (where fcntl does not exist and text-generation-webui users often are)
    msvcrt's lock on the file's first byte, which also ends with the
    process.  `offset`: lock only that one byte (fcntl.lockf), so one file
    holds many locks (chat memory's sessions).  `msvcrt`: the module to use
    instead of the OS's (tests)."""
    import os

    if msvcrt is None and os.name != "nt":
        import fcntl

        if offset is None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
        return
    if msvcrt is None:
        import msvcrt
    os.lseek(fd, offset or 0, os.SEEK_SET)  # msvcrt locks bytes from the file position
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as exc:  # Windows reports a held lock as EACCES / EDEADLOCK
        raise BlockingIOError(str(exc)) from None


def unlock(fd: int, offset: int) -> None:
    """Let go of try_lock(fd, offset=offset)."""
    import os

    if os.name != "nt":
        import fcntl

        fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)
        return
    import msvcrt

    os.lseek(fd, offset, os.SEEK_SET)
    msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


class AdapterLock:
    """An exclusive OS lock (`try_lock`) on loras/.<name>.lock, released by
    `release()`, by garbage collection, or by the process ending, even a
    killed one.  The file exists only while a run holds it: it is removed
    before the lock is let go, and a run that locked a file just removed
    that way (it checks the inode) tries again, so two runs never both hold
    a lock.  On Windows an open file can't be removed, so it is closed
    first and then removed if no other run has opened it meanwhile."""

    def __init__(self, path: Path):
        import os

        self.path, self.fd = path, None
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try_lock(fd)
            except BlockingIOError:
                os.close(fd)
                raise
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # the holder removed this file as we locked it
        self.fd = fd

    def release(self) -> None:
        import os

        if self.fd is None:
            return
        if os.name == "nt":
            os.close(self.fd)
            try:
                self.path.unlink(missing_ok=True)
            except PermissionError:  # the next run has it open already; it is that run's now
                pass
        else:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
        self.fd = None

    def __del__(self) -> None:
        self.release()


def lock_adapter(loras_dir: Path, lora_name: str) -> AdapterLock:
    """Hold the lock for --lora_name for this run: a second run with the same
    name refuses at once instead of mixing its weights and checkpoints into
    the first one's folder."""
    check_lora_name(loras_dir, lora_name)
    path = loras_dir / f".{lora_name}{LOCK_SUFFIX}"
    make_folder(loras_dir)
    try:
        return AdapterLock(path)
    except BlockingIOError:
        raise CharloraError(f"another run is already training --lora_name {lora_name} (it holds {path}); "
                            "wait for it to finish or pick another name") from None
    except OSError as exc:
        raise CharloraError(f"cannot write to {loras_dir}: {exc.strerror or exc}") from None


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_abandoned_run(dest: Path) -> bool:
    """True for loras/<name> holding nothing but checkpoints/ without a
    finished checkpoint: a run stopped before its first save.  It has nothing
    to resume and nothing to protect, so a fresh run may reuse the folder."""
    from charlora.checkpoints import CHECKPOINTS, newest_checkpoint

    if not dest.is_dir():
        return False
    entries = [entry.name for entry in dest.iterdir()]
    return entries == [CHECKPOINTS] and newest_checkpoint(dest / CHECKPOINTS) is None


class Diverged(CharloraError):
    """Training produced a non-finite loss or weight."""


def make_divergence_guard(log=print):
    """A Trainer callback that raises Diverged at the first step whose loss
    or LoRA weights are not finite.

    It runs in on_step_end, before Trainer saves that step's checkpoint (put
    it last among the callbacks), so the newest checkpoint on disk is the last
    good one.  Checking the weights costs one reduction over the trainable
    tensors a step (a few MB for a LoRA): negligible next to the step itself.
    """
    import torch
    from transformers import TrainerCallback

    from charlora.checkpoints import newest_checkpoint

    class StopOnDivergence(TrainerCallback):
        def _fail(self, args, state, what: str) -> None:
            kept = newest_checkpoint(Path(args.output_dir))
            where = (f"the last good checkpoint, {kept}, is kept" if kept else "no checkpoint had been saved")
            raise Diverged(f"training diverged at step {state.global_step}: {what}; lower --learning_rate "
                           f"(now {args.learning_rate:g}) and rerun with --overwrite; {where}")

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if model is None:
                return
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if param.requires_grad and not bool(torch.isfinite(param).all()):
                        self._base_is_damaged(model)
                        self._fail(args, state, f"weight {name} is not finite (NaN or infinity)")

        def _base_is_damaged(self, model) -> None:
            # Only once something diverged (no cost otherwise): a NaN in the
            # frozen weights is the model files' fault, not the learning rate's.
            for name, param in model.named_parameters():
                if not param.requires_grad and not bool(torch.isfinite(param).all()):
                    raise Diverged(f"the base model's weight {name} is not finite (NaN or infinity): its weight "
                                   "files are damaged, and no --learning_rate can train on it")

        def on_log(self, args, state, control, logs=None, **kwargs):
            # The loss only: an infinite gradient norm is routine under fp16
            # loss scaling, which skips that step and lowers its scale.
            value = (logs or {}).get("loss")
            if isinstance(value, float) and not math.isfinite(value):
                self._fail(args, state, f"the loss is {value}")

    return StopOnDivergence()
