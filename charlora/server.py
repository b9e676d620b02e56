"""Stage 7: the character behind an OpenAI-compatible HTTP API (serve.py).

SillyTavern, Open WebUI and any `openai` client talk to it through
/v1/models, /v1/chat/completions and /v1/completions, streamed (SSE) or not.

- A chat request becomes the `Name:line` prompt training used: build_prompt
  via ChatSession, one line per message, the speaker being the message's
  `name`, else the request's `user` (user messages) or the character
  (assistant messages).  System messages are not dialogue and are left out.
- Replies stop by chat.py's rule (ChatSession: end-of-sequence, newline, or
  another speaker's `Name:`), then at the request's `stop` strings.
- One generation thread serves every request in arrival order, so requests
  never interleave inside the model or inside a memory file; a request waits
  in the queue instead (at most --max_queue, then 503).
- With --memory each user (the request's `user`, or the X-Charlora-User /
  X-OpenWebUI-User-Name header) has a memory file as in chat.py --memory, and
  the server keeps that user's conversation, as chat.py --session does: a
  request's new line is its last message (earlier messages only seed a
  conversation the server has not seen).  A turn (the user's line and the
  reply) is written only once the whole reply was generated with the client
  still connected, both lines together, so a client that drops mid-stream
  leaves no half turn behind.

The model is reached only through ChatSession's public API (constructor,
`.history`, `.say`, `.generate`, `.pcw_parts`, `.count_tokens`, `.budget`),
all in the Engine class below; serve.py loads it with
charlora.adapter.load_with_adapters.  A request's settings are the server's
ChatConfig with the request's user and sampling (a charlora.reply.Sampling)
put in, checked by charlora.config.check_config as chat.py's flags are.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal
from urllib.parse import unquote

from fastapi import Request  # at module level: FastAPI reads the handlers' (string) annotations from here
from pydantic import BaseModel, ConfigDict, Field

from charlora.chat import ChatSession
from charlora.config import ChatConfig, check_speaker_name, require_finite
from charlora.config import check_config as check_chat_config
from charlora.dialogue import Line, parse_line
from charlora.errors import CharloraError
from charlora.readers.common import one_line

USER_HEADERS = ("x-charlora-user", "x-openwebui-user-name")
SESSION_HEADER = "x-charlora-session"


# ------------------------------------------------------------------ errors


class ApiError(Exception):
    """An OpenAI-style error: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ClientGone(Exception):
    """The client closed the stream: stop generating, write nothing."""


# ------------------------------------------------------------------ requests


class Strict(BaseModel):
    # Clients send many fields we don't use (logit_bias, tools off, ...): allowed, ignored.
    model_config = ConfigDict(extra="allow")


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class Sampling(Strict):
    """The OpenAI sampling fields, range-checked (non-finite numbers are refused)."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    # OpenAI's penalties are accepted within their range but not applied: the
    # model is steered by repetition_penalty (text-generation-webui's and
    # vLLM's field, which SillyTavern sends).
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False)
    repetition_penalty: float | None = Field(None, gt=0, le=10, allow_inf_nan=False)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = Field(None, max_length=200)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str | list[str]


def stop_list(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise ApiError(400, "stop takes at most 4 non-empty strings", "stop")
    return stops


def message_text(message: Message, i: int) -> str:
    """A message's text on one line (list content: its text parts joined)."""
    content = message.content
    if isinstance(content, list):
        if any(part.get("type") != "text" or not isinstance(part.get("text"), str) for part in content):
            raise ApiError(400, f"messages[{i}]: only text content is understood", f"messages[{i}].content")
        content = " ".join(part["text"] for part in content)
    return one_line(content or "")


def speaker(value: str, what: str) -> str:
    try:
        return check_speaker_name(what, value)
    except CharloraError as exc:
        raise ApiError(400, str(exc), what) from None


