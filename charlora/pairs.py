"""--pair_weight: the person's difference, learnt as a preference.

Next-token training on the character's lines teaches the adapter the play as
much as the person: most of what it learns (the idiom, where a line ends)
helps every speaker's lines, so the character's held-out lines gain barely
more than anyone's (docs/benchmarks.md, specificity).  Here every training
line of the character gets a *rival*: what another speaker said at that
point of the source (source.rival_lines), prompted exactly like the
character's line, under the character's `Name:`.  On top of the usual loss,
a DPO-style logistic loss (Rafailov et al. 2023) asks that the adapter's
gain over the base model be larger on the real line than on the rival:

    loss = -log sigmoid(beta * ((m_real - ref_real) - (m_rival - ref_rival)))

where m is the line's mean log-probability per text token under the model
being trained and ref the same under the base model (computed once, before
training, while the LoRA is still the identity).  Means per text token, end
of sequence left out, because that is exactly the per-line gain evaluate.py's
attribution AUC ranks lines by (charlora.metrics.gains): the objective trains
the score the metric reads, on training lines; whether it carries over to
held-out lines is measured, not assumed.

Each pair's loss is counted once per text token of the real line, so it
shares the usual loss's per-token normalization (and its gradient
accumulation) and --pair_weight reads as a weight per token, like
--others_weight.
"""
from __future__ import annotations

from typing import Any, Sequence

# beta scales the gain difference (nats per token) inside the sigmoid: at 5
# a gap of ~0.6 nats/token leaves a pair ~95% "won" and nearly without
# gradient, so the rival is pushed down only until the real line is clearly
# preferred, not without end.
PAIR_BETA = 5.0


def row_text_means(nll: Any, target: Any, rows: Any, n_rows: int, eos_id: int | None) -> tuple[Any, Any]:
    """(mean log-probability per text token, text token count) of each row,
    from the flat per-token NLLs of the kept (labelled) positions and the row
    each came from; end-of-sequence tokens left out."""
    import torch

    text = target != eos_id if eos_id is not None else torch.ones_like(target, dtype=torch.bool)
    sums = torch.zeros(n_rows, dtype=nll.dtype, device=nll.device).index_add(0, rows[text], -nll[text])
    counts = torch.zeros(n_rows, dtype=nll.dtype, device=nll.device).index_add(0, rows[text], torch.ones_like(nll[text]))
    return sums / counts.clamp(min=1), counts


def pair_loss(real: Any, rival: Any, ref_real: Any, ref_rival: Any, beta: float = PAIR_BETA) -> Any:
    """-log sigmoid(beta * (gain on the real line - gain on the rival)), per pair."""
    import torch.nn.functional as F

    return -F.logsigmoid(beta * ((real - ref_real) - (rival - ref_rival)))


def pair_term(nll: Any, target: Any, rows: Any, n_rows: int, pairs: Any, eos_id: int | None, weight: float) -> Any:
    """The summed pair loss of a batch, each pair counted once per text token
    of its real line and scaled by `weight`.  pairs: (P, 4) rows of [row of
    the real line, row of the rival, ref_real, ref_rival]."""
    means, counts = row_text_means(nll, target, rows, n_rows, eos_id)
    real, rival = pairs[:, 0].long(), pairs[:, 1].long()
    losses = pair_loss(means[real], means[rival], pairs[:, 2].to(means.dtype), pairs[:, 3].to(means.dtype))
    return weight * (losses * counts[real]).sum()


def reference_means(model: Any, tokenizer: Any, prompts: Sequence[str], replies: Sequence[str], cutoff_len: int) -> list[float]:
    """Each reply's mean log-probability per text token under `model` (the
    base: call before training moves the LoRA off the identity), on exactly
    the tokens training scores (evaluate.line_losses)."""
    from charlora.evaluate import line_losses

    lines = line_losses(model, tokenizer, [{"input": p, "output": r} for p, r in zip(prompts, replies)], cutoff_len)
    return [-x.text_nll / x.text_tokens if x.text_tokens else 0.0 for x in lines]


def collate_with_rivals(features: list[dict], collate: Any) -> dict:
    """Pad a batch with each feature's rival (if it has one) as an extra row
    of loss weight 0 (no next-token loss), and add the "pairs" tensor
    pair_term reads: which rows pair up, and their reference means."""
    import torch

    keys = [k for k in ("input_ids", "attention_mask", "labels") if k in features[0]]
    main = [{**{k: f[k] for k in keys}, "loss_weight": f.get("loss_weight", 1.0)} for f in features]
    extra, pairs = [], []
    for i, f in enumerate(features):
        if f.get("rival_input_ids"):
            pairs.append([i, len(features) + len(extra), *f["pair_ref"]])
            rival = {"input_ids": f["rival_input_ids"], "attention_mask": [1] * len(f["rival_input_ids"]),
                     "labels": f["rival_labels"], "loss_weight": 0.0}
            extra.append({k: rival[k] for k in keys + ["loss_weight"]})
    batch = collate(main + extra)
    batch["pairs"] = torch.tensor(pairs, dtype=torch.float32).reshape(-1, 4)
    return batch


def add_rivals(samples: list[dict], weights: list[float] | None, n_char: int, src: Any, held_out: bool,
               weight: float, log) -> tuple[list[dict], list[float] | None]:
    """The training samples with a "rival" key (the first n_char are the
    character's; others get None), and loss weights, for --pair_weight.
    Rivals come only from lines before the held-out tail."""
    from charlora.source import rival_lines

    if src is None:
        log("note: --pair_weight needs the source file beside the dataset; training without pairs")
        return samples, weights
    rivals = rival_lines(src, n_char, src.training_end(n_char, held_out)) + [None] * (len(samples) - n_char)
    if not any(rivals):
        log("note: no other speaker's line to pair the character's lines with; training without pairs")
        return samples, weights
    log(f"pairs: {sum(r is not None for r in rivals)} of the character's lines against what another speaker said "
        f"there, at weight {weight:g}")
    return [{**s, "rival": r} for s, r in zip(samples, rivals)], weights or [1.0] * len(samples)


def add_reference(data: Any, model: Any, tokenizer: Any, samples: Sequence[dict], cutoff_len: int) -> Any:
    """The encoded dataset with a "pair_ref" column: [ref_real, ref_rival],
    the base model's mean log-probabilities (reference_means), [0, 0] where a
    sample has no rival."""
    paired = [s for s in samples if s.get("rival")]
    refs = reference_means(model, tokenizer, [s["input"] for s in paired] * 2,
                           [s["output"] for s in paired] + [s["rival"] for s in paired], cutoff_len)
    it = iter(zip(refs[: len(paired)], refs[len(paired) :]))
    return data.add_column("pair_ref", [list(next(it)) if s.get("rival") else [0.0, 0.0] for s in samples])
