"""Line-banded attention: train a whole run of lines as one sequence.

Per-sample training (charlora.tokens.encode_sample) gives every line of the
character its own sample: the `rounds` lines before it, `Name:`, the reply,
EOS.  On play data a line sits in up to rounds + 1 samples, so most of the
compute goes to context that other samples already computed.  Here a run of
consecutive lines (a "band") is one sequence; every line of the character in
it is a reply with labels, and an explicit 4D mask (the machinery of
charlora.pcw) lets each line's tokens see only their own window: the
`rounds` lines before it and their own line, causally.

    tokens     S0 A  :  h  i  \n  S1 B  :  y  o  EOS  ...      (S1: line 1's sink)
    positions  0  0  1  2  3  4   0  5  6  7  8  9

- A reply's line is `Name:` + the reply tokenized alone + EOS, as in
  encode_sample.  The EOS is hidden from every later token (it is not in
  the later samples' contexts) and shares its position with the "\n" that
  follows, so later tokens see the distances their own sample would give.
- Every line gets a sink in front of it, a token that sees only itself and
  that only that line's window sees: where the tokenizer puts a BOS first
  (LLaMA's), a BOS at the position before the window's first token; else a
  copy of the window's first token at its position (the window then holds
  the copy instead of the token itself).  A sample's first token is the
  attention sink of a causal LM; without one per window the base model's
  loss per reply token on Falstaff rose from 4.07 to 4.51 (bench/banded.py,
  4 replies), with it the two agree to 0.01.
- Positions are continuous over the band.  Rotary models (LLaMA, GPT-NeoX,
  GPT-J) see only position differences, so a reply sees its context at
  exactly the distances of its own sample; absolute-position models (GPT-2,
  OPT) see larger absolute positions than the sample had (an approximation).

What is not the per-sample computation (the approximation this takes): a
context token is shared by every sample whose window holds it, but it can
have only one view, so it sees *its own* window (the `rounds` lines before its
line).  In a per-sample encoding the same token sees only the part of its
window that lies inside that sample.  A reply's logits therefore equal the
per-sample ones exactly (tests/test_banded.py, to 1e-5) for a one-layer
model, or when every window reaches the start of the band (rounds >= the
lines before it); with more layers the context's deeper layers have read up
to `rounds` lines further back.
bench/banded.py measures the difference in loss.  Also: a line of the
character tokenized as context is `Name:` + the reply's own tokens (a few
tokenizers merge ":'" when the line is tokenized whole: SmolLM2 does, for 7
of Falstaff's 159 lines in Henry IV Part 1).

Costs: one sink token per line; the mask is dense (T x T per band), and
attention runs over the whole band (sdpa with an explicit mask has no flash
kernel), so bands are kept to `band_len` tokens; the context a band needs
for its first reply is computed again from the band before (up to `rounds`
lines per band).

Pieces:
  lines_from_samples  processed samples -> the runs of lines they were cut from
  banded_training   processed samples -> the bands as a dataset and the Trainer settings they need (--banded)
  banded_examples   pure: dialogue lines -> bands {input_ids, labels, position_ids, window_start, sink, hidden}
  band_allowed      those per-token fields -> bool (..., T, T) "may attend"
  collate_banded    bands -> padded batch with the 4D additive mask (pcw.additive_mask) for model(**batch)
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from charlora.dialogue import Line
from charlora.errors import CharloraError
from charlora.prompt import format_line
from charlora.samples import context_window
from charlora.tokens import IGNORE_INDEX, encode_reply, fit_to_cutoff, split_bos


class BandedError(CharloraError):
    """Settings that line-banded training can't work with."""


def _line_tokens(tokenizer: Any, lines: Sequence[Line], name: str) -> tuple[list[list[int]], list[list[int]]]:
    """(ids of each line as context, reply ids with EOS or [] for each line not the character's)."""
    prompt = list(tokenizer(f"{name}:", add_special_tokens=False)["input_ids"])
    as_context, replies = [], []
    for line in lines:
        if line.speaker == name:
            reply = encode_reply(tokenizer, line.text)
            as_context.append(prompt + reply[:-1])
            replies.append(reply)
        else:
            as_context.append(list(tokenizer(format_line(line), add_special_tokens=False)["input_ids"]))
            replies.append([])
    return as_context, replies


