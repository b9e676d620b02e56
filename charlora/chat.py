"""Stage 6: talk to the character in a terminal.

The conversation is kept as `Line` records, and every prompt is
`build_prompt(last --rounds lines, name)`: byte-for-byte the shape the adapter
was trained on.  A reply ends at end-of-sequence, at a newline, or just before
the model starts another speaker's `Name:` (inline too), so the character
never speaks for the user.

Pure pieces (cut_reply, stream_safe, fit_context, history JSON) are kept apart
from the edges that load models and read the terminal.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TextIO

from charlora.dialogue import Line, parse_line
from charlora.errors import CharloraError, quiet_libraries
from charlora.prompt import build_prompt, format_line
from charlora.samples import context_window

ENDED_BY = ("eos", "newline", "speaker", "length")
COMMANDS = "/reset, /save FILE, /load FILE, /quit"
MEMORY_COMMANDS = "/memory, /forget ITEM, /remember TEXT"


# ------------------------------------------------------------------ pure stops


def _speaker_pattern(speakers: Iterable[str]) -> re.Pattern | None:
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


# What ends a line in a dialogue file (parse_dialogue): \n, \r\n or \r.
_LINE_BREAK = re.compile(r"[\r\n]")


def cut_reply(text: str, name: str, speakers: Iterable[str], eos: bool = False) -> tuple[str, str]:
    """Generated text -> (the reply, why it ended).

    `text` is what the model wrote after `name:` (up to, not including, an EOS
    token; pass eos=True when one was generated).  The reply ends at the first
    newline ("newline") or just before another speaker's `Other:`
    ("speaker"), whichever comes first; otherwise it is the whole text, ended
    by "eos" or by running out of tokens ("length").  Surrounding spaces go.
    """
    cut, why = len(text), "eos" if eos else "length"
    newline = _LINE_BREAK.search(text)
    if newline is not None:
        cut, why = newline.start(), "newline"
    pattern = _speaker_pattern(stop_speakers(name, speakers))
    if pattern is not None:
        match = pattern.search(text, 0, cut)
        if match is not None:
            cut, why = match.start(), "speaker"
    return text[:cut].strip(), why


def stream_safe(text: str, name: str, speakers: Iterable[str]) -> str:
    """The start of the reply that no later token can change, for streaming.

    While generation runs, `text` may end with the start of a stop (`Ali` of
    `Alice:`), spaces the final strip will drop, or a half-decoded character;
    those are held back.  The result is always a prefix of the final
    cut_reply(text + whatever comes next).
    """
    reply, why = cut_reply(text, name, speakers)
    if why in ("newline", "speaker"):
        return reply
    body = text.lstrip().rstrip("\ufffd")
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
    return body[:hold].rstrip()


# -------------------------------------------------------------- pure history


def fit_context(history: Sequence[Line], name: str, rounds: int, count_tokens: Callable[[str], int],
                budget: int | None) -> list[Line]:
    """The last `rounds` lines, minus the oldest ones while the prompt is over
    `budget` tokens (None: no limit).  May return fewer lines than asked, or none."""
    lines = list(context_window(history, len(history), rounds))  # the same window as training samples
    if budget is None:
        return lines
    while lines and count_tokens(build_prompt(lines, name)) > budget:
        lines = lines[1:]
    return lines


def parallel_windows(lines: Sequence[Line], n: int, count_tokens: Callable[[Line], int],
                     budget: int) -> list[list[Line]]:
    """The newest of `lines` that fit `n` windows of `budget` tokens each, in
    their order, cut into at most n contiguous windows of about equal size.

    PCW windows share one position range, so each may be as long as the room
    the prompt leaves, and n windows hold n times the context; the newest
    lines matter most, so the oldest are what is dropped.
    """
    if n < 1 or budget < 1:
        return []
    sizes = [count_tokens(line) for line in lines]
    keep, total = 0, 0
    for size in reversed(sizes):
        if size > budget or total + size > n * budget:
            break
        keep, total = keep + 1, total + size
    lines, sizes = list(lines[len(lines) - keep :]), sizes[len(sizes) - keep :]
    # Each line to the window its middle token falls in when the kept tokens
    # are cut into n equal spans; if a window then overflows, fill windows
    # from the newest line backwards instead.
    windows: list[list[Line]] = [[] for _ in range(n)]
    start = 0
    for line, size in zip(lines, sizes):
        windows[min(n - 1, int((start + size / 2) * n / total))].append(line)
        start += size
    if any(sum(map(count_tokens, w)) > budget for w in windows):
        windows, filled = [[]], 0
        for line, size in zip(reversed(lines), reversed(sizes)):
            if filled + size > budget:
                windows.append([])
                filled = 0
            windows[-1].insert(0, line)
            filled += size
        windows = windows[:n][::-1]
    return [w for w in windows if w]


def history_to_json(history: Sequence[Line]) -> list[dict[str, str | None]]:
    return [{"speaker": line.speaker, "text": line.text} for line in history]


def history_from_json(data: Any, source: str) -> list[Line]:
    if not isinstance(data, list):
        raise CharloraError(f"{source} must be a JSON list of {{\"speaker\", \"text\"}} objects")
    lines = []
    for i, entry in enumerate(data):
        if (not isinstance(entry, dict) or not isinstance(entry.get("text"), str)
                or not (entry.get("speaker") is None or isinstance(entry.get("speaker"), str))):
            raise CharloraError(f"{source}: entry {i} is not an object with \"speaker\" (text or null) and \"text\"")
        text = one_line(entry["text"])
        if text:
            lines.append(Line(entry["speaker"] or None, text))
    return lines


def save_history(history: Sequence[Line], path: str | Path) -> None:
    from charlora.samples import write_json_atomic

    try:
        write_json_atomic(history_to_json(history), path)
    except OSError as exc:
        raise CharloraError(f"cannot write {path}: {exc.strerror}") from None


def load_history(path: str | Path) -> list[Line]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CharloraError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CharloraError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CharloraError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return history_from_json(data, str(path))


def one_line(text: str) -> str:
    """A line of the `Name:line` format has no line breaks: join its parts with spaces."""
    return " ".join(part.strip() for part in _LINE_BREAK.split(text) if part.strip())


def check_speaker_name(flag: str, value: str) -> str:
    """A name as parse_line reads it back, or an error."""
    name = " ".join(value.split())
    parsed = parse_line(f"{name}:x")
    if not name or parsed is None or parsed.speaker != name:
        raise CharloraError(f"{flag} {value!r} cannot be a speaker name in the `Name:line` format "
                            "(a letter first, then up to 39 letters, digits, spaces or . ' - _)")
    return name


# ------------------------------------------------------------- generation


class ReplyStop:
    """StoppingCriteria: stop once the new text reaches a newline or another speaker's `Name:`."""

    def __init__(self, tokenizer: Any, prompt_len: int, name: str, speakers: Sequence[str]):
        self.tokenizer, self.prompt_len, self.name, self.speakers = tokenizer, prompt_len, name, list(speakers)

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = []
        for row in input_ids:
            text = self.tokenizer.decode(row[self.prompt_len :], skip_special_tokens=True)
            done.append(cut_reply(text, self.name, self.speakers)[1] in ("newline", "speaker"))
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
        eos = self.tokenizer.eos_token_id
        ids = self.ids[: self.ids.index(eos)] if eos in self.ids else self.ids
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


