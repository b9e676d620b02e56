"""Parallel Context Windows: more context than the model's window, in one pass.

Parallel Context Windows (Ratner et al., ACL 2023) let a model read several
chunks of context that together exceed its window.  The sequence is laid out
as a shared prefix, then N windows, then the task part:

    tokens     prefix | window 1   | window 2 | task
    positions  0..p-1 | p..p+w1-1  | p..p+w2-1| p+max(w)..

- each window attends to the prefix and causally to itself, never to another
  window, and restarts its positions right after the prefix, so no position
  goes past p + longest window + task: that is what lets more text in than
  `max_position_embeddings` allows;
- the task part (recent turns, then `Name:`) attends to the prefix, to every
  window and causally to itself, positioned after the longest window.

This is done with today's transformers and no patched model classes: one
forward with an explicit 4D additive mask (0 where a query may attend, the
dtype's minimum elsewhere) and explicit `position_ids`.  transformers passes a
4D mask through unchanged (`masking_utils._preprocess_mask_arguments`) for
eager and sdpa attention, and every family then reads positions only from
`position_ids`: absolute embeddings (GPT-2, OPT, whose own cumulative-sum
positions are skipped when `position_ids` is given) and rotary ones (GPT-J,
GPT-NeoX, LLaMA) alike.  Two shortcuts are wrong: `generate()` refuses 4D
masks and derives positions itself, hence the small decoding loop here
(`pcw_step`, `pcw_generate`); and PCW positions *without* the mask would be
read by transformers as packed sequences (a position restart starts a new
sample), so windows would not see the prefix and the task would not see them.

Costs: the mask is dense, (batch, 1, T, T) in the model's dtype, i.e.
O(T^2) memory (4 MiB at T=1024 in fp32, 64 MiB at T=4096), on top of the
attention itself; sdpa cannot use its flash kernels with an explicit mask,
so prefill runs the memory-efficient or math kernel.  flash-attention and
flex implementations take no dense mask and are refused (`PCWError`).
Decoding feeds one token at a time with the cache: each step's mask is one
row, every real token so far, so a step costs what an ordinary step costs.
Sliding-window attention (Mistral-style) is not applied under a 4D mask.

Everything is token ids in, tensors out: the caller decides what goes into
the prefix (BOS, a scene description), the windows (memories, example scenes,
older history) and the task (recent turns and `Name:`).

Pieces:
  pcw_layout / pcw_example   pure: ids -> input_ids, position_ids, segments (+ labels)
  split_prompt / pcw_prompt  pure: a prompt tokenized once, split into prefix, windows, task (chat --pcw)
  pcw_sample                 pure: a processed sample (prompt text, reply) -> pcw_example (training, evaluation)
  attention_allowed          segments -> boolean (..., T, T) "may attend" matrix
  additive_mask              boolean -> 4D float mask a model takes
  collate_pcw                examples -> padded batch for model(**batch) (training)
  pcw_forward / pcw_step     prefill and one cached decoding step
  pcw_generate               a reply, with a pluggable next-token rule and stop rule
  sampling_rule              that rule from transformers' logits processors (chat's sampler)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from charlora.errors import CharloraError
from charlora.tokens import IGNORE_INDEX

# Segment ids, one per token: which part of the layout it belongs to.
PREFIX = 0  # windows are 1..N
TASK = -1
PAD = -2

# Context lines next to the reply, outside the windows (training --pcw_recent,
# evaluation): the turn being answered and the one before it.
PCW_RECENT = 2

# The most windows --pcw / --pcw_windows may ask for.  Each window holds at
# least one line, and a sample has at most 1000 context lines (prepare_dataset's
# --rounds limit); the window split loops once per window, so 10**20 hung.
MAX_WINDOWS = 1000

# The attention implementations that take an arbitrary 4D mask.
MASKED_ATTENTION = ("eager", "sdpa")


class PCWError(CharloraError):
    """A layout or model that Parallel Context Windows can't work with."""


# ------------------------------------------------------------------ pure layout