def banded_examples(lines: Sequence[Line], tokenizer: Any, name: str, rounds: int, cutoff_len: int,
                    band_len: int = 1024, split_scenes: bool = False) -> list[dict[str, list[int]]]:
    """Every line of `name` in `lines` as a reply, in bands of at most `band_len` tokens.

    The windows are build_samples' (`rounds` lines, charlora.samples.context_window,
    `split_scenes` as there); cutoff_len cuts each reply's window as
    encode_sample cuts its sample (fit_to_cutoff: the context loses its start,
    a very long reply its end).  Each band is a dict of per-token lists:
    input_ids, labels (the reply tokens and EOS of the character's lines,
    -100 elsewhere), position_ids, window_start (index of the first band
    token the token may see), sink (index of the sink it sees) and hidden
    (1 for tokens no other line's window sees: EOS and the sinks).
    band_allowed turns the last three into the mask.  Every line of the
    character is labeled in exactly one band.  A band holds at most
    band_len tokens, or one reply's window where that alone is longer (a
    reply cut by cutoff_len keeps its tokens, unlabeled; a window holds a sink
    per line).
    """
    if rounds < 0:
        raise BandedError(f"rounds must be 0 or more, got {rounds}")
    if band_len < cutoff_len:
        raise BandedError(f"band_len ({band_len}) must be at least cutoff_len ({cutoff_len}): a band holds a whole window")
    ids, replies = _line_tokens(tokenizer, lines, name)
    lead, _ = split_bos(tokenizer, list(tokenizer("x")["input_ids"]))
    newline = list(tokenizer("\n", add_special_tokens=False)["input_ids"])

    def cost(j: int, labeled: bool) -> int:
        return 1 + len(ids[j]) + len(newline) + (1 if labeled else 0)  # 1: the line's sink

    # Which lines each band holds: [first, last], and the replies it labels.
    bands: list[tuple[int, int, list[int]]] = []
    for k in (k for k, line in enumerate(lines) if line.speaker == name):
        first = k - len(context_window(lines, k, rounds, split_scenes))
        if bands:
            b_first, b_last, targets = bands[-1]
            size = sum(cost(j, j in targets or j == k) for j in range(b_first, k + 1))
            if first <= b_last + 1 and size <= band_len:
                bands[-1] = (b_first, k, targets + [k])
                continue
        bands.append((first, k, [k]))
    return [_band(lines, ids, replies, lead, newline, first, last, set(targets), rounds, cutoff_len, split_scenes)
            for first, last, targets in bands]


