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


def line_losses(model: Any, tokenizer: Any, samples: Sequence[dict[str, str]], cutoff_len: int,
                batch_size: int = 8) -> list:
    """Each sample's reply NLL, text and end-of-sequence apart (metrics.LineLoss),
    on exactly reply_loss's tokens: mean_loss of the result is reply_loss."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    from charlora.metrics import LineLoss

    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
    examples = [encode_sample(tokenizer, s["input"], s["output"], cutoff_len) for s in samples]
    out = []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(model.device) for k, v in collate(examples[i : i + batch_size]).items()}
            labels = batch.pop("labels")[:, 1:]
            logits = model(**batch).logits.float()[:, :-1]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX,
                                                    reduction="none")
            for row_nll, row_labels in zip(nll.tolist(), labels.tolist()):
                kept = [(n, t) for n, t in zip(row_nll, row_labels) if t != IGNORE_INDEX]
                ends = bool(kept) and kept[-1][1] == tokenizer.eos_token_id
                text = kept[:-1] if ends else kept
                out.append(LineLoss(sum(n for n, _ in text), len(text), kept[-1][0] if ends else None))
    return out


@dataclass
class Generation:
    prompt: str
    reference: str
    reply: str
    ended_by_eos: bool
    speaks_for_other: bool


def greedy_replies(model: Any, tokenizer: Any, samples: Sequence[dict[str, str]], name: str, speakers: Iterable[str],
                   max_new_tokens: int = 80, batch_size: int = 8, ngram_block: int = 0) -> list[Generation]:
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
            from transformers import LogitsProcessorList

            from charlora.decoding import make_reply_ngram_block

            block = LogitsProcessorList([make_reply_ngram_block(ngram_block, enc["input_ids"].shape[1])] if ngram_block else [])
            with torch.inference_mode():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, logits_processor=block,
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
    repeated: int = 0
    """Replies in which a word 4-gram occurs twice."""
    copied: int | None = None
    """Replies sharing a word 8-gram with the adapter's training lines (None: unknown)."""
    specificity: float | None = None
    """The character's relative loss gain over the base minus the other speakers' (adapters only)."""
    text_specificity: float | None = None
    """specificity on text tokens alone (end-of-sequence left out), to see how much of it is the learned EOS."""
    attribution_auc: float | None = None
    """AUC of telling the character's lines from the others' by per-line gain over the base (adapters only)."""
    seed: int | None = None

    @classmethod
    def of(cls, label: str, character_loss: float, others_loss: float, gens: list[Generation],
           training_ngrams: set | None = None, **extra) -> "Report":
        from charlora.metrics import copies, repeats_ngram

        copied = None if training_ngrams is None else sum(copies(g.reply, training_ngrams) for g in gens)
        return cls(label, character_loss, others_loss, sum(g.ended_by_eos for g in gens),
                   sum(g.speaks_for_other for g in gens), len(gens), gens,
                   sum(g.ended_by_eos and not g.speaks_for_other for g in gens),
                   sum(repeats_ngram(g.reply) for g in gens), copied, **extra)

    def row(self) -> str:
        n = max(1, self.generated)
        extra = (f"{self.specificity:>+8.3f} {self.attribution_auc:>6.3f}" if self.specificity is not None
                 else f"{'':>8} {'':>6}")
        copied = f"{100 * self.copied / n:>5.0f}%" if self.copied is not None else f"{'?':>6}"
        return (f"{self.label:<14} {self.character_loss:>9.3f} {self.others_loss:>10.3f} "
                f"{self.clean_ends:>6}/{self.generated:<3} {self.ended_by_eos:>6}/{self.generated:<3}"
                f"{self.spoke_for_other:>6}/{self.generated:<3} {100 * self.repeated / n:>5.0f}% {copied} {extra}")


HEADER = (f"{'model':<14} {'char loss':>9} {'other loss':>10} {'clean ends':>10} {'EOS':>10} {'for other':>9} "
          f"{'rep4':>6} {'copy8':>6} {'specif.':>8} {'AUC':>6}")
