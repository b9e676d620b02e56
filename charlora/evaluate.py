"""Does the adapter sound like the character?  Metrics on held-out dialogue.

- loss per reply token (reply + EOS, context masked): exactly the training
  objective, on lines the adapter never saw;
- the same loss on other speakers' lines, so an adapter that merely learned
  the text's style (helping everyone equally) is told apart from one that
  learned the character;
- greedy replies: the share that end by end-of-sequence within the budget,
  and the share that go on to write another speaker's `Name:` line.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from charlora.dialogue import Line, parse_line
from charlora.prompt import build_prompt
from charlora.samples import context_window
from charlora.tokens import IGNORE_INDEX, encode_sample


def other_speaker_samples(lines: Sequence[Line], name: str, rounds: int) -> list[dict[str, str]]:
    """Samples for every line *not* by `name`, each prompted with its own speaker."""
    out = []
    for i, line in enumerate(lines):
        if line.speaker is not None and line.speaker != name:
            out.append({"output": line.text, "input": build_prompt(context_window(lines, i, rounds), line.speaker)})
    return out


def speaks_for_other(text: str, name: str, speakers: Iterable[str]) -> bool:
    """True if generated text contains a line by someone other than `name`:
    a later line that parses as another speaker's, or a known speaker's
    `Other:` inside the reply."""
    for later in text.split("\n")[1:]:
        line = parse_line(later)
        if line is not None and line.speaker is not None and line.speaker != name:
            return True
    others = [re.escape(s) for s in speakers if s != name]
    return bool(others) and re.search(r"(?:^|\W)(?:%s)\s*[:\uff1a]" % "|".join(others), text) is not None


def reply_loss(model: Any, tokenizer: Any, samples: Sequence[dict[str, str]], cutoff_len: int, batch_size: int = 8) -> float:
    """Mean cross-entropy per reply token (EOS included), summed over all
    tokens before dividing so long replies weigh by their length."""
    from transformers import DataCollatorForSeq2Seq

    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
    examples = [encode_sample(tokenizer, s["input"], s["output"], cutoff_len) for s in samples]
    return _mean_label_loss(model, (collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)))


def pcw_reply_loss(model: Any, tokenizer: Any, samples: Sequence[dict[str, str]], cutoff_len: int, windows: int,
                   recent: int = 2, window_len: int | None = None, batch_size: int = 8) -> float:
    """reply_loss with each sample's older context in `windows` Parallel
    Context Windows (pcw.pcw_sample: the last `recent` lines and `Name:` are
    the task, each window at most `window_len` tokens).  windows=1 with room
    for everything is reply_loss exactly."""
    from charlora.pcw import check_attention, collate_pcw, pcw_sample

    check_attention(model)
    dtype = model.get_input_embeddings().weight.dtype  # the 4D mask must be in the attention's dtype
    examples = [pcw_sample(tokenizer, s["input"], s["output"], cutoff_len, windows, recent, window_len) for s in samples]
    return _mean_label_loss(model, (collate_pcw(examples[i : i + batch_size], tokenizer.pad_token_id, "right", dtype)
                                    for i in range(0, len(examples), batch_size)))


def _mean_label_loss(model: Any, batches: Iterable[dict]) -> float:
    """Summed cross-entropy of every labelled token / their count, over batches for model(**batch)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for batch in batches:
            batch = {k: v.to(model.device) for k, v in batch.items()}
            labels = batch.pop("labels")[:, 1:]
            logits = model(**batch).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum")
            total += nll.item()
            count += int((labels != IGNORE_INDEX).sum())
    return total / count if count else math.nan


@dataclass
class Generation:
    prompt: str
    reference: str
    reply: str
    ended_by_eos: bool
    speaks_for_other: bool


def greedy_replies(model: Any, tokenizer: Any, samples: Sequence[dict[str, str]], name: str, speakers: Iterable[str],
                   max_new_tokens: int = 80, batch_size: int = 8) -> list[Generation]:
    """Greedy continuations with no stop but EOS, to see what the model does
    on its own (chat adds newline and `Name:` stops on top).

    Prompts go in left-padded batches: on CPU a batch of 8 costs little more
    per step than one prompt, since each step is bound by reading the weights.
    """
    import torch

    speakers = list(speakers)
    out = []
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            enc = tokenizer([s["input"] for s in chunk], return_tensors="pt", padding=True).to(model.device)
            with torch.inference_mode():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            for s, row in zip(chunk, ids[:, enc["input_ids"].shape[1] :].tolist()):
                eos = tokenizer.eos_token_id in row
                if eos:
                    row = row[: row.index(tokenizer.eos_token_id)]
                text = tokenizer.decode(row, skip_special_tokens=True)
                out.append(Generation(s["input"], s["output"], text.strip(), eos, speaks_for_other(text, name, speakers)))
    finally:
        tokenizer.padding_side = side
    return out


@dataclass
class Report:
    label: str
    character_loss: float
    others_loss: float
    ended_by_eos: int
    spoke_for_other: int
    generated: int
    examples: list[Generation] = field(default_factory=list)
    # ended by EOS *and* never wrote another speaker's line: a usable reply
    clean_ends: int = 0

    @classmethod
    def of(cls, label: str, character_loss: float, others_loss: float, gens: list[Generation]) -> "Report":
        return cls(label, character_loss, others_loss, sum(g.ended_by_eos for g in gens),
                   sum(g.speaks_for_other for g in gens), len(gens), gens,
                   sum(g.ended_by_eos and not g.speaks_for_other for g in gens))

    def row(self) -> str:
        return (f"{self.label:<10} {self.character_loss:>10.3f} {self.others_loss:>11.3f} "
                f"{self.ended_by_eos:>8}/{self.generated:<3}{self.spoke_for_other:>13}/{self.generated:<3}"
                f"{self.clean_ends:>10}/{self.generated:<3}")


HEADER = (f"{'model':<10} {'char loss':>10} {'other loss':>11} {'ends by EOS':>12} {'speaks for other':>16} "
          f"{'clean ends':>13}")
