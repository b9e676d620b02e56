"""Replies that end where the character's line ends.

Training teaches an end-of-sequence token after every reply; a newline is the
fallback stop for base models or adapters that have not learned it yet.
"""
from __future__ import annotations

from typing import Any


def clean_reply(text: str) -> str:
    """The first line of generated text, without surrounding spaces."""
    return text.split("\n", 1)[0].strip()


def generate_reply(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 80) -> tuple[str, bool]:
    """Greedy reply to a `build_prompt` prompt -> (reply, ended_by_eos)."""
    import torch

    enc = tokenizer(prompt, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            stop_strings=["\n"],
            tokenizer=tokenizer,
        )
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    ended_by_eos = tokenizer.eos_token_id in new
    if ended_by_eos:
        new = new[: new.index(tokenizer.eos_token_id)]
    return clean_reply(tokenizer.decode(new, skip_special_tokens=True)), ended_by_eos
