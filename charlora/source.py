"""The whole source beside the samples: every line, who said it, and what
training does with the lines that are not the character's.

prepare_dataset.py keeps writing the original `{"output", "input"}` list; next
to it goes `<dataset>.source.json`, the source's lines in order.  Old
processed files have no such file and train exactly as before.  From it
training takes:

- the held-out slice: the character's *last* lines, a contiguous tail, because
  consecutive samples share context lines (a random line held out would sit in
  the context of the training samples around it);
- other speakers' lines as extra samples, each prompted with its own speaker,
  at a lower loss weight (`--others_weight`): the language of the world from
  everyone, the person from the person;
- the data report printed before training.
"""
from __future__ import annotations

import bisect
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from charlora.dialogue import Line
from charlora.prompt import build_prompt

FORMAT = 1

# Hold out a tail only when both sides keep enough lines to mean something:
# 8 held-out replies give a loss whose epoch-to-epoch changes are above noise
# on the plays we measured; fewer than 24 training lines teach little anyway.
MIN_HELD_OUT = 8
MIN_TRAIN = 24


def source_path(dataset: str | Path) -> Path:
    """processed_dataset.json -> processed_dataset.source.json"""
    p = Path(dataset)
    if not p.name:  # "", ".", "/": no file name to derive from
        from charlora.files import output_target

        output_target(dataset)  # says why
    return p.with_name((p.name[: -len(".json")] if p.name.endswith(".json") else p.name) + ".source.json")


def source_record(lines: Sequence[Line], name: str, rounds: int, split_scenes: bool) -> dict[str, Any]:
    return {"format": FORMAT, "name": name, "rounds": rounds, "split_scenes": split_scenes,
            "lines": [[line.speaker, line.text, line.after_blank] for line in lines]}


@dataclass
class Source:
    name: str
    rounds: int
    split_scenes: bool
    lines: list[Line]

    def character_index(self) -> list[int]:
        """Line numbers of the character's lines, one per processed sample."""
        return [i for i, line in enumerate(self.lines) if line.speaker == self.name]

    def training_end(self, n_train: int, held_out: bool) -> int:
        """Where the lines training may use end: at the first line of the
        held-out tail (the character's line number n_train), or at the end."""
        return self.character_index()[n_train] if held_out else len(self.lines)


def load_source(dataset: str | Path, samples: Sequence[dict[str, str]]) -> tuple[Source | None, str | None]:
    """(the source beside `dataset`, None) or (None, why it is not used).

    Used only when it still matches the samples line for line: a processed
    file edited by hand, or rewritten by another tool, trains as it is."""
    path = source_path(dataset)
    if not path.is_file():
        return None, f"no {path.name} beside the dataset (made by an older prepare_dataset.py)"
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rec, dict):
            return None, f"{path.name} is not a JSON object"
        if rec.get("format") != FORMAT:
            return None, f"{path.name} is of another format ({rec.get('format')!r})"
        src = Source(str(rec["name"]), int(rec["rounds"]), bool(rec["split_scenes"]),
                     [Line(s, str(t), bool(b)) for s, t, b in rec["lines"]])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{path.name} could not be read ({exc.__class__.__name__})"
    own = [src.lines[i].text for i in src.character_index()]
    if own != [s["output"] for s in samples]:
        return None, f"{path.name} no longer matches the dataset's replies"
    return src, None


def held_out_count(n_samples: int, share: float) -> int:
    """How many of the last samples to hold out: `share` of them, but none
    when that leaves fewer than MIN_HELD_OUT held out or MIN_TRAIN to train on."""
    if share <= 0:
        return 0
    n_eval = max(MIN_HELD_OUT, round(n_samples * share))
    return n_eval if n_samples - n_eval >= MIN_TRAIN else 0


def other_samples(src: Source, end: int, cap: int | None = None, as_speaker: str | None = None) -> list[dict[str, str]]:
    """Samples for every other speaker's line before line `end`, each prompted
    with its own speaker's `Name:` (or `as_speaker`'s) and the same context
    window a character sample gets.  `cap`: keep at most this many, evenly
    spread over the source (not the first ones), so a long source costs a
    bounded share of training."""
    from charlora.samples import context_window

    idx = [i for i, line in enumerate(src.lines[:end]) if line.speaker is not None and line.speaker != src.name]
    if cap is not None and len(idx) > cap:
        step = len(idx) / cap
        idx = [idx[int(k * step)] for k in range(cap)]
    return [{"output": src.lines[i].text,
             "input": build_prompt(context_window(src.lines, i, src.rounds, src.split_scenes),
                                   as_speaker or src.lines[i].speaker)}
            for i in idx]


