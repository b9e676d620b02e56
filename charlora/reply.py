"""Stage 7: one reply generator for chat, evaluation, the post-training samples and PCW.

A reply is what the model writes after `Name:`.  It ends at end-of-sequence
(training teaches an EOS after every reply), at the first newline, or just
before another speaker's `Other:` (inline too), so the character never speaks
for anyone else.  Every caller goes through `generate_replies` /
`generate_reply` (or `generate_pcw_reply` for Parallel Context Windows), so
for the same prompt and settings a reply scored by evaluate.py is
byte-for-byte what chat.py --greedy says and what training prints at its end
(tested).  The settings differ by default: chat applies a repetition
penalty of 1.1 even with --greedy; evaluate.py --repetition_penalty 1.1
measures that.

Pure pieces (testable without a model):
  other_speaker_at   where another speaker's turn starts: THE rule for "speaks for another speaker"
  cut_reply          generated text -> (reply, ended_by)
  stream_safe        the prefix of a growing reply that no later token can change
  until_eos          token ids up to the first EOS
  Sampling           how tokens are picked (greedy, temperature, top-p, repetition guards)
Edges (a model): generation_config, logits_processors, ReplyStop, ReplyStreamer,
generate_replies, generate_reply, generate_pcw_reply, sample_reply.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, TextIO

from charlora.dialogue import parse_line
from charlora.errors import CharloraError
from charlora.prompt import prompt_speakers
from charlora.text import SPACING, clean_line, strip_controls

# What ends a line in a dialogue file (parse_dialogue): \n, \r\n or \r.
LINE_BREAK = re.compile(r"[\r\n]")
# ended_by values that mean "the reply is over" before EOS or the token budget.
STOPS = ("newline", "speaker")


# ------------------------------------------------------------------ pure stops


def speaker_pattern(speakers: Iterable[str]) -> re.Pattern | None:
    """`Name:` of any of `speakers` (None: nobody to match)."""
    names = sorted({s for s in speakers if s}, key=len, reverse=True)
    if not names:
        return None
    # A name not glued to a word before it ("Sure. Alice:", "Alice:" at the
    # start), spaces allowed before the colon as the dialogue format allows,
    # ASCII or full-width colon.
    return re.compile(r"(?<!\w)(?:%s)[ \t]*[:\uff1a]" % "|".join(re.escape(n) for n in names))


def stop_speakers(name: str, speakers: Iterable[str]) -> list[str]:
    """The speakers whose `Name:` ends a reply by `name`: everyone but `name`."""
    return sorted({s for s in speakers if s and s != name})


def other_speaker_at(text: str, name: str, speakers: Iterable[str]) -> int | None:
    """Where, in text generated after `name:`, someone else starts to speak (None: nowhere).

    Another known speaker's `Other:` anywhere (inline too), or the start of a
    later line that parses as a line by someone other than `name` (any name:
    the model may invent a speaker).  The first line's own `Word:` is not
    read as a speaker unless it is a known one ("Note: the apples").
    """
    found = []
    pattern = speaker_pattern(stop_speakers(name, speakers))
    if pattern is not None:
        match = pattern.search(text)
        if match is not None:
            found.append(match.start())
    for brk in LINE_BREAK.finditer(text):
        start = brk.end()
        nxt = LINE_BREAK.search(text, start)
        line = parse_line(text[start : nxt.start() if nxt else len(text)])
        if line is not None and line.speaker is not None and line.speaker != name:
            found.append(start)
            break
    return min(found, default=None)


def speaks_for_other(text: str, name: str, speakers: Iterable[str]) -> bool:
    """Does generated text contain a line by someone other than `name`?"""
    return other_speaker_at(text, name, speakers) is not None


def cut_reply(text: str, name: str, speakers: Iterable[str], eos: bool = False) -> tuple[str, str]:
    """Generated text -> (the reply, why it ended).

    `text` is what the model wrote after `name:` (up to, not including, an EOS
    token; pass eos=True when one was generated).  The reply ends at the first
    newline ("newline") or just before another speaker's `Other:`
    ("speaker", other_speaker_at), whichever comes first; otherwise it is the
    whole text, ended by "eos" or by running out of tokens ("length").
    Surrounding spaces go, so do escapes and controls (before the stops are
    looked for: memory, history and the server get the reply as it shows).
    """
    text = strip_controls(text, keep=SPACING)  # what shows is what is kept, checked and sent
    cut, why = len(text), "eos" if eos else "length"
    newline = LINE_BREAK.search(text)
    if newline is not None:
        cut, why = newline.start(), "newline"
    other = other_speaker_at(text, name, speakers)
    if other is not None and other < cut:
        cut, why = other, "speaker"
    return clean_line(text[:cut]).strip(), why


def stream_safe(text: str, name: str, speakers: Iterable[str]) -> str:
    """The start of the reply that no later token can change, for streaming.

    While generation runs, `text` may end with the start of a stop (`Ali` of
    `Alice:`), spaces the final strip will drop, or a half-decoded character;
    those are held back.  The result is always a prefix of the final
    cut_reply(text + whatever comes next).
    """
    reply, why = cut_reply(text, name, speakers)
    if why in STOPS:
        return reply
    body = strip_controls(text, keep=SPACING).lstrip().rstrip("\ufffd")
    hold = len(body)
    for speaker in stop_speakers(name, speakers):
        # Any suffix that is a prefix of `Speaker  :` and not glued to a word.
        for start in range(max(0, len(body) - len(speaker) - 8), len(body)):
            if start > 0 and (body[start - 1].isalnum() or body[start - 1] == "_"):
                continue
            tail = body[start:]
            head, rest = tail[: len(speaker)], tail[len(speaker) :]
            if speaker.startswith(head) and (not rest or rest.strip(" \t") == ""):
                hold = min(hold, start)
                break
    return clean_line(body[:hold]).rstrip()


def until_eos(ids: Sequence[int], eos_token_id: int | None) -> tuple[list[int], bool]:
    """(the ids before the first EOS, whether there was one)."""
    ids = list(ids)
    return (ids[: ids.index(eos_token_id)], True) if eos_token_id is not None and eos_token_id in ids else (ids, False)


# A reply may not repeat a token n-gram of its own.  transformers'
# no_repeat_ngram_size bans n-grams repeated anywhere in the sequence, prompt
# included; in dialogue that forbids echoing the other speaker's words, which
# people do all the time.  Greedy replies of a small adapter, on the other
# hand, loop ("Hal, Hal, Hal, ...", "a buckler, and a buckler, and a
# buckler"), and a loop never reaches its end-of-sequence token.
REPLY_NGRAM_BLOCK = 3
"""Token n-grams a reply may not repeat (0 = off).  Measured with the
default-settings Falstaff adapter (seed 42) on his first 40 prompts in The
Merry Wives of Windsor, greedy, 80 new tokens: no ban 28/40 clean endings and
52% of replies repeating a word 4-gram; a 4-gram ban 39/40 and 22%; a
trigram ban 40/40 and 5%."""


def make_reply_ngram_block(n: int, prompt_len: int | None = None) -> Any:
    """A LogitsProcessor banning, in each row, any token that would complete
    an n-gram already present in that row's tokens from `prompt_len` on.
    prompt_len None: the width of the first input_ids it sees, which in a
    generate() call is the (padded) prompt; so use one instance per call."""
    import torch
    from transformers import LogitsProcessor

    class ReplyNgramBlock(LogitsProcessor):
        start = prompt_len

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            if self.start is None:
                self.start = input_ids.shape[1]
            reply = input_ids[:, self.start :]
            if n <= 0 or reply.shape[1] < n:
                return scores
            for row, ids in enumerate(reply.tolist()):
                banned = banned_next(ids, n)
                if banned:
                    scores[row, list(banned)] = -float("inf")
            return scores

    return ReplyNgramBlock()


def banned_next(ids: list[int], n: int) -> set[int]:
    """Tokens that would make the last n-1 tokens plus themselves an n-gram
    already in `ids`."""
    if n <= 0 or len(ids) < n:
        return set()
    tail = tuple(ids[len(ids) - n + 1 :]) if n > 1 else ()
    return {ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i : i + n - 1]) == tail}


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked.  The defaults are the measuring ones (greedy, the reply-only
    trigram ban): evaluate.py's and the post-training samples'; chat's are in config.ChatConfig."""

    max_new_tokens: int = 80
    """Longest reply in tokens."""
    greedy: bool = True
    """Always the likeliest token; temperature and top_p are then unused."""
    temperature: float = 1.0
    """Sampling temperature; 0, or under 1e-5 (vLLM's cut), is greedy: the limit sampling
    tends to, and logits divided by 1e-300 overflowed to infinity (NaN probabilities)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the likeliest tokens up to this probability."""
    repetition_penalty: float = 1.0
    """Above 1 makes tokens already in the prompt or reply less likely (1: off)."""
    no_repeat_ngram_size: int = 0
    """Never repeat an n-gram of this many tokens, prompt included (0: off)."""
    reply_ngram_block: int = REPLY_NGRAM_BLOCK
    """Never let the reply repeat an n-gram of this many tokens of its own (0: off);
    the prompt is not looked at, and the ban is the same for every row of a batch."""

    @property
    def sampled(self) -> bool:
        return not self.greedy and self.temperature >= 1e-5  # see `temperature`

    @property
    def reads_history(self) -> bool:
        """Do the logits processors read earlier tokens (so left padding would change them)?"""
        return self.repetition_penalty != 1.0 or self.no_repeat_ngram_size > 0


