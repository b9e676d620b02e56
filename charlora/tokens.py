"""Stage 3: samples -> token ids, labels and attention masks.

The loss covers only the character's reply plus one end-of-sequence token, so
the model learns what the character says *and* where the line ends; context
tokens get the label -100 that PyTorch's cross-entropy ignores.
"""
from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100

# When a reply alone would fill cutoff_len, keep at least this many prompt
# tokens (always including the closing `Name:`) so the model still sees whose
# line it is writing.
MIN_PROMPT_TOKENS = 16


def encode_sample(tokenizer: Any, prompt: str, reply: str, cutoff_len: int) -> dict[str, list[int]]:
    """Token ids for prompt + reply + EOS, cut to `cutoff_len` tokens.

    Prompt and reply are tokenized separately: at chat time the prompt is
    tokenized alone and the model continues it, so training must see the same
    token boundary at `Name:`.  Truncation drops the *start* of the context
    (keeping a leading BOS, if the tokenizer adds one) and keeps the whole
    reply; only a reply longer than cutoff_len - MIN_PROMPT_TOKENS is cut, at
    its end.
    """
    if cutoff_len < 2:
        raise ValueError("cutoff_len must be at least 2")
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    lead, body = split_bos(tokenizer, prompt_ids)
    lead, body, reply_ids = fit_to_cutoff(lead, body, encode_reply(tokenizer, reply), cutoff_len)
    prompt_ids = lead + body
    input_ids = prompt_ids + reply_ids
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + reply_ids,
    }


def encode_reply(tokenizer: Any, reply: str) -> list[int]:
    """The reply's ids, tokenized alone (no BOS), then EOS."""
    return list(tokenizer(reply, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]


def split_bos(tokenizer: Any, prompt_ids: list[int]) -> tuple[list[int], list[int]]:
    """(the BOS the tokenizer put first, or [], the rest of the prompt)."""
    bos = tokenizer.bos_token_id
    lead = prompt_ids[:1] if bos is not None and prompt_ids[:1] == [bos] else []
    return lead, prompt_ids[len(lead) :]


def fit_to_cutoff(lead: list[int], body: list[int], reply_ids: list[int],
                  cutoff_len: int) -> tuple[list[int], list[int], list[int]]:
    """(lead, body, reply) cut so that together they hold at most cutoff_len
    tokens: the body loses its start, the reply only its end and only when it
    alone would leave fewer than MIN_PROMPT_TOKENS for the prompt."""
    min_prompt = min(len(lead) + len(body), MIN_PROMPT_TOKENS, cutoff_len - 1)
    reply_ids = reply_ids[: cutoff_len - min_prompt]
    body_budget = cutoff_len - len(reply_ids) - len(lead)
    if body_budget <= 0:  # tiny cutoff: not even room for BOS and a prompt token
        lead, body_budget = [], cutoff_len - len(reply_ids)
    return lead, body[max(0, len(body) - body_budget) :], reply_ids


def token_lengths(tokenizer: Any, samples: list[dict[str, str]]) -> list[tuple[int, int]]:
    """(prompt tokens, reply tokens with EOS) of each sample before any cut,
    tokenized as encode_sample does: what the data report counts."""
    prompts = tokenizer([s["input"] for s in samples])["input_ids"]
    replies = tokenizer([s["output"] for s in samples], add_special_tokens=False)["input_ids"]
    return [(len(p), len(r) + 1) for p, r in zip(prompts, replies)]
