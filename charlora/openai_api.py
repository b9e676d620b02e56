"""The OpenAI wire format the server speaks: request models (range-checked by
pydantic), errors as OpenAI's {"error": ...} body, messages turned into
`Name:line` dialogue, stop strings (also while streaming) and the response
shapes (whole, or SSE chunks).  Pure: no model, no HTTP server.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

from charlora.config import check_speaker_name
from charlora.dialogue import Line, parse_line
from charlora.errors import CharloraError
from charlora.readers.common import one_line
from charlora.text import has_visible_text


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


def field_path(loc: tuple) -> str:
    """pydantic's error location ("body", "messages", 0, "role") as OpenAI's
    `param` writes it, messages[0].role, as our own errors do."""
    path = ""
    for part in loc[1:] if loc[:1] == ("body",) else loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


# ------------------------------------------------------------------ requests


class Strict(BaseModel):
    # Clients send many fields we don't use (logit_bias, tools off, ...): allowed, ignored.
    model_config = ConfigDict(extra="allow", strict=True)


def expected(what: str) -> WrapValidator:
    """One error for a field of several shapes: pydantic reports each shape's
    failure, and the first alone misled ("content.str: Input should be a valid
    string" for a list of numbers)."""
    def check(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("invalid_type", f"expected {what}") from None

    return WrapValidator(check)


class Message(Strict):
    # "function" is OpenAI's older "tool", still taken there (deprecated).
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Annotated[str | list[dict[str, Any]] | None,
                       expected("a string or a list of content parts ({\"type\": \"text\", \"text\": ...})")] = None
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
    # OpenAI takes any 64-bit seed; numpy, which set_seed also seeds, only
    # 0..2**32-1, so Engine.seed folds it in (a 500 before).
    seed: int | None = Field(None, ge=-2**63, le=2**63 - 1)
    # n and stream may be null, as in OpenAI's API (some clients send every field).
    n: int | None = Field(1, ge=1, le=1)
    stop: Annotated[str | list[str] | None, expected("a string or a list of strings")] = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    user: str | None = Field(None, max_length=200)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: Annotated[str | list[str], expected("a string")]


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
    the content is dropped so it isn't said twice.  System, developer, tool and
    function messages are left out wherever they are (SillyTavern's
    post-history instructions come after the user's line): the adapter learned
    the character from dialogue.
    """
    lines: list[Line] = []
    last = None
    for i, m in enumerate(messages):
        if m.role not in ("user", "assistant"):
            continue
        last = m
        who = speaker(m.name, f"messages[{i}].name") if m.name else (user if m.role == "user" else name)
        text = message_text(m, i)
        parsed = parse_line(text)
        if parsed is not None and parsed.speaker == who:
            text = parsed.text
        if has_visible_text(text):  # "\u200b" alone shows nothing: no line to answer (as in chat.py)
            lines.append(Line(who, text))
    if last is None or last.role != "user" or not lines or lines[-1].speaker == name:
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


# ------------------------------------------------------------------ responses


@dataclass
class Result:
    """A reply as the response reports it."""

    reply: str
    ended_by: str
    prompt_tokens: int
    completion_tokens: int


def finish_reason(ended_by: str) -> str:
    """OpenAI's: "length" when max_tokens ran out, else "stop" (EOS, newline, a speaker or a stop string)."""
    return "length" if ended_by == "length" else "stop"


def usage(result: Result) -> dict[str, int]:
    """OpenAI's token counts."""
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def sse(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def chunk(model_id: str, rid: str, kind: str, text: str, finish: str | None, first: bool = False) -> dict[str, Any]:
    """One streamed event: a chat.completion.chunk or a text_completion piece."""
    if kind == "chat.completion":
        delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_id,
                "choices": [choice]}
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model_id,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}


def envelope(model_id: str, rid: str, kind: str, result: Result) -> dict[str, Any]:
    """The whole (not streamed) response."""
    if kind == "chat.completion":
        choice = {"index": 0, "message": {"role": "assistant", "content": result.reply},
                  "finish_reason": finish_reason(result.ended_by), "logprobs": None}
    else:
        choice = {"index": 0, "text": result.reply, "finish_reason": finish_reason(result.ended_by),
                  "logprobs": None}
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model_id, "choices": [choice],
            "usage": usage(result)}