@dataclass
class Generated:
    """One generated reply."""
    reply: str
    """What the character says: cut_reply of `text`."""
    ended_by: str
    """Why the reply ended: "eos", "length", "newline" or "speaker"."""
    text: str
    """Everything decoded before EOS (with stop=False: the whole continuation)."""
    eos: bool
    """An EOS token was generated (within the budget)."""


def finish(tokenizer: Any, ids: Sequence[int], name: str, speakers: Iterable[str]) -> Generated:
    """Generated ids (EOS and what follows included, if any) -> Generated."""
    ids, eos = until_eos(ids, tokenizer.eos_token_id)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    reply, ended_by = cut_reply(text, name, speakers, eos)
    return Generated(reply, ended_by, text, eos)


# ------------------------------------------------------------- the model


def generation_config(sampling: Sampling, tokenizer: Any):
    """A fresh GenerationConfig, so sampling defaults shipped with a model (and
    their warnings) do not leak into the user's settings."""
    from transformers import GenerationConfig

    common = {"max_new_tokens": sampling.max_new_tokens, "eos_token_id": tokenizer.eos_token_id,
              "pad_token_id": tokenizer.pad_token_id, "repetition_penalty": sampling.repetition_penalty,
              "no_repeat_ngram_size": sampling.no_repeat_ngram_size}
    if not sampling.sampled:
        return GenerationConfig(do_sample=False, **common)
    return GenerationConfig(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0, **common)


