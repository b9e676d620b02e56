"""Readers for chat exports, so a person can be mimicked from their own messages:
WhatsApp's text export, Telegram's JSON export (result.json), DiscordChatExporter
JSON, SillyTavern chat logs (JSONL) and OpenAI-style `messages` JSON.

Each is a pure function text -> Reading.  A message becomes one Line (its line
breaks joined by spaces).  Timestamps, system notices, media placeholders and
deleted messages are dropped and counted; send times come back in
Reading.times so a long silence can end a conversation (--split_scenes).
Malformed input raises CharloraError, never anything else.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Iterable

from charlora.dialogue import Line
from charlora.errors import CharloraError
from charlora.readers.common import DELETED, MEDIA, SYSTEM, TIMESTAMPS, Reading, one_line, physical_lines


class _Chat:
    """Accumulates kept messages with their send times, and dropped counts."""

    def __init__(self) -> None:
        self.lines: list[Line] = []
        self.times: list[datetime | None] = []
        self.dropped: Counter[str] = Counter()
        self.new_conversation = False

    def say(self, speaker: str, text: str, when: datetime | None) -> bool:
        speaker, text = one_line(speaker), one_line(text)
        if not (speaker and text):
            return False
        self.lines.append(Line(speaker, text, self.new_conversation and bool(self.lines)))
        self.times.append(when)
        self.new_conversation = False
        return True

    def reading(self) -> Reading:
        return Reading(self.lines, self.dropped, self.times)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _flag(value: Any) -> bool:
    """A JSON flag as exports write it: true/false, 1/0, or "true"/"false" as text."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value) and value is not None


def _utc(when: datetime) -> datetime:
    """Naive UTC, so times from one file always compare."""
    return when.astimezone(timezone.utc).replace(tzinfo=None) if when.tzinfo else when


def parse_time(value: Any) -> datetime | None:
    """ISO 8601 text, Unix seconds or milliseconds, or SillyTavern's
    "May 12, 2023 2:05pm" -> a naive datetime; None if it is none of these."""
    try:
        if isinstance(value, bool):
            return None
        if isinstance(value, (int, float)):
            return _utc(datetime.fromtimestamp(value / 1000 if value > 1e11 else value, timezone.utc))
        if not isinstance(value, str) or not value.strip():
            return None
        value = value.strip()
        if value.isdigit():
            return parse_time(int(value))
        try:
            return _utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            pass
        for shape in ("%B %d, %Y %I:%M%p", "%B %d, %Y %I:%M %p", "%b %d, %Y %I:%M%p"):
            try:
                return datetime.strptime(value, shape)
            except ValueError:
                continue
    except (ValueError, OverflowError, OSError):
        pass
    return None


