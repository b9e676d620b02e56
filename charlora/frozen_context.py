"""--frozen_context: the context of a sample is run once, forward only, and
only the reply is trained through.

On play data about 85% of a sample's tokens are context (the lines before the
reply), and the default step runs forward AND backward through all of them.
Here a step runs in two passes over the same batch:

1. the context (every token before the one that predicts the reply's first
   token) under torch.no_grad, with the adapter on, into a key/value cache;
2. the rest (that last context token, the reply and its EOS) with gradients,
   attending to the cached context.

The losses are the default step's to rounding (the same attention over the
same keys and values; a test checks it); the gradient differs in one way: it
does not flow back into how the adapter changed the context's keys and values.
The adapter still learns from every reply token through every layer.  What is
saved is the backward pass over the context and the memory its activations
would hold.

The batch arrives right-padded (DataCollatorForSeq2Seq) and grouped by
length, so its rows' contexts end at nearby columns.  The cut is one column
for the whole batch: the earliest point any row's reply needs.  Everything
left of it is context in every row, with no padding (every row is at least
that long), and a row whose context runs past the cut trains through that
part as the default step does.  One column keeps both blocks as dense as the
batch itself (a per-row cut would left-pad the contexts: 20% more tokens
computed on play data, and a slower step).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from charlora.tokens import IGNORE_INDEX


def context_cut(labels: Any) -> int:
    """The batch's cut column: the smallest (first labelled position - 1) over
    rows that have a label.  The token at that column predicts a reply's
    first token, so it must be in the trained pass.  0 when nothing is
    labelled."""
    labelled = labels != IGNORE_INDEX
    firsts = [int(row.nonzero()[0]) for row in labelled if row.any()]
    return max(0, min(firsts) - 1) if firsts else 0


def split_at_replies(input_ids: Any, attention_mask: Any, labels: Any) -> dict:
    """The two passes' tensors: the columns left of the cut (the context
    pass) and the rest, whose mask spans both (the cached context, then its
    own), whose positions continue from the cut, and which carries the labels."""
    import torch

    cut = context_cut(labels)
    return {"context_ids": input_ids[:, :cut], "context_mask": attention_mask[:, :cut],
            "context_positions": torch.arange(cut, device=input_ids.device).expand(input_ids.shape[0], cut),
            "ids": input_ids[:, cut:], "mask": attention_mask,
            "positions": torch.arange(cut, input_ids.shape[1], device=input_ids.device).expand(
                input_ids.shape[0], input_ids.shape[1] - cut),
            "labels": labels[:, cut:]}


@contextmanager
def neftune_length(model: Any, length: int, full_length: int):
    """NEFTune scales its noise by 1/sqrt(sequence length x width); a pass over
    part of the sequence would get more noise per token than the unsplit
    step.  Scale alpha by sqrt(part / whole) for the pass, so each token gets
    the noise it would have had."""
    emb = model.get_input_embeddings()
    alpha = getattr(emb, "neftune_noise_alpha", None)
    if alpha is not None:
        emb.neftune_noise_alpha = alpha * (length / full_length) ** 0.5
    try:
        yield
    finally:
        if alpha is not None:
            emb.neftune_noise_alpha = alpha


def cache_context(model: Any, parts: dict, full_length: int) -> Any:
    """Pass 1: the context, forward only, into a key/value cache (None when no
    row has context).  The decoder alone runs: no output head is needed."""
    import torch
    from transformers import DynamicCache

    from charlora.models import without_peft

    if not parts["context_ids"].shape[1]:
        return None
    cache = DynamicCache(config=model.config)
    decoder = without_peft(model).get_decoder()
    with torch.no_grad(), neftune_length(model, parts["context_ids"].shape[1], full_length):
        decoder(input_ids=parts["context_ids"], attention_mask=parts["context_mask"],
                position_ids=parts["context_positions"], past_key_values=cache, use_cache=True)
    return cache


def trained_pass(model: Any, parts: dict, cache: Any, full_length: int) -> Any:
    """Pass 2: the last context token, the reply and its EOS, with gradients,
    attending to the cached context."""
    with neftune_length(model, parts["ids"].shape[1], full_length):
        return model(input_ids=parts["ids"], attention_mask=parts["mask"], position_ids=parts["positions"],
                     past_key_values=cache, use_cache=cache is not None)