def logits_processors(sampling: Sampling):
    """The processors generate() builds from generation_config(sampling), in its
    order, for decoding loops of our own (PCW)."""
    from transformers import (LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor,
                              TemperatureLogitsWarper, TopPLogitsWarper)

    processors = LogitsProcessorList([refuse_nan])
    if sampling.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
    if sampling.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGramLogitsProcessor(sampling.no_repeat_ngram_size))
    if sampling.reply_ngram_block > 0:  # a fresh one: it learns where the reply starts
        processors.append(make_reply_ngram_block(sampling.reply_ngram_block))
    if sampling.sampled:
        processors.extend([TemperatureLogitsWarper(sampling.temperature), TopPLogitsWarper(sampling.top_p)])
    return processors


class ReplyStop:
    """StoppingCriteria: a row is done once its new text reaches a newline or another speaker."""

    def __init__(self, tokenizer: Any, prompt_len: int, name: str, speakers: Sequence[str]):
        self.tokenizer, self.prompt_len, self.name, self.speakers = tokenizer, prompt_len, name, list(speakers)

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = []
        for row in input_ids:
            text = self.tokenizer.decode(row[self.prompt_len :], skip_special_tokens=True)
            done.append(cut_reply(text, self.name, self.speakers)[1] in STOPS)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class ReplyStreamer:
    """A generate() streamer that prints the reply as it grows, never past its cut."""

    def __init__(self, tokenizer: Any, name: str, speakers: Sequence[str], out: TextIO):
        self.tokenizer, self.name, self.speakers, self.out = tokenizer, name, list(speakers), out
        self.ids: list[int] = []
        self.shown = ""
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt
            self.prompt_seen = True
            return
        self.ids.extend(int(v) for v in value.reshape(-1).tolist())
        self.show_ids(self.ids)

    def show_ids(self, ids: Sequence[int]) -> None:
        ids, _ = until_eos(ids, self.tokenizer.eos_token_id)
        self.show(stream_safe(self.tokenizer.decode(ids, skip_special_tokens=True), self.name, self.speakers))

    def show(self, text: str) -> None:
        if text.startswith(self.shown) and len(text) > len(self.shown):
            self.out.write(text[len(self.shown) :])
            self.out.flush()
            self.shown = text

    def end(self) -> None:
        pass

    def finish(self, reply: str) -> None:
        self.show(reply)
        self.out.write("\n")
        self.out.flush()


