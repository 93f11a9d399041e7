"""Telegram: a bot sends each message to the chat a visitor linked (``telegram_link``).

One message is one ``POST {base}/bot<token>/sendMessage`` with a JSON body. What an answer
means (``references/destinations.md`` section 6)::

    {"ok": true, ...}                 Delivered(provider_id = the message_id)
    429 (parameters.retry_after)      DestinationUnavailable(retry_after); the chat is held too
    5xx, timeout, connection          DestinationUnavailable
    403 (blocked by the user, user    RecipientGone("blocked"): every 403 of sendMessage says
      deactivated, can't initiate       the bot cannot write to that chat any more
      conversation, kicked, ...)
    400 chat/user not found           RecipientGone("invalid_address")
    401                               DestinationRejected("telegram_auth")
    any other 4xx                     DestinationRejected("telegram_<status>")

Pacing is the channel's (Telegram's bot FAQ): at most one message a second to one chat and
about 30 a second from the bot (``rate_per_s`` overrides the 30), on the injected clock.
Overlong text is fitted by :mod:`leadback.destinations.telegram_text`.

The bot token is part of every URL. No error made here carries ``str()`` of an httpx error
(whose request holds the URL), stored answers are rebuilt with the token and long numbers
(chat ids) removed, and httpx's own request log lines get the token redacted.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Any, Final, Literal

import httpx
import orjson
from pydantic import Field

from leadback.clock import Clock
from leadback.destinations.base import (
    ChannelKind,
    Delivered,
    DestinationError,
    DestinationRejected,
    DestinationUnavailable,
    Message,
    RecipientGone,
    SendResult,
    TelegramChat,
)
from leadback.destinations.config import ChannelDeps, DestinationConfig, SecretRef
from leadback.destinations.http import json_object, redact_numbers, unavailable_from
from leadback.destinations.pacing import Pacer
from leadback.destinations.telegram_link import BOT_USERNAME
from leadback.destinations.telegram_text import ParseMode, fit
from leadback.logs import get_logger

log = get_logger(__name__)

PER_CHAT_S: Final = 1.0
BOT_RATE_PER_S: Final = 30.0
ALLOWED_UPDATES: Final = ("message", "my_chat_member")
_NOT_FOUND: Final = ("chat not found", "user not found", "peer_id_invalid")
_BOT_PATH: Final = re.compile(r"/bot[^/\s]*:[^/\s]*/")  # bot tokens are <id>:<secret>


class TelegramConfig(DestinationConfig):
    """One Telegram bot."""

    kind: Literal["telegram"]
    base_url: str = Field(
        "https://api.telegram.org",
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="the Bot API server (a local telegram-bot-api server works too)",
    )
    bot_token: SecretRef
    parse_mode: ParseMode | None = Field(None, description="how message text is formatted")
    bot_username: str | None = Field(None, pattern=BOT_USERNAME, description="for t.me links")
    link_preview: bool = Field(True, description="False: no preview of the first link")


class _RedactBotPath(logging.Filter):
    """httpx logs each request's URL at INFO; the path of a Bot API URL holds the token."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(
                _BOT_PATH.sub("/bot<redacted>/", str(a)) if isinstance(a, httpx.URL | str) else a
                for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = _BOT_PATH.sub("/bot<redacted>/", record.msg)
        return True


def _install_log_filter() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _RedactBotPath) for f in logger.filters):
        logger.addFilter(_RedactBotPath())