def pcw_layout(prefix: Sequence[int], windows: Sequence[Sequence[int]], task: Sequence[int]) -> dict[str, list[int]]:
    """The PCW sequence for one prompt -> {"input_ids", "position_ids", "segments"}.

    Positions: prefix 0..p-1, each window p.., the task from p + longest
    window.  `segments` says which part each token is in (PREFIX, 1..N for the
    windows, TASK); `attention_allowed(segments)` turns it into the mask.
    The task may not be empty: the next token is read from its last token.
    """
    if not task:
        raise PCWError("the task part is empty: the next token is predicted from its last token")
    p = len(prefix)
    longest = max((len(w) for w in windows), default=0)
    input_ids, positions, segments = list(prefix), list(range(p)), [PREFIX] * p
    for i, window in enumerate(windows, start=1):
        input_ids += window
        positions += range(p, p + len(window))
        segments += [i] * len(window)
    input_ids += task
    positions += range(p + longest, p + longest + len(task))
    segments += [TASK] * len(task)
    return {"input_ids": input_ids, "position_ids": positions, "segments": segments}


def pcw_example(prefix: Sequence[int], windows: Sequence[Sequence[int]], task_ids: Sequence[int],
                task_labels: Sequence[int]) -> dict[str, list[int]]:
    """A training example in PCW layout: pcw_layout plus "labels".

    `task_ids` / `task_labels` are what tokens.encode_sample gives for the
    recent context and the reply (labels -100 on the context); prefix and
    window tokens get -100.  The mask is not stored: it is derived from
    "segments" when a batch is made (collate_pcw), so a dataset keeps O(T) per
    example instead of O(T^2).  (With transformers' Trainer that means
    remove_unused_columns=False: "segments" is no argument of the model.)
    """
    if len(task_ids) != len(task_labels):
        raise PCWError(f"task_ids and task_labels differ in length ({len(task_ids)} vs {len(task_labels)})")
    if task_labels and task_labels[0] != IGNORE_INDEX and any(windows):
        # Causal LMs predict label t from token t-1, here the last window
        # token, which cannot see the task: a label there teaches nothing true.
        raise PCWError("the first task token can't carry a label: it would be predicted from the last window token")
    layout = pcw_layout(prefix, windows, task_ids)
    layout["labels"] = [IGNORE_INDEX] * (len(layout["input_ids"]) - len(task_ids)) + list(task_labels)
    return layout


def split_windows(ids: Sequence[int], lines: Sequence[int], n: int, max_len: int) -> list[list[int]]:
    """Cut `ids` (at most n * max_len of them) into at most n contiguous
    windows of roughly equal length, none longer than max_len.

    `lines[i]` is the line token i belongs to: each cut goes to the line start
    nearest to k/n of the tokens among those that keep every window within
    max_len, so windows hold whole lines; only where no line start qualifies
    (a line longer than a window) is a line cut.  Empty windows are left out.
    """
    if len(ids) > n * max_len:
        raise PCWError(f"{len(ids)} tokens don't fit {n} windows of {max_len}")
    starts = [i for i in range(1, len(ids)) if lines[i] != lines[i - 1]]
    cuts = [0]
    for k in range(1, n):
        target = k * len(ids) / n
        # the rest must still fit the windows left, and this one max_len
        lo, hi = max(cuts[-1], len(ids) - (n - k) * max_len), min(len(ids), cuts[-1] + max_len)
        near = [b for b in starts if lo <= b <= hi]
        cuts.append(min(near, key=lambda b: (abs(b - target), b)) if near else min(hi, max(lo, round(target))))
    cuts.append(len(ids))
    return [list(ids[a:b]) for a, b in zip(cuts, cuts[1:]) if b > a]