def _band(lines, ids, replies, lead, newline, first, last, targets, rounds, cutoff_len, split_scenes) -> dict:
    """One band: lines first..last, the lines in `targets` labeled.

    Built in two passes: the lines' own tokens with their positions and each
    line's window, then one sink per line put in front of the line.
    """
    ids_, labels, positions, hidden, owner = [], [], [], [], []
    line_start, window_end, kept_body = {}, {}, {}
    pos = len(lead)  # a sample's body starts after its BOS

    def add(token, label, position, hide, line):
        ids_.append(token)
        labels.append(label)
        positions.append(position)
        hidden.append(hide)
        owner.append(line)

    for j in range(first, last + 1):
        line_start[j] = len(ids_)
        n_reply = len(replies[j]) - 1 if replies[j] else 0  # reply tokens in ids[j] (no EOS)
        n_prompt = len(ids[j]) - n_reply
        body, reply = _sample_body(ids, replies, len(newline), lines, j, rounds, split_scenes)
        if replies[j]:
            # What encode_sample keeps of this line's sample: the body's end, the reply's start.
            _, kept, reply = fit_to_cutoff(list(lead), [0] * body, reply, cutoff_len)
            kept_body[j], window_end[j] = len(kept), line_start[j] + n_prompt
        else:  # a context line: its window and itself within cutoff_len
            kept_body[j], window_end[j] = cutoff_len - len(lead), line_start[j] + len(ids[j])
        labeled = j in targets
        for i, token in enumerate(ids[j]):
            label = token if labeled and 0 <= i - n_prompt < len(reply) else IGNORE_INDEX
            add(token, label, pos + i, 0, j)
        pos += len(ids[j])
        if labeled:  # EOS, labeled only when encode_sample keeps the whole reply
            eos = replies[j][-1]
            add(eos, eos if len(reply) == len(replies[j]) else IGNORE_INDEX, pos, 1, j)
        if j < last:
            for token in newline:
                add(token, IGNORE_INDEX, pos, 0, j)
                pos += 1

    # Each line's window: from the first line of its context (in this band),
    # cut back to the kept body's length as fit_to_cutoff cuts a prompt.
    window_start = {}
    for j in range(first, last + 1):
        start = line_start[max(first, j - len(context_window(lines, j, rounds, split_scenes)))]
        seen, i = 0, window_end[j]
        while i > start and seen < kept_body[j]:
            i -= 1
            seen += not hidden[i]
        window_start[j] = i

    # Pass 2: a sink in front of each line, then every index moves.
    order, sink_of = [], {}
    for j in range(first, last + 1):
        sink_of[j] = -(j + 1)  # placeholder, resolved below
        order.append(sink_of[j])
        order.extend(range(line_start[j], line_start[j + 1] if j < last else len(ids_)))
    new_index = {old: new for new, old in enumerate(order)}
    out = {key: [] for key in ("input_ids", "labels", "position_ids", "hidden", "window_start", "sink")}
    for new, old in enumerate(order):
        if old < 0:  # the sink of line j: sees itself only
            j = -old - 1
            first_kept = window_start[j]
            token, position = (lead[0], positions[first_kept] - 1) if lead else (ids_[first_kept], positions[first_kept])
            row = (token, IGNORE_INDEX, position, 1, new, new)
        else:
            j = owner[old]
            # With a BOS the window is BOS + body from its first kept token;
            # without, the sink stands in for that first token.
            start = window_start[j] if lead else _next_visible(hidden, window_start[j] + 1, len(ids_))
            row = (ids_[old], labels[old], positions[old], hidden[old], new_index.get(start, len(order)),
                   new_index[-(j + 1)])
        for key, value in zip(("input_ids", "labels", "position_ids", "hidden", "window_start", "sink"), row):
            out[key].append(value)

    first_kept = window_start[min(targets)]
    return _trim_front(out, new_index[first_kept], new_index[-(owner[first_kept] + 1)], len(order))


def _trim_front(out: dict, trim: int, sink: int, n: int) -> dict:
    """Tokens before index `trim` (the start of a line the first reply's
    window sees only in part) are no reply's context: drop them, keeping that
    line's sink (index `sink`)."""
    if sink == 0 and trim == 1:
        return out
    keep = [sink] + list(range(trim, n))
    moved = {old: new for new, old in enumerate(keep)}
    for key in ("input_ids", "labels", "position_ids", "hidden"):
        out[key] = [out[key][i] for i in keep]
    # A context line whose window reached further back than the cut starts
    # at the band's start, with that line's sink.
    out["window_start"] = [moved[max(out["window_start"][i], trim)] if out["window_start"][i] != i else moved[i]
                           for i in keep]
    out["sink"] = [moved.get(out["sink"][i], 0) for i in keep]
    return out


def _next_visible(hidden: list[int], i: int, end: int) -> int:
    """The first index >= i that is not hidden (end if none)."""
    while i < end and hidden[i]:
        i += 1
    return i