def chat_lines(messages: list[Message], name: str, user: str) -> tuple[list[Line], Line]:
    """(the conversation before the last message, the last message as the user's line).

    Speakers: a message's `name`, else `user` for user messages and the
    character for assistant ones; a leading `Speaker:` that a client wrote into
    the content is dropped so it isn't said twice.  System, developer and tool
    messages are left out: the adapter learned the character from dialogue.
    """
    lines: list[Line] = []
    for i, m in enumerate(messages):
        if m.role not in ("user", "assistant"):
            continue
        who = speaker(m.name, f"messages[{i}].name") if m.name else (user if m.role == "user" else name)
        text = message_text(m, i)
        parsed = parse_line(text)
        if parsed is not None and parsed.speaker == who:
            text = parsed.text
        if text:
            lines.append(Line(who, text))
    last = messages[-1]
    if last.role != "user" or not lines or lines[-1].speaker == name:
        raise ApiError(400, "the last message must be the user's, with some text: the character answers it",
                       "messages")
    return lines[:-1], lines[-1]


def cut_at_stops(text: str, stops: list[str]) -> tuple[str, bool]:
    """(text up to the first stop string, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut].rstrip(), True)


def stream_prefix(text: str, stops: list[str]) -> str:
    """The start of `text` no stop string can still cut: a tail that may be the
    beginning of a stop string is held back."""
    text, found = cut_at_stops(text, stops)
    if found:
        return text
    hold = len(text)
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = min(hold, len(text) - k)
                break
    return text[:hold]


# ------------------------------------------------------------------ the engine


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


@dataclass
class Result:
    reply: str
    ended_by: str
    prompt_tokens: int
    completion_tokens: int


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
            raise ApiError(400, str(exc), "max_tokens") from None

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

            set_seed(req.seed)

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
            state.history.extend(history)
            pending.pending.extend(history)
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
        except CharloraError as exc:  # the user's line alone is longer than the model reads
            raise ApiError(400, str(exc), "messages", "context_length_exceeded") from None
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
        prompt = prompts[0]
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


# ------------------------------------------------------------------ HTTP


def finish_reason(ended_by: str) -> str:
    """OpenAI's: "length" when max_tokens ran out, else "stop" (EOS, newline, a speaker or a stop string)."""
    return "length" if ended_by == "length" else "stop"


