"""Keep the best epoch: score the held-out samples after every epoch and
keep (and checkpoint) the adapter weights of the best one, with early stopping.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from charlora.files import strict_json

SCORES = "held_out.json"
BEST_WEIGHTS = "best_adapter.safetensors"


def save_scores(folder: Path, history: list[tuple[int, float]], best: tuple[float, int, dict] | None) -> None:
    """The keeper's state into a checkpoint folder: its scores, and the best epoch's weights."""
    from safetensors.torch import save_file

    kept = {"best_loss": best[0], "best_step": best[1]} if best else {}
    (folder / SCORES).write_text(strict_json({"history": history, **kept}, indent=None))
    if best:
        save_file({k: v.contiguous() for k, v in best[2].items()}, folder / BEST_WEIGHTS)


def load_scores(folder: Path | None) -> tuple[list[tuple[int, float]], tuple[float, int, dict] | None]:
    """(history, best) as save_scores left them in a checkpoint; ([], None) for a fresh run."""
    from safetensors.torch import load_file

    if folder is None or not (folder / SCORES).is_file():
        return [], None
    saved = json.loads((folder / SCORES).read_text())
    history = [tuple(h) for h in saved["history"]]
    if saved.get("best_step") is None:
        return history, None
    return history, (saved["best_loss"], saved["best_step"], load_file(folder / BEST_WEIGHTS))


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
    from transformers import TrainerCallback

    from charlora.evaluate import pcw_reply_loss, reply_loss

    class KeepBestAdapter(TrainerCallback):
        def __init__(self):
            self.stopped_early = False
            # (optimizer step, held-out loss) per scored epoch; (loss, step, adapter weights) of the best
            self.history, self.best = load_scores(resume_from)

        def save_to(self, folder: Path) -> None:
            """Into a checkpoint (called by the checkpoint saver before it marks the checkpoint complete)."""
            save_scores(folder, self.history, self.best)

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