def _loads(text: str) -> Any:
    """json.loads, with its other ValueError (an integer of over 4,300 digits,
    which Python refuses to convert) reported as a JSONDecodeError too."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError as exc:
        raise json.JSONDecodeError(str(exc).split(";")[0], text, 0) from None


def _load_json(text: str) -> Any:
    try:
        return _loads(text)
    except json.JSONDecodeError as exc:
        raise CharloraError(f"not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise CharloraError("JSON nested too deeply to read") from None


def _load_jsonl(text: str) -> list[Any]:
    rows = []
    for number, row in enumerate(physical_lines(text), 1):
        if row.strip():
            try:
                rows.append(_loads(row))
            except json.JSONDecodeError as exc:
                raise CharloraError(f"line {number} is not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise CharloraError(f"line {number}: JSON nested too deeply to read") from None
    return rows


# ------------------------------------------------------------------- WhatsApp
# Android: `12/03/2023, 14:05 - Bob: text`, or `3/12/23, 2:05 PM - Bob: text`
# iOS:     `[12/03/2023, 14:05:22] Bob: text`
# A line without that prefix continues the message above it.

_WA_STAMP = (
    r"(?P<date>\d{1,4}[./-]\d{1,2}[./-]\d{1,4}),?\s"
    r"(?P<time>\d{1,2}[:.]\d{2}(?:[:.]\d{2})?)(?:[\s\u202f\u00a0]*(?P<ampm>[AaPp]\.?\s?[Mm]\.?))?"
)
_WA_ANDROID = re.compile(rf"^{_WA_STAMP}\s[-–]\s(?P<rest>.*)$")
_WA_IOS = re.compile(rf"^\[{_WA_STAMP}\]\s(?P<rest>.*)$")
_WA_SENDER = re.compile(r"^(?P<name>[^:\n]{1,80}?): (?P<text>.*)$")
_WA_MEDIA = re.compile(
    r"^(?:<Media omitted>|(?:image|video|audio|sticker|GIF|document|Contact card) omitted|.+ document omitted"
    r"|<attached: [^>]*>|.+ \(file attached\))$",
    re.I,
)
_WA_DELETED = {"This message was deleted", "You deleted this message"}
_WA_NOTICES = ("Messages and calls are end-to-end encrypted", "Missed voice call", "Missed video call",
               "Missed group voice call", "Missed group video call", "Waiting for this message")
_WA_EDITED = "<This message was edited>"
_MARKS = "\u200e\u200f\ufeff"  # direction marks iOS puts before notices and attachments


def _whatsapp_kind(text: str) -> str | None:
    """MEDIA, DELETED or SYSTEM for a message that is not someone speaking."""
    marked = text.startswith(tuple(_MARKS))
    text = text.lstrip(_MARKS + " ").rstrip()
    if _WA_MEDIA.match(text):
        return MEDIA
    if text.rstrip(".") in _WA_DELETED:
        return DELETED
    if marked or text.startswith(_WA_NOTICES):
        return SYSTEM
    return None


def _whatsapp_times(stamps: list[tuple[str, str, str | None]]) -> list[datetime | None]:
    """Parse all stamps together: the day/month order is read off the file (a
    first field over 12 means day first; a second one, month first; else the
    12-hour clock suggests month first, as US phones write)."""
    fields = [[int(x) for x in re.split(r"[./-]", date)] for date, _, _ in stamps]
    year_first = any(f[0] > 31 for f in fields)
    month_first = not year_first and (
        any(f[1] > 12 for f in fields) or (not any(f[0] > 12 for f in fields) and any(ampm for _, _, ampm in stamps))
    )
    times: list[datetime | None] = []
    for f, (_, clock, ampm) in zip(fields, stamps):
        year, month, day = (f[0], f[1], f[2]) if year_first else (f[2], f[0], f[1]) if month_first else (f[2], f[1], f[0])
        parts = [int(x) for x in re.split(r"[:.]", clock)]
        hour = parts[0]
        if ampm:
            hour = hour % 12 + (12 if ampm.lower().startswith("p") else 0)
        try:
            times.append(datetime(year + 2000 if year < 100 else year, month, day, hour, parts[1],
                                  parts[2] if len(parts) > 2 else 0))
        except ValueError:
            times.append(None)
    return times


def read_whatsapp(text: str) -> Reading:
    chat = _Chat()
    # (speaker, [first line, continuation lines...]) per message, in order: a
    # list, because appending to one growing string copies it every time.
    messages: list[tuple[str, list[str]]] = []
    stamps: list[tuple[str, str, str | None]] = []
    current: list[str] | None = None
    for row in physical_lines(text):
        match = _WA_IOS.match(row.lstrip(_MARKS)) or _WA_ANDROID.match(row.lstrip(_MARKS))
        if not match:
            if current is not None:
                current.append(row)
            continue
        chat.dropped[TIMESTAMPS] += 1
        sender = _WA_SENDER.match(match["rest"])
        if sender is None:
            chat.dropped[SYSTEM] += 1  # "Bob added Alice", the encryption notice, ...
            current = None
            continue
        current = [sender["text"]]
        messages.append((sender["name"], current))
        stamps.append((match["date"], match["time"], match["ampm"]))
    for (speaker, parts), when in zip(messages, _whatsapp_times(stamps)):
        body = "\n".join(parts).rstrip()
        kind = _whatsapp_kind(body)
        if kind:
            chat.dropped[kind] += 1
        else:
            chat.say(speaker.lstrip(_MARKS), body.removesuffix(_WA_EDITED), when)
    return chat.reading()


# ------------------------------------------------------------------- Telegram
# result.json of Telegram Desktop's "Export chat history" (one chat), or of a
# full-account export (chats.list[*].messages); each chat is a new conversation.

_TELEGRAM_MEDIA = ("photo", "file", "media_type", "sticker_emoji", "location_information", "poll",
                   "contact_information", "live_location_period_seconds")


def _telegram_text(value: Any) -> str:
    """`text` is a string, or a list of strings and {"type", "text"} entities."""
    if isinstance(value, list):
        return "".join(part if isinstance(part, str) else _str(part.get("text")) if isinstance(part, dict) else ""
                       for part in value)
    return _str(value)


def _telegram_chats(data: Any) -> list[list[Any]]:
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        return [data["messages"]]
    chats = data.get("chats") if isinstance(data, dict) else None
    if isinstance(chats, dict) and isinstance(chats.get("list"), list):
        return [chat["messages"] for chat in chats["list"] if isinstance(chat, dict) and isinstance(chat.get("messages"), list)]
    raise CharloraError('not a Telegram export: no "messages" list (export a chat as JSON from Telegram Desktop)')


def read_telegram(text: str) -> Reading:
    chat = _Chat()
    for messages in _telegram_chats(_load_json(text)):
        chat.new_conversation = True
        for message in messages:
            if not isinstance(message, dict):
                continue
            if message.get("type") == "service":
                chat.dropped[SYSTEM] += 1
                continue
            body = _telegram_text(message.get("text"))
            if not body.strip():
                if any(key in message for key in _TELEGRAM_MEDIA):
                    chat.dropped[MEDIA] += 1
                continue
            speaker = _str(message.get("from")).strip() or "Deleted Account"  # how Telegram shows a null sender
            chat.say(speaker, body, parse_time(message.get("date")) or parse_time(message.get("date_unixtime")))
    return chat.reading()


# -------------------------------------------------------------------- Discord
# DiscordChatExporter's JSON: {"guild", "channel", "messages": [{"type",
# "timestamp", "content", "author": {"name", "nickname"}, "attachments", ...}]}.

_DISCORD_SPOKEN = {"Default", "Reply"}


def read_discord(text: str) -> Reading:
    data = _load_json(text)
    if not (isinstance(data, dict) and isinstance(data.get("messages"), list)):
        raise CharloraError('not a DiscordChatExporter JSON export: no "messages" list')
    chat = _Chat()
    for message in data["messages"]:
        if not isinstance(message, dict):
            continue
        if _str(message.get("type") or "Default") not in _DISCORD_SPOKEN:
            chat.dropped[SYSTEM] += 1  # joins, pins, calls, renames, ...
            continue
        author = message.get("author") if isinstance(message.get("author"), dict) else {}
        speaker = _str(author.get("nickname")).strip() or _str(author.get("name")).strip()
        body = _str(message.get("content"))
        if not body.strip():
            if any(message.get(key) for key in ("attachments", "stickers", "embeds")):
                chat.dropped[MEDIA] += 1
            continue
        chat.say(speaker, body, parse_time(message.get("timestamp")))
    return chat.reading()


# ---------------------------------------------------------------- SillyTavern
# One JSON object a line; the first holds the chat's metadata (user_name,
# character_name, chat_metadata), each later one a message: name, is_user,
# is_system, send_date, mes.

def read_sillytavern(text: str) -> Reading:
    chat = _Chat()
    for row in _load_jsonl(text):
        if not isinstance(row, dict) or "mes" not in row:
            continue  # the metadata line
        if _flag(row.get("is_system")):
            chat.dropped[SYSTEM] += 1
            continue
        body = _str(row.get("mes"))
        if not body.strip():
            extra = row.get("extra") if isinstance(row.get("extra"), dict) else {}
            if any(extra.get(key) for key in ("image", "file", "inline_image")):
                chat.dropped[MEDIA] += 1
            continue
        speaker = _str(row.get("name")).strip() or ("You" if _flag(row.get("is_user")) else "")
        chat.say(speaker, body, parse_time(row.get("send_date")))
    return chat.reading()


# --------------------------------------------------------------------- OpenAI
# {"messages": [{"role", "content", "name"?}]}, a bare list of messages, a list
# of such objects, or JSONL with one conversation a line (fine-tuning files).
# The speaker is the message's `name`, else its role ("User", "Assistant").

_NOT_SPOKEN_ROLES = {"system", "developer", "tool", "function"}


def _openai_conversations(text: str) -> list[list[Any]]:
    try:
        data = _loads(text)
    except json.JSONDecodeError:
        data = _load_jsonl(text)
    except RecursionError:
        raise CharloraError("JSON nested too deeply to read") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise CharloraError('not OpenAI-style messages: expected {"messages": [...]} or a list of messages')
    if any(isinstance(item, dict) and "role" in item for item in data):
        return [data]
    return [item["messages"] for item in data if isinstance(item, dict) and isinstance(item.get("messages"), list)]


def _openai_content(content: Any) -> tuple[str, bool]:
    """(text, had non-text parts) of a message's content."""
    if isinstance(content, list):
        texts = [_str(part.get("text")) for part in content if isinstance(part, dict)
                 and part.get("type") in ("text", "input_text", "output_text")]
        return "".join(texts), any(isinstance(part, dict) and part.get("type") not in
                                   ("text", "input_text", "output_text") for part in content)
    return _str(content), False