def make_app(engine: Engine):
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    c = engine.c
    app = FastAPI(title="charlora", description=c.description)

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return JSONResponse(ApiError(400, "the request body is not valid JSON", None, "invalid_json").body(), 400)
        message = f"{where}: {first.get('msg', 'invalid value')}" if where else first.get("msg", "invalid request")
        return JSONResponse(ApiError(400, message, where or None).body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), type="invalid_request_error").body(),
                            status_code=exc.status_code)

    @app.exception_handler(ClientGone)
    async def client_gone(request, exc: ClientGone):
        return JSONResponse(ApiError(499, "the client closed the connection", code="client_closed").body(), 499)

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):
        return JSONResponse(ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error").body(),
                            status_code=500)

    @app.middleware("http")
    async def body_limit(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY_BYTES:
            return JSONResponse(ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes", None,
                                         "request_too_large").body(), status_code=413)
        return await call_next(request)

    created = int(time.time())

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": c.model_id, "object": "model", "created": created,
                                            "owned_by": "charlora"}]}

    def check_model(req: Sampling) -> list[str]:
        if req.model != c.model_id:
            raise ApiError(404, f"the model {req.model!r} does not exist; this server has {c.model_id!r}", "model",
                           "model_not_found")
        return stop_list(req.stop)

    def who(req: Sampling, request: Request) -> str:
        # Open WebUI percent-encodes the name it forwards.
        named = req.user or next((unquote(request.headers[h]) for h in USER_HEADERS if request.headers.get(h)), None)
        return speaker(named, "user") if named else c.defaults.user

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        stops = check_model(req)
        user = who(req, request)
        session_name = request.headers.get(SESSION_HEADER, "api").strip() or "api"
        chat_lines(req.messages, c.name, user)  # bad messages fail here, before the queue

        def job(emit, gone):
            return engine.chat(req, user, session_name, emit, gone, stops)

        return await respond(job, req, "chat.completion", stops, request)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        stops = check_model(req)
        user = who(req, request)

        def job(emit, gone):
            return engine.complete(req, user, emit, gone, stops)

        return await respond(job, req, "text_completion", stops, request)

    async def respond(job, req: Sampling, kind: str, stops: list[str], request: Request):
        rid = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex
        gone = threading.Event()
        if not req.stream:
            result = await engine.run(lambda: job(lambda text: None, gone))
            return envelope(rid, kind, result)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def emit(text: str) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, text)

        def done(task: asyncio.Future) -> None:
            if not task.cancelled():
                task.exception()  # retrieved here; a client still listening gets it below
            pieces.put_nowait(None)

        task = asyncio.ensure_future(engine.run(lambda: job(emit, gone)))
        task.add_done_callback(done)
        # Headers wait for the first piece of the reply, so a request that fails
        # before it (too long, ...) still gets its own HTTP status; a client
        # that leaves while its request waits in the queue is noticed here.
        getter = asyncio.ensure_future(pieces.get())
        try:
            while not (await asyncio.wait({getter}, timeout=0.25))[0]:
                if await request.is_disconnected():
                    raise ClientGone
            first = getter.result()
        except BaseException:
            gone.set()
            getter.cancel()
            raise
        if first is None and not task.cancelled() and task.exception() is not None:
            raise task.exception()

        async def events():
            sent = ""
            grown = ""
            piece = first
            try:
                yield sse(chunk(rid, kind, "", None, first=True))
                while piece is not None:
                    grown += piece
                    safe = stream_prefix(grown, stops)
                    if len(safe) > len(sent) and safe.startswith(sent):
                        yield sse(chunk(rid, kind, safe[len(sent):], None))
                        sent = safe
                    piece = await pieces.get()
                try:
                    result = task.result()
                except ApiError as exc:
                    yield sse(exc.body())
                    return
                except Exception as exc:  # noqa: BLE001  the stream has begun: the error goes in it
                    yield sse(ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error").body())
                    return
                if result.reply.startswith(sent) and len(result.reply) > len(sent):
                    yield sse(chunk(rid, kind, result.reply[len(sent):], None))
                yield sse(chunk(rid, kind, "", finish_reason(result.ended_by)))
                if (req.stream_options or {}).get("include_usage"):
                    yield sse({**chunk(rid, kind, "", None), "choices": [], "usage": usage(result)})
                yield "data: [DONE]\n\n"
            finally:
                gone.set()  # a client that left mid-stream: generation stops, memory stays untouched

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def chunk(rid: str, kind: str, text: str, finish: str | None, first: bool = False) -> dict[str, Any]:
        if kind == "chat.completion":
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": c.model_id,
                    "choices": [choice]}
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": c.model_id,
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}

    def envelope(rid: str, kind: str, result: Result) -> dict[str, Any]:
        if kind == "chat.completion":
            choice = {"index": 0, "message": {"role": "assistant", "content": result.reply},
                      "finish_reason": finish_reason(result.ended_by), "logprobs": None}
        else:
            choice = {"index": 0, "text": result.reply, "finish_reason": finish_reason(result.ended_by),
                      "logprobs": None}
        return {"id": rid, "object": kind, "created": int(time.time()), "model": c.model_id, "choices": [choice],
                "usage": usage(result)}

    return app


MAX_BODY_BYTES = 1 << 20
"""Bigger request bodies get 413 before they are read: a chat that long
could not fit the model anyway (at most --rounds lines are used)."""


def usage(result: Result) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


# A request's field for each flag check_config may name (the request's own
# fields are range-checked by pydantic first; this is the same rule chat.py's
# flags meet, so a value the server takes is one chat.py takes).
REQUEST_FIELDS = {"--max_new_tokens": "max_tokens", "--temperature": "temperature", "--top_p": "top_p",
                  "--repetition_penalty": "repetition_penalty", "--user": "user"}


def checked_request(cfg: ChatConfig) -> ChatConfig:
    """A request's settings through check_config, a refusal as a 400 naming the request's field."""
    try:
        return check_chat_config(cfg)
    except CharloraError as exc:
        message = str(exc)
        flag = message.split(" ", 1)[0]
        param = REQUEST_FIELDS.get(flag)
        raise ApiError(400, message.replace(flag, param, 1) if param else message, param) from None


def check_config(c: ServerConfig) -> ServerConfig:
    """The server's own flags, before any weights are read: the chat settings
    by chat.py's check_config (names normalized), then the server's limits."""
    c = replace(c, defaults=check_chat_config(c.defaults))
    d = c.defaults.sampling
    if d.max_new_tokens > c.max_tokens_limit:
        raise CharloraError(f"--max_new_tokens {d.max_new_tokens} is over --max_tokens_limit {c.max_tokens_limit}")
    require_finite("--max_queue", c.max_queue, 1)
    return c
