"""A Telegram Bot API on loopback: ``POST /bot<token>/sendMessage`` and ``/setWebhook``.

It checks what the Bot API documents (``references/destinations.md`` section 6): the token in
the path (a malformed one 404, a wrong one 401), a JSON (or form) body, ``chat_id`` and a
``text`` of 1-4096 UTF-16 units after entity parsing, a known ``parse_mode``, well-formed HTML
in the tags Telegram supports; and answers like it: ``{"ok": true, "result": Message}`` or
``{"ok": false, "error_code", "description", "parameters"}``.

Tests steer it with sets of chat ids (``blocked``, ``deactivated``, ``never_started`` -> 403;
``missing`` -> 400 chat not found) and a script of answers for the next requests (429 with
``parameters.retry_after``, 5xx, a hang until ``release`` is set). Given a clock, it applies
Telegram's flood limits (one message a second per chat, 30 a second per bot), answering 429 as
Telegram does, and records when each message arrived (``sent[i]["at"]``, the clock's monotonic
time).
"""

from __future__ import annotations

import asyncio
import collections
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from leadback.clock import Clock

TOKEN_FORMAT = re.compile(r"\d{5,12}:[A-Za-z0-9_-]{35}")
MAX_TEXT = 4096
HTML_TAGS = {
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler", "a",
    "tg-emoji", "code", "pre", "blockquote",
}  # fmt: skip
SECRET_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")


@dataclass
class Answer:
    """A scripted answer: an error (``retry_after`` for 429), or a hang (``hang=True``)."""

    status: int = 500
    description: str = "Internal Server Error"
    retry_after: int | None = None
    migrate_to_chat_id: int | None = None
    hang: bool = False


def failure(status: int, description: str, **parameters: int) -> JSONResponse:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return JSONResponse(body, status_code=status)