def _sample_body(ids, replies, n_newline, lines, j, rounds, split_scenes) -> tuple[int, list[int]]:
    """(tokens of line j's sample before its reply: context lines, their "\n"s and `Name:`; the reply with EOS)."""
    first = j - len(context_window(lines, j, rounds, split_scenes))
    n_reply = len(replies[j]) - 1 if replies[j] else 0
    body = sum(len(ids[i]) + n_newline for i in range(first, j)) + len(ids[j]) - n_reply
    return body, list(replies[j])


def sample_rounds(samples: Sequence[Mapping[str, str]]) -> int:
    """The --rounds a processed dataset was made with: its longest context, in lines."""
    return max((s["input"].count("\n") for s in samples), default=0)


def lines_from_samples(samples: Sequence[Mapping[str, str]], name: str,
                       rounds: int | None = None) -> list[list[Line]]:
    """Processed samples ({"input": prompt, "output": reply}, in file order)
    -> the runs of consecutive lines they were cut from.

    Training reads samples, not the dialogue, so the lines are put back
    together from the overlap of consecutive samples' contexts: a sample's
    context lines that end the run so far are the same lines.  Lines other
    than the character's replies come back as text as they stood in the
    prompt (Line(None, "Speaker:text")), which format_line returns
    unchanged, so they tokenize as in the samples.

    A new run starts wherever a band's window (the `rounds` lines before a
    reply in its run; None: sample_rounds) would not be the sample's own
    context: where two samples do not overlap (the character silent for
    more than `rounds` lines, or a held-out sample between them), and where
    a context is shorter than `rounds` lines although the run holds more
    before it (the sample starts after a --split_scenes break, or a
    dialogue's first lines).  So every reply's window is its sample's.
    """
    rounds = sample_rounds(samples) if rounds is None else rounds
    runs: list[list[Line]] = []
    text: list[str] = []  # the current run, as its prompt lines
    for sample in samples:
        context = sample["input"].split("\n")[:-1]  # the last line is `Name:`
        overlap = next((m for m in range(min(len(context), len(text)), 0, -1) if text[-m:] == context[:m]), 0)
        joins = (overlap or not context) and (len(context) >= rounds or overlap == len(text))
        if not runs or not joins:
            runs.append([])
            text = []
            overlap = 0
        runs[-1] += [Line(None, line) for line in context[overlap:]]
        text += context[overlap:]
        runs[-1].append(Line(name, sample["output"]))
        text.append(format_line(runs[-1][-1]))
    return runs


BAND_LEN = 512
"""Tokens per band in training (at least cutoff_len): on Falstaff 1.57x fewer
tokens than per-sample batches at 1.12x their attention scores; 1024 saves
more tokens but doubles the attention (bench/banded.py --count_only)."""


def training_bands(samples: Sequence[Mapping[str, str]], tokenizer: Any, cutoff_len: int,
                   band_len: int = BAND_LEN) -> list[dict[str, list[int]]]:
    """A processed dataset's samples -> the bands that label each reply once,
    each with the window its sample has (lines_from_samples, sample_rounds)."""
    from charlora.adapter import character_name

    name, rounds = character_name(samples), sample_rounds(samples)
    return [band for run in lines_from_samples(samples, name, rounds)
            for band in banded_examples(run, tokenizer, name, rounds, cutoff_len, max(band_len, cutoff_len))]


def bands_per_step(n_bands: int, n_replies: int, batch_size: int, grad_accum: int) -> int:
    """Bands accumulated per optimizer step (one band a forward, so no padding)
    for a step to hold about batch_size x grad_accum replies, as a per-sample
    step does: an epoch then has about as many optimizer steps, so the
    learning-rate schedule, warm-up and early stopping see the same run."""
    per_band = n_replies / max(1, n_bands)
    return max(1, round(batch_size * grad_accum / per_band))


def band_noise_alpha(alpha: float, band_lengths: Sequence[int], sample_lengths: Sequence[int]) -> float:
    """NEFTune's alpha for bands: its noise is alpha / sqrt(L x hidden) per
    embedding value, L the row's length, so the same alpha would give a band's
    tokens less noise than their samples'.  Scaled by sqrt(mean band length /
    mean sample length), a token gets about its sample's noise."""
    if not alpha or not band_lengths or not sample_lengths:
        return alpha
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return alpha * (mean(band_lengths) / mean(sample_lengths)) ** 0.5


