"""Medium-term memory: fold turns that leave the short-term window into a
rolling summary (previous summary + evicted turns -> new summary).

Two ways, and the summary records which one made it:
- "model": the chat model itself, through its chat template with any adapter
  switched off, when the tokenizer has a template.  Its text is kept only if
  it is grounded (most of its content words occur in what it summarized) and
  fits the budget; otherwise the extractive way is used for that fold.
- "extractive": whole sentences of the turns, as `Speaker: sentence`, ranked
  by how many content words, names and numbers they carry (older ones a
  little lower), the best kept in their order within the budget.  Works with
  any model, tiny ones included, and never invents anything.
"""
from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Sequence

from charlora.dialogue import Line
from charlora.memory.text import content_words, sentences

SEPARATOR = " / "  # between extractive items; a rolling summary is split on it again
# A summary sentence is kept if at least this share of its content words occur
# in the text it summarizes: a 135M model otherwise adds names from nowhere.
GROUNDED = 0.6
_NAMEISH = re.compile(r"(?<!^)(?<![.!?] )\b[A-Z][a-z]+|\d+")


def _score(item: str, age: int) -> float:
    body = item.partition(": ")[2] or item
    return (len(set(content_words(body))) + 2 * len(_NAMEISH.findall(body))) * (0.97 ** age)


def extractive_summary(previous: str, evicted: Sequence[Line], budget: int,
                       count_tokens: Callable[[str], int]) -> str:
    """The best sentences of `previous` (split on SEPARATOR) and `evicted`, in
    their order, within `budget` tokens."""
    # A model-made summary has no separators: its sentences become items too.
    items = [s for part in previous.split(SEPARATOR) for s in sentences(part)] if previous else []
    for line in evicted:
        for sentence in sentences(line.text):
            items.append(f"{line.speaker}: {sentence}" if line.speaker else sentence)
    items = list(dict.fromkeys(items))  # a repeated line is kept once
    n = len(items)
    ranked = sorted(range(n), key=lambda i: -_score(items[i], n - 1 - i))
    keep: list[int] = []
    for i in ranked:
        trial = sorted(keep + [i])
        if count_tokens(SEPARATOR.join(items[j] for j in trial)) <= budget:
            keep = trial
    return SEPARATOR.join(items[j] for j in keep)


def grounded(summary: str, source: str) -> bool:
    said = set(content_words(source))
    new = content_words(summary)
    return bool(new) and sum(w in said for w in new) / len(new) >= GROUNDED


class Summarizer:
    """`mode`: "auto" (the model where it can, else extractive), "model" (same,
    never skipping the model), or "extractive"."""

    def __init__(self, mode: str, model: Any = None, tokenizer: Any = None,
                 count_tokens: Callable[[str], int] = len):
        self.mode, self.model, self.tokenizer, self.count_tokens = mode, model, tokenizer, count_tokens

    def can_use_model(self) -> bool:
        return (self.mode in ("auto", "model") and self.model is not None
                and getattr(self.tokenizer, "chat_template", None) is not None)

    def fold(self, previous: str, evicted: Sequence[Line], budget: int) -> tuple[str, str]:
        """(new summary, "model" or "extractive")."""
        if self.can_use_model():
            text = self.model_summary(previous, evicted, budget)
            if text is not None:
                return text, "model"
        return extractive_summary(previous, evicted, budget, self.count_tokens), "extractive"

    def model_summary(self, previous: str, evicted: Sequence[Line], budget: int) -> str | None:
        from charlora.prompt import format_line
        from charlora.reply import Sampling, generate_reply

        conversation = "\n".join(format_line(l) for l in evicted)
        ask = (f"Summary so far: {previous or '(none)'}\n\nNew lines of the conversation:\n{conversation}\n\n"
               "Rewrite the summary so that it also covers the new lines. Keep names, places, numbers and what "
               "each person said about themselves. One short paragraph, third person.")
        prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": ask}], tokenize=False,
                                                    add_generation_prompt=True)
        # The character's adapter would answer in character; summaries want the base model.
        off = getattr(self.model, "disable_adapter", None)
        with off() if off is not None else contextlib.nullcontext():
            out = generate_reply(self.model, self.tokenizer, prompt, "", [],
                                 Sampling(max_new_tokens=budget, repetition_penalty=1.1), stop=False,
                                 add_special_tokens=False)  # the chat template has its own special tokens
        text = " ".join(out.text.split())
        kept = []
        for sentence in sentences(text):  # whole, grounded sentences within the budget
            if not grounded(sentence, previous + " " + conversation):
                continue
            if self.count_tokens(" ".join(kept + [sentence])) > budget:
                break
            kept.append(sentence)
        return " ".join(kept) if kept else None
