"""The training objective: cross-entropy on reply tokens only (projected only
where a loss is taken), optionally weighted per sample, with unlikelihood for
lines the character did not say and a KL term that keeps other speakers'
lines at the base model's predictions, wired into transformers' Trainer,
whose sample order per epoch comes from the seed and the epoch alone
(epoch_seeded), so a resumed run trains on the batches an uninterrupted one would.
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

    def __init__(self, model: Any, eos_id: int | None = None, pair_weight: float = 0.0):
        from charlora.models import without_peft
        from charlora.tokens import IGNORE_INDEX

        self.ignore = IGNORE_INDEX
        self.keep = None
        self.eos_id, self.pair_weight, self.pairs = eos_id, pair_weight, None
        self.preserve, self.base_logp = None, None
        head = without_peft(model).get_output_embeddings()
        self.handle = head.register_forward_pre_hook(self._select)

    def _select(self, module, args):
        if self.keep is None:
            return None  # generation / evaluation outside training: untouched
        return (args[0][:, :-1][self.keep].unsqueeze(0), *args[1:])

    def arm(self, labels, weights=None, pairs=None, preserve=None) -> None:
        self.keep = labels[:, 1:] != self.ignore
        self.pairs = pairs  # --pair_weight: which rows pair up (charlora.pairs.collate_with_rivals)
        # one loss weight per kept token: its sample's (--others_weight)
        self.weights = None if weights is None else weights[:, None].expand_as(self.keep)[self.keep]
        # --preserve_weight: which kept tokens belong to rows kept at the base's predictions
        self.preserve = (None if preserve is None or not preserve.any()
                         else preserve.bool()[:, None].expand_as(self.keep)[self.keep])
        self.base_logp = None

    def base_log_probs(self, model, inputs, preserve) -> None:
        """The base model's next-token log-probabilities at the kept tokens of
        the preserve rows, in the order loss() meets them: one no-gradient
        forward of just those rows with the adapter off and in eval mode, so
        neither NEFTune's noise nor dropout reaches the reference."""
        import torch

        rows = preserve.bool().nonzero()[:, 0]
        keep, was_training = self.keep, model.training
        self.keep = keep[rows]
        model.eval()
        try:
            with torch.no_grad(), model.disable_adapter():
                args = {k: inputs[k][rows] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
                self.base_logp = torch.log_softmax(model(**args).logits[0].float(), dim=-1)
        finally:
            self.keep = keep
            model.train(was_training)

    def loss(self, outputs, labels, num_items_in_batch=None):
        """Trainer's compute_loss_func: sum of (weighted) token losses / the
        (weighted) token count of the whole accumulated batch, which
        weighted_items() gives the Trainer, so gradient accumulation weighs
        every reply token by its weight alone."""
        import torch
        import torch.nn.functional as F

        target = labels[:, 1:][self.keep]
        keep, self.keep = self.keep, None
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
            term = torch.where(w < 0, unlikely, nll)
            if self.preserve is not None:
                term = term.masked_scatter(self.preserve, kl_to_base(outputs.logits[0][self.preserve], self.base_logp))
                self.preserve, self.base_logp = None, None
            total = (term * w.abs()).sum()
            count = w.abs().sum()
            if self.pairs is not None and len(self.pairs):
                from charlora.pairs import pair_term

                rows = keep.nonzero()[:, 0]
                total = total + pair_term(nll, target, rows, keep.shape[0], self.pairs.to(nll.device), self.eos_id,
                                          self.pair_weight)
        return total / (num_items_in_batch if num_items_in_batch is not None else max(1, count))


def kl_to_base(logits, base_logp):
    """Per position, KL(base || adapter) = sum_v p_base(v) (log p_base(v) -
    log p_adapter(v)): the forward KL of distillation, which is 0 exactly
    where the adapter predicts what the base does and weighs most the
    tokens the base found likely."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return (base_logp.exp() * (base_logp - logp)).sum(-1)


def weighted_items(batches: list[dict]):
    """Sum of loss weights over every labelled (shifted) token of an
    accumulated batch: the weighted counterpart of Trainer's token count."""
    return sum(((b["labels"][:, 1:] != -100) * b["loss_weight"].abs()[:, None]).sum() for b in batches)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's sample order: a hash of (seed, epoch), so that
    seed 1's first epoch is not seed 0's second."""
    import numpy as np

    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def epoch_seeded(sampler: Any, seed: int) -> Any:
    """transformers' length-grouped sampler, its order drawn from
    epoch_seed(seed, epoch) instead of the global RNG.

    Drawn from the global RNG, an epoch's order depended on every dropout and
    NEFTune draw before it.  A run resumed mid-epoch restores that RNG only
    after its first batch, so it drew the resumed epoch's order from another
    state: the rest of that epoch saw other batches, and the adapter came out
    up to 0.18 away from the uninterrupted run's (tests/test_resume.py).
    The Trainer below calls set_epoch before each epoch (_run_epoch), skipped
    batches or not, in one process or several."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    if type(sampler) is not LengthGroupedSampler:
        return sampler

    class EpochSeededSampler(LengthGroupedSampler):
        def set_epoch(self, epoch: int) -> None:
            self.generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))

    seeded = EpochSeededSampler(sampler.batch_size, lengths=sampler.lengths)
    seeded.set_epoch(0)
    return seeded