def split_prompt(tokenizer: Any, prompt: str, recent: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """A build_prompt prompt, tokenized once, whole -> (lead, older, older_lines, task).

    lead: the BOS if the tokenizer adds one (the PCW prefix); task: the last
    `recent` context lines and the `Name:` line; older: the tokens before
    them, with older_lines[i] the prompt line token i ends in.  The split is
    by character offsets, so every token is the one the whole prompt gets
    (needs a fast tokenizer).
    """
    from bisect import bisect_right

    from charlora.tokens import split_bos

    if recent < 0:
        raise PCWError(f"recent must be 0 or more, got {recent}")
    if not getattr(tokenizer, "is_fast", False):
        raise PCWError("Parallel Context Windows need a fast tokenizer (character offsets split the prompt by line)")
    enc = tokenizer(prompt, return_offsets_mapping=True)
    lead, body = split_bos(tokenizer, list(enc["input_ids"]))
    offsets = enc["offset_mapping"][len(lead) :]
    line_starts = [0] + [i + 1 for i, ch in enumerate(prompt) if ch == "\n"]
    lines = [bisect_right(line_starts, end - 1) - 1 for _, end in offsets]  # the line of each token's last char
    first_task_line = max(0, len(line_starts) - 1 - recent)
    split = sum(1 for line in lines if line < first_task_line)
    return lead, body[:split], lines[:split], body[split:]


def newest_windows(older: Sequence[int], older_lines: Sequence[int], windows: int, budget: int) -> list[list[int]]:
    """The newest `windows` x `budget` of the older tokens, cut into windows (split_windows);
    older context beyond that is dropped from its oldest end."""
    if windows < 1:
        raise PCWError(f"windows must be at least 1, got {windows}")
    budget = max(budget, 0)
    keep = min(len(older), windows * budget)
    return split_windows(older[len(older) - keep :], older_lines[len(older_lines) - keep :], windows, budget)


def pcw_prompt(tokenizer: Any, prompt: str, windows: int, recent: int = PCW_RECENT,
               positions: int | None = None) -> tuple[list[int], list[list[int]], list[int]]:
    """(prefix, windows, task) token ids of a prompt for decoding (chat --pcw).

    The same split as pcw_sample, so chat and training see the same token ids
    for the same lines.  Each window may be as long as the room the prompt
    leaves in `positions` (None: no limit, so nothing is dropped).
    """
    lead, older, older_lines, task = split_prompt(tokenizer, prompt, recent)
    room = len(older) if positions is None else positions - len(lead) - len(task)
    return lead, newest_windows(older, older_lines, windows, room), task


def pcw_sample(tokenizer: Any, prompt: str, reply: str, cutoff_len: int, windows: int, recent: int = PCW_RECENT,
               window_len: int | None = None) -> dict[str, list[int]]:
    """A processed sample {"input": prompt, "output": reply} as a PCW training example.

    The prompt is build_prompt's: context lines joined by "\\n", then `Name:`.
    Layout: the BOS (if the tokenizer adds one) is the prefix; the last
    `recent` context lines and the `Name:` line are the task; the older lines
    are cut into `windows` contiguous windows of roughly equal token length
    (split_prompt, newest_windows).  The reply is tokenized alone with EOS
    after it, so every token and the reply/`Name:` boundary are
    encode_sample's: with windows=1 and room for everything the example *is*
    encode_sample's (same ids, labels and positions 0..T-1).

    Budget: prefix + longest window + task + reply <= cutoff_len, the
    positions the model sees.  Task and reply are cut as encode_sample cuts a
    prompt and reply; each window may then hold what is left (at most
    `window_len`, if given); older context beyond `windows` such windows is
    dropped from its oldest end.  Needs a fast tokenizer (offsets).
    """
    from charlora.tokens import encode_reply, fit_to_cutoff

    if windows < 1:
        raise PCWError(f"windows must be at least 1, got {windows}")
    lead, older, older_lines, task = split_prompt(tokenizer, prompt, recent)
    _, _, reply_ids = fit_to_cutoff(lead, older + task, encode_reply(tokenizer, reply), cutoff_len)  # the reply encode_sample keeps
    lead, task, reply_ids = fit_to_cutoff(lead, task, reply_ids, cutoff_len)
    budget = cutoff_len - len(lead) - len(task) - len(reply_ids)
    if window_len is not None:
        budget = min(budget, window_len)
    parts = newest_windows(older, older_lines, windows, budget)
    return pcw_example(lead, parts, task + reply_ids, [IGNORE_INDEX] * len(task) + reply_ids)


def attention_allowed(segments):
    """Segments (..., T) -> bool (..., T, T): may query i attend key j?

    A key is visible when it is not after the query and is in the prefix, in
    the query's own segment, or the query is in the task.  Padding is never
    visible; a padding query sees only itself, so no row is empty (an
    all-masked row turns into NaN in softmax).
    """
    import torch

    seg = torch.as_tensor(segments, dtype=torch.long)
    n = seg.shape[-1]
    q, k = seg.unsqueeze(-1), seg.unsqueeze(-2)
    causal = torch.ones(n, n, dtype=torch.bool, device=seg.device).tril()
    same_part = (k == PREFIX) | (k == q) | (q == TASK)
    allowed = causal & same_part & (k != PAD) & (q != PAD)
    itself = torch.eye(n, dtype=torch.bool, device=seg.device) & (q == PAD)
    return allowed | itself


def additive_mask(allowed, dtype):
    """bool (B, q, kv) -> float (B, 1, q, kv): 0 where allowed, dtype's minimum elsewhere.

    The form eager attention adds to its scores and sdpa takes as attn_mask
    (it must have the query's dtype).
    """
    import torch

    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    low = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, low).unsqueeze(1)


