"""Does the adapter sound like the character?  Metrics on held-out dialogue.

- loss per reply token (reply + EOS, context masked): exactly the training
  objective, on lines the adapter never saw;
- the same loss on other speakers' lines, so an adapter that merely learned
  the text's style (helping everyone equally) is told apart from one that
  learned the character;
- greedy replies (charlora.reply, as chat makes them): the share that end by
  end-of-sequence within the budget, and the share that go on to write
  another speaker's `Name:` line.

`evaluate(cfg)` is evaluate.py: the loader and the reply generator are the
ones chat uses (adapter.load_with_adapters, reply.generate_replies).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from charlora.config import EvalConfig
from charlora.dialogue import Line
from charlora.pcw import PCW_RECENT
from charlora.prompt import build_prompt
from charlora.reply import Sampling, generate_replies, speaks_for_other
from charlora.samples import context_window
from charlora.tokens import IGNORE_INDEX, encode_sample


def other_speaker_samples(lines: Sequence[Line], name: str, rounds: int) -> list[dict[str, str]]:
    """Samples for every line *not* by `name`, each prompted with its own speaker."""
    out = []
    for i, line in enumerate(lines):
        if line.speaker is not None and line.speaker != name:
            out.append({"output": line.text, "input": build_prompt(context_window(lines, i, rounds), line.speaker)})
    return out


def reply_loss(model: Any, tokenizer: Any, samples: Sequence[dict[str, str]], cutoff_len: int, batch_size: int = 8) -> float:
    """Mean cross-entropy per reply token (EOS included), summed over all
    tokens before dividing so long replies weigh by their length."""
    from transformers import DataCollatorForSeq2Seq

    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")
    examples = [encode_sample(tokenizer, s["input"], s["output"], cutoff_len) for s in samples]
    return _mean_label_loss(model, (collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)))


def pcw_reply_loss(model: Any, tokenizer: Any, samples: Sequence[dict[str, str]], cutoff_len: int, windows: int,
                   recent: int = PCW_RECENT, window_len: int | None = None, batch_size: int = 8) -> float:
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
    """What chat would say: the reply cut by charlora.reply's stop rules."""
    ended_by_eos: bool
    """The model wrote EOS within the budget, on its own (no stop rule helped)."""
    speaks_for_other: bool
    """The continuation goes on to a line by someone else (reply.other_speaker_at)."""
    text: str = ""
    """The whole continuation before EOS, stops not applied."""


def greedy_replies(model: Any, tokenizer: Any, samples: Sequence[dict[str, str]], name: str, speakers: Iterable[str],
                   max_new_tokens: int = Sampling.max_new_tokens, batch_size: int = 8,
                   sampling: Sampling | None = None) -> list[Generation]:
    """charlora.reply's replies (greedy unless `sampling` says otherwise), each
    generated on to EOS or the budget with no stop rule, to see what the
    model does on its own; `reply` is still what chat would say."""
    speakers = list(speakers)
    sampling = sampling or Sampling(max_new_tokens=max_new_tokens)
    model.eval()
    got = generate_replies(model, tokenizer, [s["input"] for s in samples], name, speakers, sampling, stop=False,
                           batch_size=batch_size)
    return [Generation(s["input"], s["output"], g.reply, g.eos, speaks_for_other(g.text, name, speakers), g.text)
            for s, g in zip(samples, got)]


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


def evaluate(cfg: EvalConfig, log: Callable[[str], None] = print) -> list[Report]:
    """evaluate.py: a Report for the base model and, with an adapter, one for it."""
    from charlora.adapter import load_with_adapters
    from charlora.dialogue import read_dialogue_file
    from charlora.errors import CharloraError
    from charlora.samples import build_samples, missing_speaker_message, speaker_counts

    lines, _ = read_dialogue_file(cfg.txtfilename)
    counts = speaker_counts(lines)
    samples = build_samples(lines, cfg.name, cfg.rounds)
    if not samples:
        raise CharloraError(missing_speaker_message(cfg.name, counts, cfg.txtfilename))
    others = other_speaker_samples(lines, cfg.name, cfg.rounds)[: cfg.others]
    model, tokenizer, _ = load_with_adapters(cfg, [cfg.lora_name] if cfg.lora_name else [], None, log)
    reports = []
    for label in ["base", "adapter"] if cfg.lora_name else ["base"]:
        with model.disable_adapter() if label == "base" and cfg.lora_name else contextlib.nullcontext():
            char = reply_loss(model, tokenizer, samples, cfg.cutoff_len)
            other = reply_loss(model, tokenizer, others, cfg.cutoff_len) if others else float("nan")
            gens = greedy_replies(model, tokenizer, samples[: cfg.generate], cfg.name, counts,
                                  batch_size=cfg.batch_size, sampling=cfg.sampling)
        reports.append(Report.of(label, char, other, gens))
    return reports


def print_reports(reports: Sequence[Report], examples: int) -> None:
    """The table, the adapter's change, and `examples` replies side by side."""
    print(HEADER)
    for r in reports:
        print(r.row())
    if len(reports) == 2:
        base, tuned = reports
        print(f"character loss change: {100 * (tuned.character_loss / base.character_loss - 1):+.1f}%; "
              f"other speakers: {100 * (tuned.others_loss / base.others_loss - 1):+.1f}%")
    for i in range(min(examples, len(reports[0].examples))):
        print(f"\n...{reports[0].examples[i].prompt[-150:]!r}\n  reference: {reports[0].examples[i].reference[:150]}")
        for r in reports:
            print(f"  {r.label:<9}: {r.examples[i].reply[:150]!r}{'' if r.examples[i].ended_by_eos else ' [no EOS]'}")