class TelegramChannel:
    """A :class:`~leadback.destinations.base.Channel` for one Telegram bot."""

    def __init__(
        self, config: TelegramConfig, client: httpx.AsyncClient, clock: Clock, token: str
    ) -> None:
        self._config = config
        self._client = client
        self._token = token
        self._pacer = Pacer(
            clock, per_key_s=PER_CHAT_S, rate_per_s=config.rate_per_s or BOT_RATE_PER_S
        )
        self._in_flight = asyncio.Semaphore(config.concurrency)

    @property
    def kind(self) -> ChannelKind:
        return "telegram"

    @property
    def max_batch(self) -> int:
        """A batch is one wave of concurrent requests (paced)."""
        return self._config.concurrency

    async def send_batch(self, messages: Sequence[Message]) -> list[SendResult]:
        """One ``sendMessage`` per message, concurrently within the pacing; results in order."""
        return list(await asyncio.gather(*(self._send(m) for m in messages)))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def set_webhook(self, url: str, secret_token: str) -> None:
        """Point the bot's updates at ``url`` (ingest's ``/v1/telegram/.../webhook``), with the
        ``X-Telegram-Bot-Api-Secret-Token`` it must carry. Raises a ``DestinationError``."""
        body = {"url": url, "secret_token": secret_token, "allowed_updates": ALLOWED_UPDATES}
        result = await self._call("setWebhook", body)
        if isinstance(result, DestinationError):
            raise result

    async def _send(self, message: Message) -> SendResult:
        result = await self._attempt(message)
        log.debug(
            "telegram attempt",
            destination_id=self._config.id,
            delivery_id=message.delivery_id,
            outcome=type(result).__name__,
            reason=getattr(result, "reason", None),
            status=result.status,
        )
        return result

    async def _attempt(self, message: Message) -> SendResult:
        recipient = message.recipient
        if not isinstance(recipient, TelegramChat):
            return DestinationRejected("wrong_recipient", "a Telegram message goes to a chat")
        if not message.content.text.strip():
            return DestinationRejected("empty_text", "a Telegram message needs text")
        text, parse_mode = fit(message.content.text, self._config.parse_mode)
        body: dict[str, Any] = {"chat_id": recipient.chat_id, "text": text}
        if parse_mode is not None:
            body["parse_mode"] = parse_mode
        if not self._config.link_preview:
            body["link_preview_options"] = {"is_disabled": True}
        async with self._in_flight:
            await self._pacer.wait(recipient.chat_id)
            result = await self._call("sendMessage", body)
        if (
            isinstance(result, DestinationUnavailable)
            and result.status == 429
            and result.retry_after
        ):
            self._pacer.hold(recipient.chat_id, result.retry_after)
        return result

    async def _call(self, method: str, body: dict[str, Any]) -> SendResult:
        try:
            response = await self._client.post(
                f"/bot{self._token}/{method}",
                content=orjson.dumps(body),
                headers={"content-type": "application/json"},
            )
        except httpx.HTTPError as exc:
            return unavailable_from(exc)
        return outcome(response, token=self._token)


def outcome(response: httpx.Response, *, token: str) -> SendResult:
    """What one Bot API answer means (see the module docstring)."""
    status = response.status_code
    body = json_object(response)
    if status == 200 and body.get("ok") is True:
        result = body.get("result")
        message_id = result.get("message_id") if isinstance(result, dict) else None
        kept = orjson.dumps({"message_id": message_id}).decode()
        return Delivered(
            provider_id=str(message_id) if isinstance(message_id, int) else None,
            status=status,
            response=kept,
        )
    description = body.get("description")
    description = description if isinstance(description, str) else ""
    params = body.get("parameters")
    params = params if isinstance(params, dict) else {}
    kept = _kept_error(body, description, status, token)
    if status == 429:
        retry = params.get("retry_after")
        return DestinationUnavailable(
            "telegram_429",
            "Telegram's flood control",
            status=status,
            response=kept,
            retry_after=float(retry) if isinstance(retry, int | float) else None,
        )
    if status >= 500:
        return DestinationUnavailable(
            f"http_{status}", "the Bot API failed", status=status, response=kept
        )
    if status == 401:
        return DestinationRejected(
            "telegram_auth", "the bot token was refused", status=status, response=kept
        )
    if status == 403:
        return RecipientGone(
            "blocked",
            "telegram_403",
            "the bot cannot write to this chat",
            status=status,
            response=kept,
        )
    lowered = description.lower()
    if status == 400 and any(text in lowered for text in _NOT_FOUND):
        return RecipientGone(
            "invalid_address",
            "telegram_chat_not_found",
            "no such chat",
            status=status,
            response=kept,
        )
    if "migrate_to_chat_id" in params:
        return DestinationRejected(
            "telegram_chat_migrated", "the group became a supergroup", status=status, response=kept
        )
    return DestinationRejected(
        f"telegram_{status}", "the Bot API refused the call", status=status, response=kept
    )


def _kept_error(body: dict[str, Any], description: str, status: int, token: str) -> str:
    """The answer as stored: code and description, without the token or any chat id."""
    text = redact_numbers(description.replace(token, "<redacted>")) if description else None
    code = body.get("error_code")
    return orjson.dumps(
        {"error_code": code if isinstance(code, int) else status, "description": text}
    ).decode()


def build(config: TelegramConfig, deps: ChannelDeps) -> TelegramChannel:
    """The channel for ``config``; resolves the bot token (``ConfigError`` if it is missing)."""
    _install_log_filter()
    token = config.bot_token.resolve()
    client = deps.http_client(config.timeout_s, base_url=config.base_url.rstrip("/"))
    return TelegramChannel(config, client, deps.clock, token)