NOT_NUMBERS = ("the model's next-token probabilities are not numbers (NaN or infinity): its weights are damaged, "
               "or --lora_scale is too large")


@contextmanager
def finite_scores():
    """torch.multinomial's error on NaN / infinite probabilities (sampling),
    which damaged weights or a huge --lora_scale give, as the user's error."""
    try:
        yield
    except RuntimeError as exc:
        if "probability tensor contains" not in str(exc):
            raise
        raise CharloraError(NOT_NUMBERS) from None


def refuse_nan(input_ids, scores):
    """A logits processor, first in line: NaN scores are the same error in
    greedy decoding, where argmax picks token 0 from them without a word and
    the reply is garbage (sampling fails in torch.multinomial instead)."""
    import torch

    if torch.isnan(scores).any():
        raise CharloraError(NOT_NUMBERS)
    return scores


def generate_replies(model: Any, tokenizer: Any, prompts: Sequence[str], name: str, speakers: Iterable[str],
                     sampling: Sampling = Sampling(), *, stop: bool = True, stream: TextIO | None = None,
                     batch_size: int = 8, add_special_tokens: bool = True) -> list[Generated]:
    """A reply by `name` to each `build_prompt` prompt.

    stop=True ends each row at its reply's end (newline / another speaker);
    stop=False lets it run to EOS or the budget, so evaluation sees what the
    model would do on its own.  For greedy decoding the reply is the same
    either way.  Prompts go in left-padded batches: on CPU a batch of 8 costs
    little more per step than one prompt, since each step is bound by reading
    the weights.  Padding moves the logits a little (other sums, other
    rounding): in fp32 by ~1e-5, far below the top-2 gaps greedy decoding
    meets, so a batch gives the one-at-a-time replies (tested; 8 of 8 on
    SmolLM2-135M) though not by construction; in bf16 by up to ~0.5, and
    greedy decoding can then pick another token (7 of 8 identical;
    docs/replies/README.md).  batch_size=1 is exact.  Processors that read earlier tokens (repetition guards)
    would read the padding too, so those settings decode one prompt at a time.
    `stream`: print the (single) reply as it grows.
    """
    import torch
    from transformers import StoppingCriteriaList

    speakers = list(speakers)
    if stream is not None and len(prompts) != 1:
        raise ValueError("streaming takes one prompt at a time")
    step = 1 if sampling.reads_history else max(1, batch_size)
    config = generation_config(sampling, tokenizer)
    out: list[Generated] = []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for start in range(0, len(prompts), step):
            chunk = list(prompts[start : start + step])
            # No padding for one prompt: a tokenizer without a pad token can still take it.
            enc = tokenizer(chunk, return_tensors="pt", padding=len(chunk) > 1,
                            add_special_tokens=add_special_tokens).to(model.device)
            prompt_len = enc["input_ids"].shape[1]
            stops = StoppingCriteriaList([ReplyStop(tokenizer, prompt_len, name, speakers)]) if stop else None
            streamer = ReplyStreamer(tokenizer, name, speakers, stream) if stream is not None else None
            block = [refuse_nan] + ([make_reply_ngram_block(sampling.reply_ngram_block, prompt_len)]
                                    if sampling.reply_ngram_block > 0 else [])
            with torch.inference_mode(), finite_scores():
                ids = model.generate(**enc, generation_config=config, streamer=streamer, stopping_criteria=stops,
                                     logits_processor=block)
            out.extend(finish(tokenizer, row, name, speakers) for row in ids[:, prompt_len:].tolist())
            if streamer is not None:
                streamer.finish(out[-1].reply)
    finally:
        tokenizer.padding_side = side
    return out


