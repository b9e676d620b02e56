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

The batch arrives right-padded (DataCollatorForSeq2Seq).  The context is
moved to a left-padded block, so that every row's context ends at the same
column and its reply follows at once; the rest goes into a right-padded
block.  Position ids are passed explicitly so rotary positions are the
unsplit sample's.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any

IGNORE = -100


def split_at_replies(input_ids: Any, attention_mask: Any, labels: Any, pad_id: int) -> dict:
    """The two passes' tensors for a right-padded batch.

    Row i is cut at c_i = (its first labelled position) - 1: the token at c_i
    predicts the reply's first token, so it must be in the trained pass.  A
    row with no label at all is cut at 0 (all of it in the second pass).
    Returns context_ids / context_mask / context_positions (B, Lc, left-padded)
    and ids / mask / positions / labels (B, Lr, right-padded), where mask is
    the (B, Lc + Lr) mask of the cached context followed by the rest."""
    import torch

    n_rows = input_ids.shape[0]
    lengths = attention_mask.sum(1).tolist()
    labelled = labels != IGNORE
    cuts = [max(0, int(labelled[i].nonzero()[0]) - 1) if labelled[i].any() else 0 for i in range(n_rows)]
    lc = max(cuts)
    lr = max(n - c for n, c in zip(lengths, cuts))
    ctx = torch.full((n_rows, lc), pad_id, dtype=input_ids.dtype)
    ctx_mask = torch.zeros((n_rows, lc), dtype=attention_mask.dtype)
    ctx_pos = torch.zeros((n_rows, lc), dtype=torch.long)
    ids = torch.full((n_rows, lr), pad_id, dtype=input_ids.dtype)
    mask = torch.zeros((n_rows, lr), dtype=attention_mask.dtype)
    tail_labels = torch.full((n_rows, lr), IGNORE, dtype=labels.dtype)
    for i, (n, c) in enumerate(zip(lengths, cuts)):
        ctx[i, lc - c :], ctx_mask[i, lc - c :] = input_ids[i, :c], 1
        ctx_pos[i, lc - c :] = torch.arange(c)
        ids[i, : n - c], mask[i, : n - c], tail_labels[i, : n - c] = input_ids[i, c:n], 1, labels[i, c:n]
    positions = torch.tensor(cuts)[:, None] + torch.arange(lr)[None, :]
    return {"context_ids": ctx, "context_mask": ctx_mask, "context_positions": ctx_pos, "ids": ids,
            "mask": torch.cat([ctx_mask, mask], dim=1), "positions": positions, "labels": tail_labels}


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

    if not parts["context_ids"].shape[1]:
        return None
    cache = DynamicCache(config=model.config)
    decoder = model.get_base_model().get_decoder() if hasattr(model, "get_base_model") else model.get_decoder()
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