def banded_training(samples: Sequence[Mapping[str, str]], tokenizer: Any, cutoff_len: int, batch_size: int,
                    grad_accum: int, neftune_alpha: float) -> tuple[Any, dict]:
    """(the bands as a datasets.Dataset, the TrainingArguments that differ for them).

    One band a forward (per_device_train_batch_size 1, no padding), in random
    order (grouping by length only saves padding), bands_per_step of them a
    step, NEFTune scaled by band_noise_alpha; every column kept for
    collate_banded.
    """
    from datasets import Dataset

    from charlora.tokens import encode_sample

    if not samples:
        raise BandedError("no samples to train on")
    bands = training_bands(samples, tokenizer, cutoff_len)
    sample_lengths = [len(encode_sample(tokenizer, s["input"], s["output"], cutoff_len)["input_ids"]) for s in samples]
    alpha = band_noise_alpha(neftune_alpha, [len(b["input_ids"]) for b in bands], sample_lengths)
    args = {"per_device_train_batch_size": 1,
            "gradient_accumulation_steps": bands_per_step(len(bands), len(samples), batch_size, grad_accum),
            "neftune_noise_alpha": alpha or None, "train_sampling_strategy": "random", "remove_unused_columns": False}
    return Dataset.from_list(bands), args


def band_allowed(window_start, sink, hidden):
    """Per-token (..., T) window_start, sink, hidden -> bool (..., T, T): may query q attend key k?

    k <= q, and: k is in q's window (k >= window_start[q]) and not hidden, or
    k is q's BOS (sink[q]), or k is q itself.  Padding (window_start = its
    own index, sink -1, hidden 1) sees only itself and is seen by nothing.
    """
    import torch

    start = torch.as_tensor(window_start, dtype=torch.long)
    sinks = torch.as_tensor(sink, dtype=torch.long)
    hid = torch.as_tensor(hidden, dtype=torch.bool)
    n = start.shape[-1]
    k = torch.arange(n, device=start.device)
    q = k.unsqueeze(-1)
    causal = k <= q
    in_window = (k >= start.unsqueeze(-1)) & ~hid.unsqueeze(-2)
    return causal & (in_window | (k == sinks.unsqueeze(-1)) | (k == q))


def collate_banded(features: Sequence[Mapping[str, Sequence[int]]], pad_token_id: int, dtype=None) -> dict:
    """banded_examples' bands -> {"input_ids", "labels", "position_ids", "attention_mask"} for model(**batch).

    Right padding; attention_mask is the 4D additive mask in `dtype` (the
    dtype attention runs in; default float32), as charlora.pcw builds it.
    """
    import torch

    from charlora.pcw import additive_mask

    if not features:
        raise BandedError("no bands to batch")
    longest = max(len(f["input_ids"]) for f in features)
    rows = {key: [] for key in ("input_ids", "labels", "position_ids", "window_start", "sink", "hidden")}
    for f in features:
        n, gap = len(f["input_ids"]), longest - len(f["input_ids"])
        rows["input_ids"].append(list(f["input_ids"]) + [pad_token_id] * gap)
        rows["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * gap)
        rows["position_ids"].append(list(f["position_ids"]) + [0] * gap)
        rows["window_start"].append(list(f["window_start"]) + list(range(n, longest)))
        rows["sink"].append(list(f["sink"]) + [-1] * gap)
        rows["hidden"].append(list(f["hidden"]) + [1] * gap)
    batch = {key: torch.tensor(value, dtype=torch.long) for key, value in rows.items()}
    allowed = band_allowed(batch.pop("window_start"), batch.pop("sink"), batch.pop("hidden"))
    batch["attention_mask"] = additive_mask(allowed, dtype or torch.float32)
    return batch