def rival_lines(src: Source, n_train: int, end: int) -> list[str | None]:
    """For each of the character's first `n_train` lines, what someone else
    said at that point of the source: the next other speaker's line after it
    (the answer to it, so not in its context), else the last one before it;
    only lines before line `end` (nothing from the held-out tail), and never
    a line whose text is the character's own (None then).  These are the
    rejected replies of --pair_weight: same prompt, another person's words."""
    own = src.character_index()[:n_train]
    other = [i for i, line in enumerate(src.lines[:end]) if line.speaker is not None and line.speaker != src.name]
    out: list[str | None] = []
    for i in own:
        after = bisect.bisect_right(other, i)
        pick = other[after] if after < len(other) else (other[after - 1] if after else None)
        text = src.lines[pick].text if pick is not None else None
        out.append(text if text is not None and text != src.lines[i].text else None)
    return out


@dataclass
class DataReport:
    samples: int
    truncated: int
    """Samples whose context is cut at cutoff_len."""
    mean_cut_tokens: float
    max_cut_tokens: int
    reply_cut: int
    """Samples whose reply itself is cut (the reply alone nearly fills cutoff_len)."""
    duplicates: int
    """Samples that repeat an earlier one exactly (same context and reply)."""
    character_share: float | None
    """The character's share of the source's spoken lines (None without a source file)."""
    held_out: int
    overlap: int
    """Held-out replies that also appear, word for word, as a training reply."""

    def lines(self, cutoff_len: int, eval_flag: str = "--eval_split") -> list[str]:
        out = [f"data: {self.samples} samples; {self.truncated} have their context cut at --cutoff_len {cutoff_len}"
               + (f" (by {self.mean_cut_tokens:.0f} tokens on average, {self.max_cut_tokens} at most)" if self.truncated else "")
               + f"; {self.duplicates} duplicates"]
        if self.character_share is not None:
            out.append(f"data: the character speaks {100 * self.character_share:.1f}% of the source's lines")
        if self.held_out:
            out.append(f"data: {self.held_out} held out (the last lines); {self.overlap} of them repeat a training reply")
        if self.reply_cut:
            out.append(f"warning: {self.reply_cut} replies are longer than --cutoff_len {cutoff_len} allows and are cut; "
                       "raise --cutoff_len")
        if self.truncated > self.samples / 2:
            out.append(f"warning: most samples ({self.truncated}/{self.samples}) lose context at --cutoff_len {cutoff_len}; "
                       "raise --cutoff_len or make the dataset with fewer --rounds")
        if self.held_out and self.overlap > self.held_out / 4:
            out.append(f"warning: {self.overlap} of {self.held_out} held-out replies also appear in training, so the "
                       f"held-out loss flatters; deduplicate the source or change {eval_flag}")
        return out


def data_report(samples: Sequence[dict[str, str]], token_lengths: Sequence[tuple[int, int]], cutoff_len: int,
                n_held_out: int, src: Source | None) -> DataReport:
    """token_lengths: (prompt tokens, reply tokens incl. EOS) of each sample before cutting."""
    from charlora.tokens import MIN_PROMPT_TOKENS

    cuts = [max(0, p + r - cutoff_len) for p, r in token_lengths]
    cut = [c for c in cuts if c]
    reply_cut = sum(r > cutoff_len - min(p, MIN_PROMPT_TOKENS) for p, r in token_lengths)
    seen = Counter((s["input"], s["output"]) for s in samples)
    dups = sum(n - 1 for n in seen.values())
    train = samples[: len(samples) - n_held_out]
    held = samples[len(samples) - n_held_out :] if n_held_out else []
    train_replies = {s["output"] for s in train}
    share = None
    if src is not None:
        spoken = Counter(line.speaker for line in src.lines if line.speaker is not None)
        share = spoken[src.name] / max(1, sum(spoken.values()))
    return DataReport(len(samples), len(cut), sum(cut) / len(cut) if cut else 0.0, max(cut, default=0), reply_cut,
                      dups, share, len(held), sum(s["output"] in train_replies for s in held))


def check_others_weight(weight: float, flag: str) -> None:
    from charlora.errors import CharloraError

    if not (math.isfinite(weight) and 0 <= weight <= 1):
        raise CharloraError(f"{flag} is a loss weight relative to the character's lines, in [0, 1], got {weight}")