def read_openai(text: str) -> Reading:
    chat = _Chat()
    for messages in _openai_conversations(text):
        chat.new_conversation = True
        for message in messages:
            if not isinstance(message, dict):
                continue
            role = _str(message.get("role")).strip()
            if role.lower() in _NOT_SPOKEN_ROLES:
                chat.dropped[SYSTEM] += 1
                continue
            body, media = _openai_content(message.get("content"))
            if not body.strip():
                if media:
                    chat.dropped[MEDIA] += 1
                continue
            chat.say(_str(message.get("name")).strip() or role.capitalize(), body, None)
    return chat.reading()


def json_format(text: str) -> str | None:
    """Which chat export a JSON or JSONL text is, or None if it is neither."""
    try:
        data = _loads(text)
    except (json.JSONDecodeError, RecursionError):
        try:
            rows = _load_jsonl(text)
        except CharloraError:
            return None
        dicts = [row for row in rows if isinstance(row, dict)]
        if any("mes" in row for row in dicts):
            return "sillytavern"
        if any("messages" in row or "role" in row for row in dicts):
            return "openai"
        return None
    messages: Iterable[Any] = []
    if isinstance(data, dict):
        if isinstance(data.get("chats"), dict):
            return "telegram"
        messages = data.get("messages") if isinstance(data.get("messages"), list) else []
    elif isinstance(data, list):
        if any(isinstance(item, dict) and ("role" in item or "messages" in item) for item in data):
            return "openai"
    dicts = [m for m in messages if isinstance(m, dict)]
    if any("role" in m for m in dicts):
        return "openai"
    if any("author" in m for m in dicts):
        return "discord"
    if any("from" in m or m.get("type") in ("message", "service") for m in dicts):
        return "telegram"
    if any("mes" in m for m in dicts):
        return "sillytavern"
    return None
