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
all in the Engine class (charlora/server_engine.py); the request and response
shapes are charlora/openai_api.py, and this module is the HTTP app and its
streaming.  serve.py loads the model with
charlora.adapter.load_with_adapters.  A request's settings are the server's
ChatConfig with the request's user and sampling (a charlora.reply.Sampling)
put in, checked by charlora.config.check_config as chat.py's flags are.
"""
from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from urllib.parse import unquote

from fastapi import Request  # at module level: FastAPI reads the handlers' (string) annotations from here

# The request shapes and the engine live in their own modules; their names are
# kept importable from here (serve.py and the tests use them).
from charlora.errors import CharloraError
from charlora.openai_api import (ApiError, ChatRequest, ClientGone, CompletionRequest, Message,  # noqa: F401
                                 Sampling, chat_lines, chunk, cut_at_stops, envelope, field_path, finish_reason,
                                 speaker, sse, stop_list, stream_prefix, usage)
from charlora.server_engine import Engine, ServerConfig, check_config, checked_request  # noqa: F401

USER_HEADERS = ("x-charlora-user", "x-openwebui-user-name")
SESSION_HEADER = "x-charlora-session"
MAX_BODY_BYTES = 1 << 20
"""Bigger request bodies get 413: a chat that long could not fit the model
anyway (at most --rounds lines are used).  A body that says its size is
refused unread (declared_size_limit); one sent in chunks without a
Content-Length once this much was read (FastAPI's max_body_size on each POST
route, which alone would answer the first kind in plain text)."""


def utf8_header(value: str) -> str:
    """A header value as its sender wrote it: HTTP headers are read as latin-1,
    so raw UTF-8 bytes come out as mojibake; ASCII and real latin-1 stay as they are."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def make_app(engine: Engine):
    """The FastAPI app: /v1/models, /v1/chat/completions and /v1/completions on `engine`."""
    from fastapi import FastAPI

    c = engine.c
    app = FastAPI(title="charlora", description=c.description)
    add_error_handlers(app)

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
        # Open WebUI percent-encodes the name it forwards; other clients send raw
        # UTF-8, which the server reads as latin-1 ("Zoë" arrived as "ZoÃ«").
        named = req.user or next((unquote(utf8_header(request.headers[h])) for h in USER_HEADERS
                                  if request.headers.get(h)), None)
        user = speaker(named, "user") if named else c.defaults.user
        if user == c.name:  # it read as "the last message must be the user's"
            raise ApiError(400, f"the user is named {user!r}, as the character is: give the user a name of their own",
                           "user")
        return user

    @app.post("/v1/chat/completions", max_body_size=MAX_BODY_BYTES)
    async def chat(req: ChatRequest, request: Request):
        stops = check_model(req)
        user = who(req, request)
        session_name = request.headers.get(SESSION_HEADER, "api").strip() or "api"
        chat_lines(req.messages, c.name, user)  # bad messages fail here, before the queue

        def job(emit, gone):
            return engine.chat(req, user, session_name, emit, gone, stops)

        return await respond(engine, job, req, "chat.completion", stops, request)

    @app.post("/v1/completions", max_body_size=MAX_BODY_BYTES)
    async def completions(req: CompletionRequest, request: Request):
        stops = check_model(req)
        user = who(req, request)

        def job(emit, gone):
            return engine.complete(req, user, emit, gone, stops)

        return await respond(engine, job, req, "text_completion", stops, request)

    return app


