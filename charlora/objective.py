"""The training objective: cross-entropy on reply tokens only (projected only
where a loss is taken), optionally weighted per sample, with unlikelihood for
lines the character did not say, wired into transformers' Trainer.
"""
from __future__ import annotations

from typing import Any


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