def _pad(features: Sequence[Mapping[str, Sequence[int]]], pad_token_id: int, padding_side: str) -> dict:
    """Pad each key of `features` to the longest example -> {key: LongTensor (B, T)}."""
    import torch

    if padding_side not in ("left", "right"):
        raise PCWError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    if not features:
        raise PCWError("no examples to batch")
    fill = {"input_ids": pad_token_id, "position_ids": 0, "segments": PAD, "labels": IGNORE_INDEX}
    longest = max(len(f["input_ids"]) for f in features)
    out = {}
    for key in [k for k in fill if k in features[0]]:
        rows = []
        for f in features:
            gap = [fill[key]] * (longest - len(f[key]))
            rows.append(gap + list(f[key]) if padding_side == "left" else list(f[key]) + gap)
        out[key] = torch.tensor(rows, dtype=torch.long)
    return out


def collate_pcw(features: Sequence[Mapping[str, Sequence[int]]], pad_token_id: int, padding_side: str = "right",
                dtype=None) -> dict:
    """pcw_example dicts -> {"input_ids", "position_ids", "attention_mask"[, "labels"]} for model(**batch).

    attention_mask is the 4D additive mask in `dtype` (default float32):
    pass the dtype the attention runs in (the model's, e.g. bfloat16), since
    sdpa wants the mask in the query's dtype.  Padding gets label -100.
    """
    import torch

    padded = _pad(features, pad_token_id, padding_side)
    segments = padded.pop("segments")
    padded["attention_mask"] = additive_mask(attention_allowed(segments), dtype or torch.float32)
    return padded


# ------------------------------------------------------------------ the model


@dataclass
class PCWState:
    """What a decoding step needs after pcw_forward; pcw_step updates it.

    cache: the model's key/value cache (a DynamicCache).
    visible: bool (B, kv), the keys the next token may attend (every real token).
    next_positions: long (B,), the position of the next token in each row.
    """

    cache: Any
    visible: Any
    next_positions: Any


def _embeddings(model):
    """The input embeddings: their device takes the ids, their dtype is what attention runs in."""
    return model.get_input_embeddings().weight


def check_attention(model) -> None:
    """Refuse attention implementations that ignore a dense 4D mask."""
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl not in MASKED_ATTENTION:
        raise PCWError(f"Parallel Context Windows need eager or sdpa attention (an explicit 4D mask); "
                       f"this model uses {impl!r}: load it with attn_implementation='sdpa'")


