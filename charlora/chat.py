"""Stage 8: the conversation with the character, and the terminal loop around it.

The conversation is kept as `Line` records, and every prompt is
`build_prompt(last --rounds lines, name)`: byte-for-byte the shape the adapter
was trained on.  Replies come from charlora.reply (its stop rules: end of
sequence, a newline, or another speaker's `Name:`), so the character never
speaks for the user and says what evaluate.py measured.

For a server (or any other front end), the public API is:

    from charlora.chat import ChatSession
    from charlora.config import ChatConfig, check_config
    session = ChatSession.open(check_config(ChatConfig(model_name=..., lora_name=[...], name="Bob", user="Alice")),
                               log=print)
    reply = session.say("Good morning")       # -> Reply(user, reply, ended_by); history and memory updated
    session.say("More?", stream=some_file)   # the reply is also written to some_file as it grows
    session.history                           # list[Line]; /reset-like: session.reset()
    session.close()                           # closes the memory file, if any

`ChatSession(model, tokenizer, Settings(...), memory)` takes an already
loaded model instead.  Window building for --pcw is charlora.pcw's
(pcw_prompt), the loader charlora.adapter.load_with_adapters.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from charlora.cli import USER_ERROR, GuardedOutput
from charlora.config import ChatConfig, chat_settings, check_config
from charlora.dialogue import Line
from charlora.errors import CharloraError, ContextTooLong, OutputFailed, quiet_libraries
from charlora.history import load_history, save_history
from charlora.models import max_positions
from charlora.prompt import build_prompt, fit_context
from charlora.readers.common import one_line
from charlora.reply import generate_pcw_reply, generate_reply, stop_speakers
from charlora.text import clean_line, has_visible_text, strip_controls

COMMANDS = "/reset, /save FILE, /load FILE, /quit"
MEMORY_COMMANDS = "/memory, /forget ITEM, /remember TEXT"


# ------------------------------------------------------------- the session


# A session's settings are a ChatConfig; built by hand (tests, benches) with
# Settings("Bob", "Alice", rounds=2, greedy=True).
Settings = chat_settings


@dataclass
class Reply:
    user: str
    reply: str
    ended_by: str

    def as_json(self) -> str:
        return json.dumps({"user": self.user, "reply": self.reply, "ended_by": self.ended_by}, ensure_ascii=False)


class ChatSession:
    """The conversation and the model that continues it; with `memory`
    (charlora.memory.ChatMemory) every line is saved as it is said and the
    prompt carries the remembered context above the recent lines."""

    def __init__(self, model: Any, tokenizer: Any, settings: ChatConfig, memory: Any = None):
        self.model, self.tokenizer, self.s, self.memory = model, tokenizer, settings, memory
        self.history: list[Line] = []
        self.description = ""
        limit = max_positions(model, tokenizer)
        self.budget = None if limit is None else limit - settings.sampling.max_new_tokens
        floor = self.count_tokens(build_prompt([], settings.name))
        if self.budget is not None and self.budget < floor + 1:
            raise CharloraError(f"--max_new_tokens {settings.sampling.max_new_tokens} leaves no room for a prompt: "
                                f"this model reads at most {limit} tokens")

    @classmethod
    def open(cls, cfg: ChatConfig, log: Callable[[str], None]) -> "ChatSession":
        """A session from a checked config (check_config): the memory file
        first (a bad one stops us before any weights are read), then the model."""
        from charlora.adapter import load_with_adapters

        store = open_store(cfg)
        try:
            model, tokenizer, what = load_with_adapters(cfg, cfg.lora_name or [], cfg.lora_scale, log)
            if cfg.seed is not None:
                from transformers import set_seed

                set_seed(cfg.seed)
            session = cls(model, tokenizer, cfg)
            session.description = what
            if store is not None:
                session.memory = open_memory(store, cfg, session, log)
        except BaseException:
            if store is not None:
                store.close()
            raise
        return session

    def close(self) -> None:
        if self.memory is not None:
            self.memory.store.close()

    def count_tokens(self, text: str) -> int:
        # Counted as the prompt is fed: with the tokenizer's special tokens (BOS).
        return len(self.tokenizer(text)["input_ids"])

    def speakers(self) -> list[str]:
        return stop_speakers(self.s.name, [self.s.user, *(l.speaker for l in self.history if l.speaker)])

    def prompt(self) -> str:
        """build_prompt over the newest lines that fit the model's context (after the memory lines)."""
        if self.memory is not None:
            return build_prompt(self.memory.context(self.history, self.s.rounds, self.budget), self.s.name)
        return build_prompt(fit_context(self.history, self.s.name, self.s.rounds, self.count_tokens, self.budget),
                            self.s.name)

    def pcw_parts(self) -> tuple[list[int], list[list[int]], list[int]]:
        """(prefix, windows, task) token ids: the ordinary prompt's lines are the
        task; recalled memories and the history before them go into --pcw
        parallel windows, as much as the model's positions allow, split as
        training splits them (pcw.pcw_prompt)."""
        from charlora.pcw import pcw_prompt

        if self.memory is not None:
            context = self.memory.context(self.history, self.s.rounds, self.budget)
            recent = self.memory.last.window
            task_lines = context[len(context) - recent :] if recent else []
            older = context[: len(context) - recent] + list(self.history[: len(self.history) - recent])
        else:
            task_lines = fit_context(self.history, self.s.name, self.s.rounds, self.count_tokens, self.budget)
            older = list(self.history[: len(self.history) - len(task_lines)])
        prompt = build_prompt([*older, *task_lines], self.s.name)
        return pcw_prompt(self.tokenizer, prompt, self.s.pcw, len(task_lines), self.budget)

    def generate_pcw(self, stream: TextIO | None = None) -> tuple[str, str]:
        """generate() for --pcw: the same sampling and stops over parallel windows."""
        got = generate_pcw_reply(self.model, self.tokenizer, *self.pcw_parts(), self.s.name, self.speakers(),
                                 self.s.sampling, stream)
        return got.reply, got.ended_by

    def generate(self, prompt: str, stream: TextIO | None = None) -> tuple[str, str]:
        """(reply, ended_by) for a prompt, optionally printed as it grows."""
        got = generate_reply(self.model, self.tokenizer, prompt, self.s.name, self.speakers(), self.s.sampling,
                             stream=stream)
        return got.reply, got.ended_by

    def reset(self) -> None:
        """Start over; with memory a new session begins (the old one stays in long-term memory)."""
        if self.memory is not None:
            self.memory.new_session()  # first: if the file refuses it, the conversation stays as it was
        self.history.clear()

    def say(self, text: str, stream: TextIO | None = None) -> Reply:
        """The user's line in, the character's reply out; both join the history
        (an empty reply does not: the next prompt simply has the user speak again).
        With memory the user's line is saved before the reply is generated and
        stays, interrupted or not: nothing said is lost.  Each line joins the
        history only once the memory file has it, so a file that can't be
        written (CharloraError) leaves history and memory in step."""
        text = clean_line(one_line(text))
        if not has_visible_text(text):  # a zero-width space is no line either (text.has_visible_text)
            raise CharloraError("nothing to say: the line is empty")
        line = Line(self.s.user, text)
        if self.budget is not None and self.count_tokens(build_prompt([line], self.s.name)) > self.budget:
            raise ContextTooLong(f"that line is too long for this model: with --max_new_tokens {self.s.sampling.max_new_tokens} "
                                 f"a prompt may have at most {self.budget} tokens")
        if self.memory is not None:
            self.memory.record(line)
        self.history.append(line)
        try:
            reply, ended_by = self.generate_pcw(stream) if self.s.pcw else self.generate(self.prompt(), stream)
        except BaseException:
            if self.memory is None:
                self.history.pop()  # interrupted: as if the line was never said
            raise
        if reply:
            if self.memory is not None:
                self.memory.record(Line(self.s.name, reply))
            self.history.append(Line(self.s.name, reply))
        return Reply(text, reply, ended_by)


