"""Left padding moves logits: by ~1e-5 in fp32, by ~0.1-1 in bf16.

The premise of what docs/replies/README.md says about batched greedy replies
(evaluate.py's left-padded batches vs chat's single prompt): a batched reply
equals the one-at-a-time reply unless padding noise reaches the gap between
the top two logits somewhere along it.  In fp32 that noise is four orders
below the gaps seen on SmolLM2 (bench/padding_numerics.py), in bf16 it is not.
"""
from __future__ import annotations

import copy

import pytest

from conftest import chat_history


def padding_noise(model, tokenizer, prompts: list[str]) -> float:
    """Largest |logit difference| at each prompt's last position: alone vs in a left-padded batch."""
    import torch

    tok = copy.copy(tokenizer)
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    with torch.inference_mode():
        batch = tok(prompts, return_tensors="pt", padding=True)
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # as generate() sets them
        batched = model(**batch, position_ids=positions).logits[:, -1].float()
        return max((model(**tok(p, return_tensors="pt")).logits[0, -1].float() - batched[i]).abs().max().item()
                   for i, p in enumerate(prompts))


@pytest.fixture(scope="module")
def prompts():
    from charlora.prompt import build_prompt

    lines = chat_history()
    # prompts of different lengths, so all but the longest are padded
    return [build_prompt(lines[k:], "Bob") for k in range(4)]


def test_fp32_padding_noise_is_far_below_a_greedy_margin(tiny_llama, tiny_tokenizers, prompts):
    noise = padding_noise(tiny_llama, tiny_tokenizers["llama-like"], prompts)
    assert noise < 1e-4, noise


def test_bf16_padding_noise_is_large_enough_to_flip_close_tokens(tiny_llama, tiny_tokenizers, prompts):
    import torch

    model = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    noise = padding_noise(model, tiny_tokenizers["llama-like"], prompts)
    assert noise > 1e-3, noise