def generate_reply(model: Any, tokenizer: Any, prompt: str, name: str, speakers: Iterable[str],
                   sampling: Sampling = Sampling(), *, stop: bool = True, stream: TextIO | None = None,
                   add_special_tokens: bool = True) -> Generated:
    """generate_replies for one prompt."""
    return generate_replies(model, tokenizer, [prompt], name, speakers, sampling, stop=stop, stream=stream,
                            add_special_tokens=add_special_tokens)[0]


def generate_pcw_reply(model: Any, tokenizer: Any, prefix: Sequence[int], windows: Sequence[Sequence[int]],
                       task: Sequence[int], name: str, speakers: Iterable[str], sampling: Sampling = Sampling(),
                       stream: TextIO | None = None) -> Generated:
    """generate_reply over a Parallel Context Windows layout (token ids, pcw.pcw_layout):
    charlora.pcw's decoding loop with the same sampling and the same stops."""
    from charlora.pcw import pcw_generate, sampling_rule

    speakers = list(speakers)
    streamer = ReplyStreamer(tokenizer, name, speakers, stream) if stream is not None else None

    def stopped(new: list[int]) -> bool:
        text = tokenizer.decode(new, skip_special_tokens=True)
        if streamer is not None:
            streamer.show(stream_safe(text, name, speakers))
        return cut_reply(text, name, speakers)[1] in STOPS

    with finite_scores():
        out = pcw_generate(model, prefix, windows, task, sampling.max_new_tokens, tokenizer.eos_token_id,
                           next_token=sampling_rule(logits_processors(sampling), do_sample=sampling.sampled),
                           stop=stopped)
    result = finish(tokenizer, out.ids + ([tokenizer.eos_token_id] if out.ended_by == "eos" else []), name, speakers)
    if streamer is not None:
        streamer.finish(result.reply)
    return result


def sample_reply(model: Any, tokenizer: Any, prompt: str,
                 max_new_tokens: int = Sampling.max_new_tokens) -> tuple[str, bool]:
    """The replies printed after training: generate_reply with the measuring
    (greedy) settings, the character and the speakers read from the prompt.
    Returns (reply, ended by EOS)."""
    name, speakers = prompt_speakers(prompt)
    got = generate_reply(model, tokenizer, prompt, name, speakers, Sampling(max_new_tokens=max_new_tokens))
    return got.reply, got.eos