@dataclass
class Settings:
    name: str
    user: str
    rounds: int = 5
    max_new_tokens: int = 120
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    greedy: bool = False
    pcw: int = 0
    """Parallel context windows for the lines before the prompt's (0: off)."""


@dataclass
class Reply:
    user: str
    reply: str
    ended_by: str

    def as_json(self) -> str:
        return json.dumps({"user": self.user, "reply": self.reply, "ended_by": self.ended_by}, ensure_ascii=False)


def max_positions(model: Any, tokenizer: Any) -> int | None:
    """How many tokens the model reads at most (None: no known limit)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else None


class ChatSession:
    """The conversation and the model that continues it; with `memory`
    (charlora.memory.ChatMemory) every line is saved as it is said and the
    prompt carries the remembered context above the recent lines."""

    def __init__(self, model: Any, tokenizer: Any, settings: Settings, memory: Any = None):
        self.model, self.tokenizer, self.s, self.memory = model, tokenizer, settings, memory
        self.history: list[Line] = []
        limit = max_positions(model, tokenizer)
        self.budget = None if limit is None else limit - settings.max_new_tokens
        floor = self.count_tokens(build_prompt([], settings.name))
        if self.budget is not None and self.budget < floor + 1:
            raise CharloraError(f"--max_new_tokens {settings.max_new_tokens} leaves no room for a prompt: "
                                f"this model reads at most {limit} tokens")

    def count_tokens(self, text: str) -> int:
        # Counted as the prompt is fed: with the tokenizer's special tokens (BOS).
        return len(self.tokenizer(text)["input_ids"])

    def speakers(self) -> list[str]:
        return stop_speakers(self.s.name, [self.s.user, *(l.speaker for l in self.history if l.speaker)])

    def prompt(self) -> str:
        """build_prompt over the newest lines that fit the model's context (after the memory lines)."""
        if self.memory is not None:
            return build_prompt(self.memory.context(self.history, self.s.rounds, self.budget), self.s.name)
        return build_prompt(fit_context(self.history, self.s.name, self.s.rounds, self.count_tokens, self.budget), self.s.name)

    def pcw_parts(self) -> tuple[list[int], list[list[int]], list[int]]:
        """(prefix, windows, task) token ids: the ordinary prompt's lines are the
        task; recalled memories and the history before them go into
        --pcw parallel windows, as much as the model's positions allow."""
        if self.memory is not None:
            context = self.memory.context(self.history, self.s.rounds, self.budget)
            recent = self.memory.last.window
            task_lines = context[len(context) - recent :] if recent else []
            older = context[: len(context) - recent] + list(self.history[: len(self.history) - recent])
        else:
            task_lines = fit_context(self.history, self.s.name, self.s.rounds, self.count_tokens, self.budget)
            older = list(self.history[: len(self.history) - len(task_lines)])
        tok = self.tokenizer
        ids = tok(build_prompt(task_lines, self.s.name))["input_ids"]
        bos = tok.bos_token_id
        prefix = ids[:1] if bos is not None and ids[:1] == [bos] else []
        task = ids[len(prefix) :]

        def line_ids(lines: Sequence[Line]) -> list[int]:
            # a window is whole lines, each ended by its newline, as in the full prompt
            return tok("".join(format_line(l) + "\n" for l in lines), add_special_tokens=False)["input_ids"]

        room = (self.budget if self.budget is not None else 4096) - len(prefix) - len(task)
        windows = parallel_windows(older, self.s.pcw, lambda l: len(line_ids([l])), room)
        return prefix, [line_ids(w) for w in windows], task

    def generate_pcw(self, stream: TextIO | None = None) -> tuple[str, str]:
        """generate() for --pcw: charlora.pcw's decoding loop with the same
        sampling (repetition penalty, temperature, top-p) and the same stops."""
        from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                  TopPLogitsWarper)

        from charlora.pcw import pcw_generate, sampling_rule

        prefix, windows, task = self.pcw_parts()
        processors = LogitsProcessorList()
        if self.s.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(self.s.repetition_penalty))
        sample = not (self.s.greedy or self.s.temperature <= 0)
        if sample:
            processors.extend([TemperatureLogitsWarper(self.s.temperature), TopPLogitsWarper(self.s.top_p)])
        speakers = self.speakers()
        streamer = ReplyStreamer(self.tokenizer, self.s.name, speakers, stream) if stream is not None else None

        def stop(new: list[int]) -> bool:
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            if streamer is not None:
                streamer.show(stream_safe(text, self.s.name, speakers))
            return cut_reply(text, self.s.name, speakers)[1] in ("newline", "speaker")

        out = pcw_generate(self.model, prefix, windows, task, self.s.max_new_tokens, self.tokenizer.eos_token_id,
                           next_token=sampling_rule(processors, do_sample=sample), stop=stop)
        reply, ended_by = cut_reply(self.tokenizer.decode(out.ids, skip_special_tokens=True), self.s.name, speakers,
                                    out.ended_by == "eos")
        if streamer is not None:
            streamer.finish(reply)
        return reply, ended_by

    def generation_config(self):
        from transformers import GenerationConfig

        # A fresh config: sampling defaults shipped with a model (and their
        # warnings) do not leak into the user's flags.
        common = {"max_new_tokens": self.s.max_new_tokens, "eos_token_id": self.tokenizer.eos_token_id,
                  "pad_token_id": self.tokenizer.pad_token_id, "repetition_penalty": self.s.repetition_penalty}
        if self.s.greedy or self.s.temperature <= 0:
            return GenerationConfig(do_sample=False, **common)
        return GenerationConfig(do_sample=True, temperature=self.s.temperature, top_p=self.s.top_p, top_k=0, **common)

    def generate(self, prompt: str, stream: TextIO | None = None) -> tuple[str, str]:
        """(reply, ended_by) for a prompt, optionally printed as it grows."""
        import torch
        from transformers import StoppingCriteriaList

        enc = self.tokenizer(prompt, return_tensors="pt").to(self.model.device)
        prompt_len = enc["input_ids"].shape[1]
        speakers = self.speakers()
        streamer = ReplyStreamer(self.tokenizer, self.s.name, speakers, stream) if stream is not None else None
        with torch.inference_mode():
            out = self.model.generate(
                **enc, generation_config=self.generation_config(), streamer=streamer,
                stopping_criteria=StoppingCriteriaList([ReplyStop(self.tokenizer, prompt_len, self.s.name, speakers)]),
            )
        new = out[0, prompt_len:].tolist()
        eos = self.tokenizer.eos_token_id in new
        if eos:
            new = new[: new.index(self.tokenizer.eos_token_id)]
        reply, ended_by = cut_reply(self.tokenizer.decode(new, skip_special_tokens=True), self.s.name, speakers, eos)
        if streamer is not None:
            streamer.finish(reply)
        return reply, ended_by

    def say(self, text: str, stream: TextIO | None = None) -> Reply:
        """The user's line in, the character's reply out; both join the history
        (an empty reply does not: the next prompt simply has the user speak again).
        With memory the user's line is saved before the reply is generated and
        stays, interrupted or not: nothing said is lost."""
        text = one_line(text)
        if not text:
            raise CharloraError("nothing to say: the line is empty")
        line = Line(self.s.user, text)
        if self.budget is not None and self.count_tokens(build_prompt([line], self.s.name)) > self.budget:
            raise CharloraError(f"that line is too long for this model: with --max_new_tokens {self.s.max_new_tokens} "
                                f"a prompt may have at most {self.budget} tokens")
        self.history.append(line)
        if self.memory is not None:
            self.memory.record(line)
        try:
            reply, ended_by = self.generate_pcw(stream) if self.s.pcw else self.generate(self.prompt(), stream)
        except BaseException:
            if self.memory is None:
                self.history.pop()  # interrupted: as if the line was never said
            raise
        if reply:
            self.history.append(Line(self.s.name, reply))
            if self.memory is not None:
                self.memory.record(self.history[-1])
        return Reply(text, reply, ended_by)