def make_trainer_class():
    from transformers import Trainer

    class ReplyOnlyTrainer(Trainer):
        """Trainer whose loss projects only reply positions (see ReplyOnlyHead)."""

        def __init__(self, *args, reply_head: ReplyOnlyHead, frozen_context: bool = False, **kwargs):
            super().__init__(*args, compute_loss_func=reply_head.loss, **kwargs)
            self.reply_head, self.frozen_context = reply_head, frozen_context

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.frozen_context:
                return self.frozen_context_loss(model, inputs, return_outputs, num_items_in_batch)
            preserve = inputs.pop("preserve", None)
            self.reply_head.arm(inputs["labels"], inputs.pop("loss_weight", None), inputs.pop("pairs", None), preserve)
            if self.reply_head.preserve is not None:
                self.reply_head.base_log_probs(self.accelerator.unwrap_model(model), inputs, preserve)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def frozen_context_loss(self, model, inputs, return_outputs, num_items_in_batch):
            """--frozen_context (charlora.frozen_context): the context forward
            only into a cache, then the reply with gradients; the same loss."""
            from charlora import frozen_context as fc

            full = inputs["input_ids"].shape[1]
            parts = fc.split_at_replies(inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
            cache = fc.cache_context(self.accelerator.unwrap_model(model), parts, full)
            self.reply_head.arm(parts["labels"], inputs.get("loss_weight"))
            outputs = fc.trained_pass(model, parts, cache, full)
            loss = self.reply_head.loss(outputs, parts["labels"], num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss scales its own
            return (loss, outputs) if return_outputs else loss

        def _get_train_sampler(self, train_dataset=None):
            self.epoch_sampler = epoch_seeded(super()._get_train_sampler(train_dataset), self.args.seed)
            return self.epoch_sampler

        def _run_epoch(self, *args, epoch, **kwargs):
            # accelerate's set_epoch misses the sampler in one case: a multi-process
            # run resumed mid-epoch, whose skipping loader wraps it one level deeper
            # (SkipBatchSampler -> BatchSamplerShard -> BatchSampler); that epoch then
            # took epoch 0's order (tests/test_distributed.py).  transformers is pinned.
            if hasattr(getattr(self, "epoch_sampler", None), "set_epoch"):
                self.epoch_sampler.set_epoch(epoch)
            return super()._run_epoch(*args, epoch=epoch, **kwargs)

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            batches, items = super().get_batch_samples(epoch_iterator, num_batches, device)
            if items is not None and batches and "loss_weight" in batches[0]:
                items = weighted_items(batches).to(device)
                if self.args.world_size > 1:
                    items = self.accelerator.gather(items).sum()
            return batches, items

    return ReplyOnlyTrainer