def memory_settings(cfg: ChatConfig):
    """MemorySettings from a checked config, or None when memory is off."""
    from charlora.memory import MemorySettings

    if not cfg.memory_on:
        return None
    return MemorySettings(memory_dir=Path(cfg.memory_dir or MemorySettings.memory_dir), session=cfg.session,
                          short_term_tokens=cfg.short_term_tokens, summary_tokens=cfg.summary_tokens,
                          facts_tokens=cfg.facts_tokens, recall_tokens=cfg.recall_tokens, recall_k=cfg.recall_k,
                          recall_threshold=cfg.recall_threshold, recall_method=cfg.recall_method,
                          summarizer=cfg.summarizer)


def open_store(cfg: ChatConfig):
    """The pair's memory file (None: memory off)."""
    settings = memory_settings(cfg)
    if settings is None:
        return None
    from charlora.memory import MemoryStore, memory_file

    return MemoryStore(memory_file(settings.memory_dir, cfg.name, cfg.user), cfg.name, cfg.user)


def open_memory(store: Any, cfg: ChatConfig, session: ChatSession, log: Callable[[str], None]):
    """Memory over the pair's file, with a resumed session's lines put back into the conversation."""
    from charlora.memory import ChatMemory
    from charlora.memory.embed import load_embedder
    from charlora.memory.summarize import Summarizer

    settings = memory_settings(cfg)
    embedder = load_embedder(cfg.embedder, log) if settings.recall_method != "keyword" else None
    summarizer = Summarizer(settings.summarizer, session.model, session.tokenizer, session.count_tokens)
    memory = ChatMemory(store, session.s.name, session.s.user, settings, count_tokens=session.count_tokens,
                        embedder=embedder, summarizer=summarizer)
    session.history = memory.history()
    state = f"resumed with {len(session.history)} lines" if memory.resumed else "new"
    log(f"memory: {memory.store.path}, session {memory.session_name!r} ({state})")
    return memory