# ------------------------------------------------------------- loading


def find_adapter(loras_dir: Path, name: str) -> Path:
    """loras/<name>, or `name` as a path, holding adapter_config.json."""
    for candidate in (loras_dir / name, Path(name)):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    there = sorted(p.name for p in loras_dir.iterdir() if (p / "adapter_config.json").is_file()) if loras_dir.is_dir() else []
    listing = f"adapters in {loras_dir}/: {', '.join(there)}" if there else f"no adapters in {loras_dir}/"
    return _raise(f"adapter {loras_dir / name} not found (no adapter_config.json); {listing}")


def _raise(message: str):
    raise CharloraError(message)


def adapter_base_name(adapter: Path) -> str | None:
    try:
        cfg = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CharloraError(f"{adapter}/adapter_config.json is not readable JSON") from None
    base = cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None
    return Path(str(base).rstrip("/\\")).name if base else None


def _adapter_shapes(adapter: Path) -> dict[str, list[int]] | None:
    """{tensor name: shape} from adapter_model.safetensors (header only), or None."""
    path = adapter / "adapter_model.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # a corrupt file: let the user know which one
        raise CharloraError(f"{path} is not a readable safetensors file: {str(exc).splitlines()[0] if str(exc) else exc}") from None


def _layer_dims(module: Any) -> tuple[int, int] | None:
    """(in, out) features of a layer LoRA can wrap (Linear, GPT-2's Conv1D)."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None:
        return int(weight.shape[0]), int(weight.shape[1])
    return None


def check_adapter_fits(adapter: Path, model: Any, model_name: str) -> None:
    """Refuse an adapter made for another base model, before PEFT fails on it.

    Compares every lora_A / lora_B tensor with the layer it wraps (`model` may
    live on the meta device); the usual cause is another model size, reported
    as its hidden size.
    """
    shapes = _adapter_shapes(adapter)
    if shapes is None:
        return
    base = adapter_base_name(adapter)
    trained = f" (it was trained on {base})" if base and base != model_name else ""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden = getattr(config, "hidden_size", None)
    modules = dict(model.named_modules())
    problems: list[tuple[str, int, int, int]] = []  # (layer, want, got, which dim: 0 in / 1 out)
    for key, shape in shapes.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
        if m is None or len(shape) != 2:
            continue
        layer, ab = m.groups()
        module = modules.get(layer)
        if module is None:
            raise CharloraError(f"adapter {adapter} does not fit model {model_name}: it has no layer {layer}{trained}")
        dims = _layer_dims(module)
        if dims is None:
            continue
        if ab == "A" and shape[1] != dims[0]:
            problems.append((layer, dims[0], shape[1], 0))
        elif ab == "B" and shape[0] != dims[1]:
            problems.append((layer, dims[1], shape[0], 1))
    if not problems:
        return
    for layer, want, got, which in problems:
        if which == 0 and hidden is not None and want == hidden:
            raise CharloraError(f"adapter {adapter} was trained for a model with hidden size {got}, "
                                f"this one ({model_name}) has {want}{trained}")
    layer, want, got, which = problems[0]
    side = "inputs" if which == 0 else "outputs"
    raise CharloraError(f"adapter {adapter} does not fit model {model_name}: layer {layer} has {want} {side}, "
                        f"the adapter expects {got}{trained}")


def meta_model(model_path: Path, trust_remote_code: bool = False):
    """The model's layers without weights (meta device): shapes for free."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise CharloraError(f"cannot read the model config in {model_path}: {str(exc).splitlines()[0]}") from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def attach_adapters(model: Any, adapters: Sequence[Path], scales: Sequence[float]):
    """PeftModel with every adapter active at once, each scaled by its factor."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    names = [f"a{i}" for i in range(len(adapters))]
    try:
        for i, (adapter, label) in enumerate(zip(adapters, names)):
            if i == 0:
                model = PeftModel.from_pretrained(model, adapter, adapter_name=label)
            else:
                model.load_adapter(adapter, adapter_name=label)
    except RuntimeError as exc:  # PEFT's "size mismatch for ..." if the pre-check missed it
        raise CharloraError(f"adapter {adapter} does not fit this model: {str(exc).splitlines()[-1].strip()}") from None
    except ValueError as exc:
        raise CharloraError(f"cannot load adapter {adapter}: {str(exc).splitlines()[0]}") from None
    if len(names) > 1:
        # PeftModel.set_adapter takes one name; the LoRA tuner underneath takes a
        # list and sums the active adapters' updates.
        model.base_model.set_adapter(names, inference_mode=True)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for label, scale in zip(names, scales):
                module.set_scale(label, scale)  # scale x lora_alpha / r
    model.eval()
    return model


def load_chat_model(args: Any, log: Callable[[str], None]):
    """(model, tokenizer, description) from the CLI flags; every check of the
    user's input runs before weights are read."""
    from charlora import models

    models_dir, note = models.resolve_dir(args.models_dir, "models")
    if note:
        log(note)
    model_path = models.find_model(models_dir, args.model_name)
    adapters: list[Path] = []
    if args.lora_name:
        loras_dir, note = models.resolve_dir(args.loras_dir, "loras")
        if note:
            log(note)
        adapters = [find_adapter(loras_dir, name) for name in args.lora_name]
    scales = list(args.lora_scale or [1.0])
    if len(scales) == 1:
        scales = scales * len(adapters)
    elif len(scales) != len(adapters):
        raise CharloraError(f"--lora_scale takes one factor for all adapters or one per adapter "
                            f"({len(adapters)}), got {len(scales)}")
    if adapters:
        shapes = meta_model(model_path, args.trust_remote_code)
        for adapter in adapters:
            check_adapter_fits(adapter, shapes, model_path.name)
        del shapes

    device = models.pick_device()
    dtype = models.pick_dtype(args.dtype, device)
    tokenizer = models.load_tokenizer(model_path, args.trust_remote_code)
    from transformers import AutoConfig

    n_params = models.count_parameters(AutoConfig.from_pretrained(model_path, trust_remote_code=args.trust_remote_code))
    quant = models.choose_quantization(args.quantization, 2 * n_params, models.available_memory(device))
    model = models.load_model(model_path, quant, dtype, device, args.trust_remote_code)
    model.eval()
    if adapters:
        model = attach_adapters(model, adapters, scales)
        for adapter in adapters:
            base = adapter_base_name(adapter)
            if base and base != model_path.name:
                log(f"note: adapter {adapter} was trained on {base}; using it on {model_path.name} (same layer shapes)")
    what = model_path.name + "".join(f" + {a.name}" + (f" x{s:g}" if s != 1 else "") for a, s in zip(adapters, scales))
    return model, tokenizer, f"{what} on {device}, {str(dtype).removeprefix('torch.')}, quantization {quant}"