def pcw_forward(model, layouts: Mapping | Sequence[Mapping], pad_token_id: int = 0, padding_side: str = "left",
                **model_kwargs):
    """One forward over PCW layouts (one dict or a list) -> (model output, PCWState).

    The output's logits are (B, T, vocab) over the padded layout; the next
    token of row b comes from its last task token (index -1 with left padding).
    Extra keyword arguments (output_hidden_states=True, ...) go to the model.
    """
    check_attention(model)
    if isinstance(layouts, Mapping):
        layouts = [layouts]
    device = _embeddings(model).device
    padded = _pad([{k: v for k, v in f.items() if k != "labels"} for f in layouts], pad_token_id, padding_side)
    segments = padded["segments"].to(device)
    mask = additive_mask(attention_allowed(segments), _embeddings(model).dtype)
    out = model(input_ids=padded["input_ids"].to(device), position_ids=padded["position_ids"].to(device),
                attention_mask=mask, use_cache=True, **model_kwargs)
    real = segments != PAD
    next_positions = padded["position_ids"].to(device).masked_fill(~real, -1).amax(dim=-1) + 1
    return out, PCWState(cache=out.cache, visible=real, next_positions=next_positions)


def pcw_step(model, state: PCWState, token_ids) -> Any:
    """Feed one token per row -> its logits (B, vocab); `state` moves on by one.

    The new token sits at each row's next position and sees every real token
    before it (the task's view: prefix, all windows, task, earlier new tokens).
    """
    import torch

    ids = torch.as_tensor(token_ids, dtype=torch.long, device=state.visible.device).reshape(-1, 1)
    visible = torch.cat([state.visible, torch.ones_like(ids, dtype=torch.bool)], dim=1)
    mask = additive_mask(visible.unsqueeze(1), _embeddings(model).dtype)
    out = model(input_ids=ids, position_ids=state.next_positions.unsqueeze(1), attention_mask=mask,
                cache=state.cache, use_cache=True)
    state.cache, state.visible, state.next_positions = out.cache, visible, state.next_positions + 1
    return out.logits[:, -1]


def greedy(input_ids: list[int], logits) -> int:
    """The most likely next token (the default next_token rule)."""
    return int(logits.argmax())


def sampling_rule(processors=None, do_sample: bool = False, generator=None) -> Callable[[list[int], Any], int]:
    """A next_token rule from transformers' logits processors, as generate() applies them.

    processors: a LogitsProcessorList (RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper, TopPLogitsWarper, ... in that order, as
    generate() builds them from a GenerationConfig), or None.  do_sample:
    draw from the processed distribution (torch.multinomial, like generate(),
    so a fixed seed gives generate()'s tokens); else take the argmax.
    """
    import torch

    def next_token(ids: list[int], logits) -> int:
        scores = logits.unsqueeze(0)
        if processors is not None:
            scores = processors(torch.tensor([ids], device=logits.device), scores)
        if do_sample:
            return int(torch.multinomial(scores.softmax(dim=-1), num_samples=1, generator=generator))
        return int(scores.argmax())

    return next_token


@dataclass
class PCWReply:
    """ids: the new tokens (without the EOS that ended them); ended_by: "eos", "stop" or "length"."""

    ids: list[int]
    ended_by: str


def pcw_generate(model, prefix: Sequence[int], windows: Sequence[Sequence[int]], task: Sequence[int],
                 max_new_tokens: int, eos_token_id: int | None = None,
                 next_token: Callable[[list[int], Any], int] = greedy,
                 stop: Callable[[list[int]], bool] | None = None) -> PCWReply:
    """Continue the task part of one PCW layout, a token at a time.

    next_token(ids, logits) picks each token from the float logits (vocab,);
    `ids` is every token so far (the layout's, then the new ones), the input
    a repetition penalty or HF LogitsProcessor reads.  stop(new_ids) is asked
    after each token (e.g. "the text reached a newline"); it may also stream.
    The caller keeps prefix + longest window + task + max_new_tokens within
    the model's positions.
    """
    import torch

    layout = pcw_layout(prefix, windows, task)
    ids, new = list(layout["input_ids"]), []
    with torch.inference_mode():
        out, state = pcw_forward(model, layout, logits_to_keep=1)  # not (T, vocab) floats for one token
        logits = out.logits[0, -1]
        while len(new) < max_new_tokens:
            token = next_token(ids, logits.float())
            if token == eos_token_id:
                return PCWReply(new, "eos")
            ids.append(token)
            new.append(token)
            if stop is not None and stop(new):
                return PCWReply(new, "stop")
            if len(new) < max_new_tokens:
                logits = pcw_step(model, state, [token])[0]
    return PCWReply(new, "length")
