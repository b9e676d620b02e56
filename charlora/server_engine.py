"""The server's engine: the model behind one generation thread, each user's
memory and conversation, and a request's settings checked as chat.py's flags
are (charlora.config.check_config).  The model is reached only through
ChatSession's public API.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from charlora.chat import ChatSession
from charlora.config import ChatConfig, require_finite
from charlora.config import check_config as check_chat_config
from charlora.dialogue import Line, parse_line
from charlora.errors import CharloraError, ContextTooLong
from charlora.openai_api import (ApiError, ChatRequest, ClientGone, CompletionRequest, Result, Sampling, chat_lines,
                                 cut_at_stops)
from charlora.text import strip_controls


@dataclass
class ServerConfig:
    defaults: ChatConfig
    """The character (name), the user's name when a request gives none, and
    the sampling a request does not set (.sampling): chat.py's ChatConfig, so both agree."""
    model_id: str = "charlora"
    """The id /v1/models lists and requests must name."""
    max_tokens_limit: int = 512
    """The most max_tokens a request may ask for."""
    max_queue: int = 64
    """Requests waiting for the generation thread before new ones get 503."""
    memory: Any = None
    """charlora.memory.MemorySettings, or None: no memory."""
    embedder: str = "auto"
    description: str = ""

    @property
    def name(self) -> str:
        return self.defaults.name


class ServedSession(ChatSession):
    """ChatSession that notes how many tokens its last prompt had (for `usage`)."""

    prompt_tokens = 0

    def generate(self, prompt, stream=None):
        self.prompt_tokens = self.count_tokens(prompt)
        return super().generate(prompt, stream)

    def pcw_parts(self):
        prefix, windows, task = super().pcw_parts()
        self.prompt_tokens = len(prefix) + sum(map(len, windows)) + len(task)
        return prefix, windows, task


class Pipe:
    """The `stream` ChatSession writes a growing reply to: hands each new piece
    to the event loop, and stops generation once the client is gone."""

    def __init__(self, emit: Callable[[str], None], gone: threading.Event):
        self.emit, self.gone = emit, gone

    def write(self, text: str) -> None:
        if self.gone.is_set():
            raise ClientGone
        if text != "\n":  # ChatSession ends a streamed reply with a newline for terminals
            self.emit(text)

    def flush(self) -> None:
        pass


@dataclass
class UserState:
    memory: Any
    history: list[Line] = field(default_factory=list)


# The most earlier lines of a new conversation that join a user's memory (~12 ms each).
SEED_LINES = 500


class DeferredMemory:
    """ChatMemory whose record() waits: lines go to the file only on commit(),
    one after the other, once the whole reply was generated."""

    def __init__(self, memory: Any):
        self.memory, self.pending = memory, []

    def __getattr__(self, attr: str):
        return getattr(self.memory, attr)

    def record(self, line: Line) -> None:
        self.pending.append(line)

    def commit(self) -> None:
        for line in self.pending:
            self.memory.record(line)
        self.pending = []