# ------------------------------------------------------------- the loop


class Quit(Exception):
    pass


def commands(session: ChatSession) -> str:
    return COMMANDS if session.memory is None else f"{COMMANDS}, {MEMORY_COMMANDS}"


def handle_command(session: ChatSession, line: str, log: Callable[[str], None]) -> None:
    """/reset, /save FILE, /load FILE, /quit, and with memory /memory, /forget
    ITEM, /remember TEXT; a mistake is a CharloraError, which turn() reports."""
    command, _, arg = line.partition(" ")
    arg = arg.strip()
    memory = session.memory
    if arg and command in ("/quit", "/reset", "/memory"):  # "/memory Sam" listed everything, as if asked
        raise CharloraError(f"{command} takes nothing after it (got {arg!r})")
    if command == "/quit":
        raise Quit
    if memory is not None and command == "/memory":
        for row in memory.describe():
            log(row)
    elif memory is not None and command == "/forget" and not arg:
        raise CharloraError("/forget needs an item from /memory, e.g. /forget t12")
    elif memory is not None and command == "/forget":
        log(memory.forget(arg, session.history))
    elif memory is not None and command == "/remember":
        log(memory.remember(arg))
    elif command == "/reset":
        session.reset()
        log("(conversation cleared)" if memory is None else f"(conversation cleared; new session {memory.session_name!r})")
    elif command in ("/save", "/load") and not arg:
        raise CharloraError(f"{command} needs a file name, e.g. {command} chat.json")
    elif command == "/save":
        save_history(session.history, arg)
        log(f"(saved {len(session.history)} lines to {arg})")
    elif command == "/load":
        lines = load_history(arg)
        if memory is None:
            session.history = lines
        else:  # line by line, as say() does: a file that stops taking them leaves history and memory in step
            memory.new_session()
            session.history = []
            for loaded in lines:
                memory.record(loaded)
                session.history.append(loaded)
        log(f"(loaded {len(session.history)} lines from {arg})")
    else:
        raise CharloraError(f"unknown command {command}; commands: {commands(session)} "
                            "(start a line with // to say something starting with /)")