# ------------------------------------------------------------- the loop


class Quit(Exception):
    pass


def commands(session: ChatSession) -> str:
    return COMMANDS if session.memory is None else f"{COMMANDS}, {MEMORY_COMMANDS}"


def handle_command(session: ChatSession, line: str, log: Callable[[str], None]) -> None:
    """/reset, /save FILE, /load FILE, /quit, and with memory /memory, /forget
    ITEM, /remember TEXT; a mistake is reported, not fatal."""
    command, _, arg = line.partition(" ")
    arg = arg.strip()
    memory = session.memory
    if command == "/quit":
        raise Quit
    if memory is not None and command == "/memory":
        for row in memory.describe():
            log(row)
    elif memory is not None and command in ("/forget", "/remember") and not arg:
        log(f"error: {command} needs " + ("an item from /memory, e.g. /forget t12" if command == "/forget"
                                          else "a fact, e.g. /remember my sister is called Ana"))
    elif memory is not None and command == "/forget":
        log(memory.forget(arg, session.history))
    elif memory is not None and command == "/remember":
        fact_id = memory.store.add_fact(one_line(arg))
        log(f"(remembered as f{fact_id})" if fact_id else "(already remembered)")
    elif command == "/reset":
        session.history.clear()
        if memory is not None:
            memory.new_session()  # the old session stays in long-term memory
            log(f"(conversation cleared; new session {memory.session_name!r})")
        else:
            log("(conversation cleared)")
    elif command in ("/save", "/load") and not arg:
        log(f"error: {command} needs a file name, e.g. {command} chat.json")
    elif command == "/save":
        save_history(session.history, arg)
        log(f"(saved {len(session.history)} lines to {arg})")
    elif command == "/load":
        session.history = load_history(arg)
        if memory is not None:
            memory.new_session()
            for loaded in session.history:
                memory.record(loaded)
        log(f"(loaded {len(session.history)} lines from {arg})")
    else:
        log(f"error: unknown command {command}; commands: {commands(session)} "
            "(start a line with // to say something starting with /)")