class Engine:
    """The model, its one generation thread, and each user's memory.

    Every call that touches the model or a memory file runs on `worker`, one
    at a time, so SQLite connections stay on the thread that opened them."""

    def __init__(self, model: Any, tokenizer: Any, config: ServerConfig):
        self.model, self.tokenizer, self.c = model, tokenizer, config
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charlora-generate")
        self.users: dict[str, UserState] = {}
        self.waiting = 0
        self.embedder = None
        self.embedder_loaded = False

    def settings(self, req: Sampling, user: str) -> ChatConfig:
        d = self.c.defaults.sampling
        max_new = req.max_completion_tokens or req.max_tokens or d.max_new_tokens
        if max_new > self.c.max_tokens_limit:
            raise ApiError(400, f"max_tokens is at most {self.c.max_tokens_limit} on this server, got {max_new}",
                           "max_tokens")
        temperature = d.temperature if req.temperature is None else req.temperature
        sampling = replace(d, max_new_tokens=max_new, temperature=temperature,
                           top_p=d.top_p if req.top_p is None else req.top_p,
                           repetition_penalty=d.repetition_penalty if req.repetition_penalty is None
                           else req.repetition_penalty,
                           greedy=temperature == 0)
        return checked_request(replace(self.c.defaults, user=user, sampling=sampling))

    def session(self, settings: ChatConfig, memory: Any = None) -> ServedSession:
        try:
            return ServedSession(self.model, self.tokenizer, settings, memory)
        except CharloraError as exc:
            raise ApiError(400, in_request_terms(str(exc)), "max_tokens") from None

    def user_state(self, user: str, session_name: str) -> UserState:
        """This user's memory and conversation (worker thread only)."""
        from charlora.memory import ChatMemory, MemoryStore, memory_file
        from charlora.memory.embed import load_embedder
        from charlora.memory.summarize import Summarizer

        key = f"{user}\n{session_name}"
        if key not in self.users:
            settings = replace(self.c.memory, session=session_name)
            if not self.embedder_loaded and settings.recall_method != "keyword":
                self.embedder, self.embedder_loaded = load_embedder(self.c.embedder, print), True
            count = self.session(replace(self.c.defaults, user=user)).count_tokens
            memory = ChatMemory(MemoryStore(memory_file(settings.memory_dir, self.c.name, user), self.c.name, user),
                                self.c.name, user, settings, count_tokens=count, embedder=self.embedder,
                                summarizer=Summarizer(settings.summarizer, self.model, self.tokenizer, count))
            self.users[key] = UserState(memory, memory.history())
        return self.users[key]

    def seed(self, req: Sampling) -> None:
        if req.seed is not None:
            from transformers import set_seed

            set_seed(req.seed % 2**32)  # the same seed, the same reply: folded, not refused

    # Both run on the worker thread.
    def chat(self, req: ChatRequest, user: str, session_name: str, emit: Callable[[str], None],
             gone: threading.Event, stops: list[str]) -> Result:
        if gone.is_set():
            raise ClientGone
        history, said = chat_lines(req.messages, self.c.name, user)
        settings = self.settings(req, said.speaker)
        self.seed(req)
        if self.c.memory is None:
            session = self.session(settings)
            session.history = history
            return self.say(session, said.text, emit, gone, stops)
        state = self.user_state(user, session_name)
        pending = DeferredMemory(state.memory)
        kept = len(state.history)
        if not state.history:  # a chat the server has not seen: its earlier lines join the memory with this turn
            # The newest SEED_LINES only: each is embedded and written on this one
            # thread, and 20,000 messages (under 1 MiB) held every user up for minutes.
            seeded = history[-SEED_LINES:]
            state.history.extend(seeded)
            pending.pending.extend(seeded)
        session = self.session(settings, pending)
        session.history = state.history
        try:
            result = self.say(session, said.text, emit, gone, stops)
            if gone.is_set():
                raise ClientGone
        except BaseException:
            del state.history[kept:]  # as if the line was never said: nothing reached the file
            raise
        pending.commit()
        return result

    def say(self, session: ServedSession, text: str, emit, gone, stops) -> Result:
        try:
            reply = session.say(text, Pipe(emit, gone))
        except ContextTooLong as exc:  # the user's line alone is longer than the model reads
            raise ApiError(400, in_request_terms(str(exc)), "messages", "context_length_exceeded") from None
        cut, stopped = cut_at_stops(reply.reply, stops)
        if stopped and session.history and session.history[-1].speaker == self.c.name:
            session.history.pop()
            if session.memory is not None:
                session.memory.pending.pop()
            if cut:
                session.history.append(Line(self.c.name, cut))
                if session.memory is not None:
                    session.memory.pending.append(Line(self.c.name, cut))
        return Result(cut, "stop" if stopped else reply.ended_by, session.prompt_tokens, self.completion_tokens(cut))

    def complete(self, req: CompletionRequest, user: str, emit, gone: threading.Event, stops: list[str]) -> Result:
        if gone.is_set():
            raise ClientGone
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if len(prompts) != 1:
            raise ApiError(400, "prompt must be one string", "prompt")
        # Continued as written, line breaks too, but cleaned as chat lines are: a
        # lone surrogate (JSON's "\ud800") made the tokenizer fail (a 500).
        prompt = strip_controls(prompts[0])
        if not prompt:  # "" (or control characters alone) was a 500 from a model without a BOS token
            raise ApiError(400, "prompt is empty: give the text to continue", "prompt")
        session = self.session(self.settings(req, user))
        # The prompt's own speakers end the reply too, as in a chat.
        session.history = [line for line in map(parse_line, prompt.splitlines()) if line is not None]
        if session.budget is not None and session.count_tokens(prompt) > session.budget:
            raise ApiError(400, f"the prompt has {session.count_tokens(prompt)} tokens; with max_tokens "
                           f"{session.s.sampling.max_new_tokens} this model reads at most {session.budget}", "prompt",
                           "context_length_exceeded")
        self.seed(req)
        reply, ended_by = session.generate(prompt, Pipe(emit, gone))
        cut, stopped = cut_at_stops(reply, stops)
        return Result(cut, "stop" if stopped else ended_by, session.prompt_tokens, self.completion_tokens(cut))

    def completion_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    async def run(self, job: Callable[[], Result]) -> Result:
        """`job` on the generation thread, after those queued before it."""
        if self.waiting >= self.c.max_queue:
            raise ApiError(503, f"the server is busy ({self.waiting} requests queued); try again shortly",
                           code="server_busy", type="server_error")
        self.waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.worker, job)
        finally:
            self.waiting -= 1


# A request's field for each flag check_config may name (the request's own
# fields are range-checked by pydantic first; this is the same rule chat.py's
# flags meet, so a value the server takes is one chat.py takes).
REQUEST_FIELDS = {"--max_new_tokens": "max_tokens", "--temperature": "temperature", "--top_p": "top_p",
                  "--repetition_penalty": "repetition_penalty", "--user": "user"}


def in_request_terms(message: str) -> str:
    """A ChatSession or check_config message with the request's field names
    for chat.py's flags: a client never set --max_new_tokens."""
    for flag, param in REQUEST_FIELDS.items():
        message = message.replace(flag, param)
    return message


def checked_request(cfg: ChatConfig) -> ChatConfig:
    """A request's settings through check_config, a refusal as a 400 naming the request's field."""
    try:
        return check_chat_config(cfg)
    except CharloraError as exc:
        message = str(exc)
        raise ApiError(400, in_request_terms(message), REQUEST_FIELDS.get(message.split(" ", 1)[0])) from None


def check_config(c: ServerConfig) -> ServerConfig:
    """The server's own flags, before any weights are read: the chat settings
    by chat.py's check_config (names normalized), then the server's limits."""
    c = replace(c, defaults=check_chat_config(c.defaults))
    d = c.defaults.sampling
    if d.max_new_tokens > c.max_tokens_limit:
        raise CharloraError(f"--max_new_tokens {d.max_new_tokens} is over --max_tokens_limit {c.max_tokens_limit}")
    require_finite("--max_queue", c.max_queue, 1)
    return c