def run(cfg: ChatConfig | Any, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """chat.py: `cfg` is a ChatConfig or chat.py's parsed flags."""
    from charlora.config import from_args

    def log(message: str) -> None:
        try:
            print(strip_controls(message), file=stderr, flush=True)
        except OSError:  # `2>/dev/full`: a notice that can't be shown must not lose the reply
            pass

    cfg = check_config(cfg if isinstance(cfg, ChatConfig) else from_args(ChatConfig, cfg))
    quiet_libraries(progress_bars=False)
    session = ChatSession.open(cfg, log)
    try:
        return converse(cfg, session, stdin, stdout, stderr, log)
    finally:
        session.close()


class Terminal:
    """Where lines come from and replies go: a real terminal (line editing), a
    fake one in tests, or pipes (one turn a line, no prompts)."""

    def __init__(self, cfg: ChatConfig, stdin: TextIO, stdout: TextIO):
        self.stdin, self.stdout = stdin, GuardedOutput(stdout)
        self.interactive = stdin.isatty()
        self.stream = self.stdout if self.interactive and not cfg.json and stdout.isatty() else None
        # The real terminal: input() gives line editing (and history, with readline).
        self.line_editing = self.interactive and stdin is sys.stdin and stdout is sys.stdout
        if self.line_editing:
            try:
                import readline  # noqa: F401
            except ImportError:
                pass

    def read(self, prompt: str) -> str:
        """The next line, "" at end of input (Ctrl-D)."""
        if self.line_editing:
            try:
                return input(prompt) + "\n"
            except EOFError:
                return ""
        if self.interactive:
            self.write(prompt)
        return self.stdin.readline()

    def write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()


def converse(cfg: ChatConfig, session: ChatSession, stdin: TextIO, stdout: TextIO, stderr: TextIO,
             log: Callable[[str], None]) -> int:
    """The turns until /quit, end of input or Ctrl-C at the prompt -> exit status."""
    out = GuardedOutput(stdout)

    def emit(reply: Reply) -> None:
        print(reply.as_json() if cfg.json else strip_controls(reply.reply), file=out, flush=True)

    if cfg.say is not None:
        emit(session.say(cfg.say))
        return 0
    term = Terminal(cfg, stdin, stdout)
    if term.interactive:
        log(f"{session.description}\nyou are {cfg.user}, talking to {cfg.name}; {commands(session)}; "
            "Ctrl-D to leave")
    while True:
        try:
            raw = term.read(f"{cfg.user}: ")
        except KeyboardInterrupt:
            log("\n(bye)" if term.interactive else "interrupted")
            return 130
        if not raw:  # EOF
            if term.interactive:
                log("\n(bye)")
            return 0
        status = turn(session, raw.strip(), term, emit, log)
        if status is not None:
            return status


def turn(session: ChatSession, text: str, term: Terminal, emit: Callable[[Reply], None],
         log: Callable[[str], None]) -> int | None:
    """One input line: a command or a line said -> an exit status, or None to go on.

    A mistake is one `error:` line; at a terminal the chat goes on, from a
    pipe it ends with status 2: a script can't read the error between the
    replies, and a turn left out shifted every later reply onto the wrong line."""
    if not has_visible_text(clean_line(one_line(text))):  # blank, escapes, controls, zero-width: nothing said
        return None
    started = False
    try:
        if text.startswith("/") and not text.startswith("//"):
            handle_command(session, text, log)
            return None
        if term.stream is not None:
            term.write(f"{session.s.name}: ")
            started = True
        reply = session.say(text[1:] if text.startswith("//") else text, term.stream)
    except Quit:
        if term.interactive:
            log("(bye)")
        return 0
    except OutputFailed:
        raise  # no later reply could be shown either: the chat ends (cli.run prints it)
    except CharloraError as exc:
        if started:
            term.write("\n")
        log(f"error: {exc}")
        return None if term.interactive else USER_ERROR
    except KeyboardInterrupt:
        if started:
            term.write("\n")
        if not term.interactive:
            log("interrupted")
            return 130
        log("(reply interrupted; Ctrl-C again at the prompt or Ctrl-D to leave)")
        return None
    if term.stream is None:
        emit(reply)
    return None