class _Entities(HTMLParser):
    """Telegram's HTML: supported tags only, every tag closed; collects the visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.text: list[str] = []
        self.error: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in HTML_TAGS:
            self.error = self.error or f'Unsupported start tag "{tag}"'
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.error = self.error or f'Unexpected end tag "{tag}"'
            return
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _visible(text: str, parse_mode: str | None) -> tuple[str, str | None]:
    """(visible text, parse error) the way Telegram reads ``text``."""
    if parse_mode == "HTML":
        parser = _Entities()
        parser.feed(text)
        parser.close()
        if parser.open and not parser.error:
            parser.error = f'Can\'t find end tag corresponding to start tag "{parser.open[-1]}"'
        return "".join(parser.text), parser.error
    if parse_mode == "MarkdownV2":
        shown = re.sub(r"\]\((?:\\.|[^)\\])*\)", "]", text)  # link targets are not shown
        shown = re.sub(r"\\(.)|[*_~|`\[\]]", lambda m: m.group(1) or "", shown)
        return shown, None
    return text, None


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class FakeTelegram:
    """One bot."""

    def __init__(self, token: str, *, clock: Clock | None = None) -> None:
        assert TOKEN_FORMAT.fullmatch(token)
        self.token = token
        self.clock = clock
        self.sent: list[dict[str, Any]] = []  # accepted sendMessage bodies (+ "at")
        self.requests = 0
        self.blocked: set[int] = set()
        self.deactivated: set[int] = set()
        self.never_started: set[int] = set()
        self.missing: set[int] = set()
        self.script: collections.deque[Answer] = collections.deque()
        self.flood_429 = 0  # how often the flood limits answered 429
        self.webhook: dict[str, Any] | None = None
        self.release = asyncio.Event()
        self._message_id = 0
        self._last_by_chat: dict[Any, float] = {}
        self._recent: collections.deque[float] = collections.deque()
        self.app = Starlette(routes=[Route("/bot{token}/{method}", self._call, methods=["POST"])])

    async def _call(self, request: Request) -> JSONResponse:
        self.requests += 1
        token = request.path_params["token"]
        if not TOKEN_FORMAT.fullmatch(token):
            return failure(404, "Not Found")
        if token != self.token:
            return failure(401, "Unauthorized")
        raw = await request.body()
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return failure(400, "Bad Request: can't parse JSON")
        else:
            body = dict(parse_qsl(raw.decode(), keep_blank_values=True))
        if not isinstance(body, dict):
            return failure(400, "Bad Request: parameters must be an object")
        if self.script:
            answer = self.script.popleft()
            if answer.hang:
                await self.release.wait()
            params: dict[str, int] = {}
            if answer.retry_after is not None:
                params["retry_after"] = answer.retry_after
            if answer.migrate_to_chat_id is not None:
                params["migrate_to_chat_id"] = answer.migrate_to_chat_id
            return failure(answer.status, answer.description, **params)
        method = request.path_params["method"]
        if method == "sendMessage":
            return self._send_message(body)
        if method == "setWebhook":
            return self._set_webhook(body)
        return failure(404, "Not Found")

    def _send_message(self, body: dict[str, Any]) -> JSONResponse:
        chat_id = body.get("chat_id")
        if chat_id in (None, ""):
            return failure(400, "Bad Request: chat_id is empty")
        if isinstance(chat_id, str) and re.fullmatch(r"-?\d+", chat_id):
            chat_id = int(chat_id)
        text = body.get("text")
        parse_mode = body.get("parse_mode")
        if parse_mode not in (None, "HTML", "MarkdownV2", "Markdown"):
            return failure(400, f"Bad Request: unsupported parse_mode {parse_mode!r}")
        if not isinstance(text, str):
            return failure(400, "Bad Request: message text is empty")
        shown, problem = _visible(text, parse_mode)
        if problem:
            return failure(400, f"Bad Request: can't parse entities: {problem}")
        if not shown.strip():
            return failure(400, "Bad Request: message text is empty")
        if utf16_len(shown) > MAX_TEXT:
            return failure(400, "Bad Request: message is too long")
        options = body.get("link_preview_options")
        if options is not None and not isinstance(options, dict):
            return failure(400, "Bad Request: can't parse link preview options")
        if chat_id in self.missing:
            return failure(400, "Bad Request: chat not found")
        if chat_id in self.blocked:
            return failure(403, "Forbidden: bot was blocked by the user")
        if chat_id in self.deactivated:
            return failure(403, "Forbidden: user is deactivated")
        if chat_id in self.never_started:
            return failure(403, "Forbidden: bot can't initiate conversation with a user")
        flood = self._flood(chat_id)
        if flood is not None:
            return flood
        self._message_id += 1
        at = self.clock.monotonic() if self.clock else None
        self.sent.append({**body, "at": at})
        message = {
            "message_id": self._message_id,
            "date": 1_800_000_000,
            "chat": {"id": chat_id, "type": "private", "first_name": "Ada"},
            "text": shown,
        }
        return JSONResponse({"ok": True, "result": message})

    def _flood(self, chat_id: Any) -> JSONResponse | None:
        if self.clock is None:
            return None
        now = self.clock.monotonic()
        last = self._last_by_chat.get(chat_id)
        # A little slack for float sums: 1/30 added 30 times is not exactly 1.
        while self._recent and self._recent[0] <= now - 1.0 + 1e-9:
            self._recent.popleft()
        if (last is not None and now - last < 1.0 - 1e-9) or len(self._recent) >= 30:
            self.flood_429 += 1
            return failure(429, "Too Many Requests: retry after 1", retry_after=1)
        self._last_by_chat[chat_id] = now
        self._recent.append(now)
        return None

    def _set_webhook(self, body: dict[str, Any]) -> JSONResponse:
        url = body.get("url")
        if not isinstance(url, str) or not url.startswith("https://"):
            return failure(
                400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook"
            )
        secret = body.get("secret_token")
        if secret is not None and not (isinstance(secret, str) and SECRET_TOKEN.fullmatch(secret)):
            return failure(400, "Bad Request: secret token contains unallowed characters")
        self.webhook = body
        return JSONResponse({"ok": True, "result": True, "description": "Webhook was set"})


def start_update(
    update_id: int, chat_id: int, text: str, chat_type: str = "private"
) -> dict[str, Any]:
    """The Update Telegram posts to a webhook when a user sends ``text`` (``/start <token>``)."""
    user = {"id": chat_id, "is_bot": False, "first_name": "Ada", "username": "ada_l"}
    return {
        "update_id": update_id,
        "message": {
            "message_id": 1,
            "from": user,
            "chat": {"id": chat_id, "type": chat_type, "first_name": "Ada", "username": "ada_l"},
            "date": 1_800_000_000,
            "text": text,
            "entities": [
                {"type": "bot_command", "offset": 0, "length": len(text.split(maxsplit=1)[0])}
            ],
        },
    }


def kicked_update(update_id: int, chat_id: int) -> dict[str, Any]:
    """The Update Telegram posts when a user blocks the bot."""
    user = {"id": chat_id, "is_bot": False, "first_name": "Ada"}
    return {
        "update_id": update_id,
        "my_chat_member": {
            "chat": {"id": chat_id, "type": "private", "first_name": "Ada"},
            "from": user,
            "date": 1_800_000_000,
            "old_chat_member": {"status": "member", "user": {"id": 1, "is_bot": True}},
            "new_chat_member": {
                "status": "kicked",
                "until_date": 0,
                "user": {"id": 1, "is_bot": True},
            },
        },
    }