def add_error_handlers(app) -> None:
    """Every failure as OpenAI's error body with its status, and oversized bodies refused unread."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    def not_json() -> JSONResponse:
        return JSONResponse(ApiError(400, "the request body is not valid JSON", None, "invalid_json").body(), 400)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = field_path(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            return not_json()
        if not where:  # empty, a JSON list or string, or a form: pydantic's "Field required" said nothing useful
            return JSONResponse(ApiError(400, "the request body must be a JSON object "
                                              "(Content-Type: application/json)").body(), status_code=400)
        return JSONResponse(ApiError(400, f"{where}: {first.get('msg', 'invalid value')}", where).body(),
                            status_code=400)

    def too_large() -> JSONResponse:
        return JSONResponse(ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes", None,
                                     "request_too_large").body(), status_code=413)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        if exc.status_code == 413:  # max_body_size, read in chunks
            return too_large()
        if exc.status_code == 400:  # FastAPI's only one: a body json.loads failed on not as JSONDecodeError
            return not_json()       # (bytes that are not UTF-8, nesting past Python's recursion limit)
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), type="invalid_request_error").body(),
                            status_code=exc.status_code)

    @app.exception_handler(ClientGone)
    async def client_gone(request, exc: ClientGone):
        return JSONResponse(ApiError(499, "the client closed the connection", code="client_closed").body(), 499)

    @app.exception_handler(CharloraError)
    async def our_error(request, exc: CharloraError):
        # The server's own files (a user's damaged or read-only memory file): a
        # 500 that says why, one log line, not a traceback (Exception's handler
        # runs in Starlette's outermost middleware, which logs one).
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return JSONResponse(ApiError(500, str(exc), type="server_error").body(), status_code=500)

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):
        return JSONResponse(ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error").body(),
                            status_code=500)

    def declared_size_limit(asgi):
        # Plain ASGI, not @app.middleware("http"): Starlette's BaseHTTPMiddleware
        # hides a client's hang-up from request.is_disconnected(), so a client
        # that left went unnoticed and its queued request was generated anyway.
        async def limited(scope, receive, send):
            size = dict(scope.get("headers", ())).get(b"content-length", b"")
            if scope["type"] == "http" and size.isdigit() and int(size) > MAX_BODY_BYTES:
                return await too_large()(scope, receive, send)
            await asgi(scope, receive, send)

        return limited

    app.add_middleware(declared_size_limit)


async def respond(engine: Engine, job, req: Sampling, kind: str, stops: list[str], request: Request):
    """Run `job` on the engine's thread; the whole response, or an SSE stream of its pieces."""
    from fastapi.responses import StreamingResponse

    model_id = engine.c.model_id
    rid = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex
    gone = threading.Event()
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()

    def emit(text: str) -> None:
        loop.call_soon_threadsafe(pieces.put_nowait, text)

    def done(task: asyncio.Future) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here; a client still listening gets it below
        pieces.put_nowait(None)

    task = asyncio.ensure_future(engine.run(lambda: job(emit if req.stream else lambda text: None, gone)))
    task.add_done_callback(done)
    if not req.stream:
        return envelope(model_id, rid, kind, await unless_gone(task, request, gone))
    # Headers wait for the first piece of the reply, so a request that fails
    # before it (too long, ...) still gets its own HTTP status.
    getter = asyncio.ensure_future(pieces.get())
    try:
        first = await unless_gone(getter, request, gone)
    except BaseException:
        getter.cancel()
        raise
    if first is None and not task.cancelled() and task.exception() is not None:
        raise task.exception()

    return StreamingResponse(stream_events(model_id, rid, kind, req, stops, first, pieces, task, gone),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def unless_gone(waited: asyncio.Future, request: Request, gone: threading.Event):
    """`waited`'s result, looking every 0.25 s whether the client is still
    there: one that left while its request waited in the queue or generated
    sets `gone` (the generation stops, its turn is not written) and this
    raises ClientGone.  Not streamed, nothing else would notice: the reply
    was generated, and its turn written to memory, for nobody."""
    try:
        while not (await asyncio.wait({waited}, timeout=0.25))[0]:
            if await request.is_disconnected():
                raise ClientGone
        return waited.result()
    except BaseException:
        gone.set()
        raise


async def stream_events(model_id: str, rid: str, kind: str, req: Sampling, stops: list[str], first: str | None,
                        pieces: asyncio.Queue, task: asyncio.Future, gone: threading.Event):
    """The SSE events of a streamed reply: a role chunk, the text as it grows
    (held back where a stop string may start), the finish reason, usage if
    asked, [DONE]; an error after the stream began goes into the stream."""
    sent = ""
    grown = ""
    piece = first
    try:
        yield sse(chunk(model_id, rid, kind, "", None, first=True))
        while piece is not None:
            grown += piece
            safe = stream_prefix(grown, stops)
            if len(safe) > len(sent) and safe.startswith(sent):
                yield sse(chunk(model_id, rid, kind, safe[len(sent):], None))
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
            yield sse(chunk(model_id, rid, kind, result.reply[len(sent):], None))
        yield sse(chunk(model_id, rid, kind, "", finish_reason(result.ended_by)))
        if (req.stream_options or {}).get("include_usage"):
            yield sse({**chunk(model_id, rid, kind, "", None), "choices": [], "usage": usage(result)})
        yield "data: [DONE]\n\n"
    finally:
        gone.set()  # a client that left mid-stream: generation stops, memory stays untouched


def listen(host: str, port: int) -> list:
    """Sockets bound to every address of `host` at `port`, for uvicorn.

    Bound before the model loads, so a port in use or an unknown host is one
    error line at once, not uvicorn's own log line (and exit 3) after the
    load.  As asyncio's create_server binds them: SO_REUSEADDR, IPv6 sockets
    IPv6-only."""
    import socket

    from charlora.config import require_finite

    require_finite("--port", port, 0, 65535)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise CharloraError(f"cannot listen on --host {host!r}: {exc.strerror}") from None
    sockets = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # --port 0: every address on the port the OS gave the first
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise CharloraError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sockets


def bound_port(sockets: list) -> int:
    """The port the sockets listen on: --port, or with --port 0 the one the OS chose."""
    return sockets[0].getsockname()[1]