def run(args: Any, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    def log(message: str) -> None:
        print(message, file=stderr, flush=True)

    if args.rounds < 0:
        raise CharloraError(f"--rounds must be 0 or more, got {args.rounds}")
    if args.pcw < 0:
        raise CharloraError(f"--pcw must be 0 (off) or a number of windows, got {args.pcw}")
    if args.max_new_tokens < 1:
        raise CharloraError(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}")
    if not 0 < args.top_p <= 1:
        raise CharloraError(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.repetition_penalty <= 0:
        raise CharloraError(f"--repetition_penalty must be positive, got {args.repetition_penalty}")
    name = check_speaker_name("--name", args.name)
    user = check_speaker_name("--user", args.user)
    if name == user:
        raise CharloraError(f"--user and --name are both {name!r}: the user needs a name of their own")
    if args.say is not None and not one_line(args.say):
        raise CharloraError("--say needs some text")
    memory_settings = memory_settings_from(args)
    store = None
    if memory_settings is not None:  # a bad memory file stops us before any weights are read
        from charlora.memory import MemoryStore, memory_file

        store = MemoryStore(memory_file(memory_settings.memory_dir, name, user), name, user)
    try:
        return chat_with(args, name, user, store, memory_settings, stdin, stdout, stderr, log)
    finally:
        if store is not None:
            store.close()


def chat_with(args: Any, name: str, user: str, store: Any, memory_settings: Any, stdin: TextIO, stdout: TextIO,
              stderr: TextIO, log: Callable[[str], None]) -> int:
    quiet_libraries(progress_bars=False)
    model, tokenizer, what = load_chat_model(args, log)
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    settings = Settings(name, user, args.rounds, args.max_new_tokens, args.temperature, args.top_p,
                        args.repetition_penalty, args.greedy, args.pcw)
    session = ChatSession(model, tokenizer, settings)
    if store is not None:
        session.memory = open_memory(store, memory_settings, args.embedder, session, log)
    return converse(args, session, what, stdin, stdout, stderr, log)


def memory_settings_from(args: Any):
    """MemorySettings from the flags, or None when memory is off (no --memory,
    --session or --memory_dir: a plain chat writes no file)."""
    from charlora.memory import MemorySettings

    if not (args.memory or args.session is not None or args.memory_dir is not None):
        return None
    for flag in ("short_term_tokens", "summary_tokens", "facts_tokens", "recall_tokens", "recall_k"):
        if getattr(args, flag) < 0:
            raise CharloraError(f"--{flag} must be 0 or more, got {getattr(args, flag)}")
    if not 0 <= args.recall_threshold <= 1:
        raise CharloraError(f"--recall_threshold must be in [0, 1], got {args.recall_threshold}")
    if args.session is not None and not args.session.strip():
        raise CharloraError("--session needs a name")
    return MemorySettings(memory_dir=Path(args.memory_dir or MemorySettings.memory_dir),
                          session=args.session.strip() if args.session else None,
                          short_term_tokens=args.short_term_tokens, summary_tokens=args.summary_tokens,
                          facts_tokens=args.facts_tokens, recall_tokens=args.recall_tokens, recall_k=args.recall_k,
                          recall_threshold=args.recall_threshold, recall_method=args.recall_method,
                          summarizer=args.summarizer)


def open_memory(store: Any, settings: Any, embedder_choice: str, session: ChatSession, log: Callable[[str], None]):
    """Memory over the pair's file, with a resumed session's lines put back into the conversation."""
    from charlora.memory import ChatMemory
    from charlora.memory.embed import load_embedder
    from charlora.memory.summarize import Summarizer

    embedder = load_embedder(embedder_choice, log) if settings.recall_method != "keyword" else None
    summarizer = Summarizer(settings.summarizer, session.model, session.tokenizer, session.count_tokens)
    memory = ChatMemory(store, session.s.name, session.s.user, settings, count_tokens=session.count_tokens,
                        embedder=embedder, summarizer=summarizer)
    session.history = memory.history()
    state = f"resumed with {len(session.history)} lines" if memory.resumed else "new"
    log(f"memory: {memory.store.path}, session {memory.session_name!r} ({state})")
    return memory


def converse(args: Any, session: ChatSession, what: str, stdin: TextIO, stdout: TextIO, stderr: TextIO,
             log: Callable[[str], None]) -> int:
    name, user = session.s.name, session.s.user

    def emit(reply: Reply) -> None:
        print(reply.as_json() if args.json else reply.reply, file=stdout, flush=True)

    if args.say is not None:
        emit(session.say(args.say))
        return 0

    interactive = stdin.isatty()
    stream = stdout if interactive and not args.json and stdout.isatty() else None
    # The real terminal: input() gives line editing (and history, with readline).
    line_editing = interactive and stdin is sys.stdin and stdout is sys.stdout
    if line_editing:
        try:
            import readline  # noqa: F401
        except ImportError:
            pass
    if interactive:
        log(f"{what}\nyou are {user}, talking to {name}; {commands(session)}; Ctrl-D to leave")
    while True:
        try:
            if line_editing:
                try:
                    raw = input(f"{user}: ") + "\n"
                except EOFError:
                    raw = ""
            else:
                if interactive:
                    stdout.write(f"{user}: ")
                    stdout.flush()
                raw = stdin.readline()
        except KeyboardInterrupt:
            log("\n(bye)" if interactive else "interrupted")
            return 130
        if not raw:  # EOF
            if interactive:
                log("\n(bye)")
            return 0
        text = raw.strip()
        if not text:
            continue
        started = False
        try:
            if text.startswith("/") and not text.startswith("//"):
                handle_command(session, text, log)
                continue
            said = text[1:] if text.startswith("//") else text
            if stream is not None:
                stdout.write(f"{name}: ")
                stdout.flush()
                started = True
            emit_reply = session.say(said, stream)
        except Quit:
            if interactive:
                log("(bye)")
            return 0
        except CharloraError as exc:
            if started:
                stdout.write("\n")
                stdout.flush()
            log(f"error: {exc}")
            continue
        except KeyboardInterrupt:
            if started:
                stdout.write("\n")
                stdout.flush()
            log("(reply interrupted; Ctrl-C again at the prompt or Ctrl-D to leave)" if interactive else "interrupted")
            if not interactive:
                return 130
            continue
        if stream is None:
            emit(emit_reply)
