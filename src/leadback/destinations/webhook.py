"""Outbound webhooks, signed per Standard Webhooks 1.0 (``references/destinations.md`` §8).

Each request is a JSON POST with ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``, where the key
is the base64-decoded part of the ``whsec_...`` secret. Receivers verify it with any Standard
Webhooks library and deduplicate on ``webhook-id``, which is the message's ``delivery_id`` and
so the same on every retry.

One message (``batch_size`` 1) is one POST whose body is ``content.data`` with the delivery's
fields on top (Standard Webhooks allows the data "squashed" into the top-level object)::

    {..content.data.., "type": "leadback.campaign.step", "timestamp": "2027-...Z",
     "delivery_id": "...", "site_id": "...", "campaign_id": "...", "person_id": "...", "step": 1}

With ``batch_size`` > 1, up to that many messages go in one POST,
``{"type": "leadback.deliveries", "timestamp": ..., "data": [<one body as above>, ...]}``, whose
``webhook-id`` is derived from the sorted delivery ids (the same batch retried has the same
id); every message of the batch shares the outcome.

Answers: 2xx delivered; 3xx rejected (redirects are never followed); 410 rejected with reason
``webhook_gone`` (the receiver disabled the endpoint); 429, 502, 503, 504 and other 5xx
unavailable, honouring ``Retry-After``; other 4xx rejected. The URL goes through the egress
guard (:mod:`leadback.destinations.egress`): a private target is ``target_not_allowed``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import httpx
import orjson
from pydantic import Field, field_validator

from leadback.destinations.base import (
    Channel,
    ChannelKind,
    Delivered,
    DestinationError,
    DestinationRejected,
    DestinationUnavailable,
    Message,
    SendResult,
    clip,
)
from leadback.destinations.config import ChannelDeps, DestinationConfig, SecretRef
from leadback.destinations.egress import MAX_URL_CHARS, EgressGuard, Resolver, check_url
from leadback.destinations.retry_after import retry_after_seconds
from leadback.errors import ConfigError
from leadback.events import format_ts

SECRET_PREFIX: Final = "whsec_"
MIN_SECRET_BYTES: Final = 24  # Standard Webhooks: 24..64 bytes
MAX_SECRET_BYTES: Final = 64
SINGLE_PER_CALL: Final = 50  # batch_size 1: messages one send_batch call may carry
STEP_TYPE: Final = "leadback.campaign.step"
BATCH_TYPE: Final = "leadback.deliveries"
_HEADER_NAME: Final = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
# Headers the channel sets, and credentials (a stored definition never holds one: SecretRef).
RESERVED_HEADERS: Final = frozenset(
    {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "content-type",
        "content-length",
        "host",
        "transfer-encoding",
        "connection",
        "authorization",
        "proxy-authorization",
        "cookie",
    }
)


class WebhookConfig(DestinationConfig):
    """A receiver URL and the secret its requests are signed with."""

    kind: Literal["webhook"]
    url: str = Field(max_length=MAX_URL_CHARS, description="https (http only to private targets)")
    secret: SecretRef = Field(description="whsec_<base64>, 24..64 bytes once decoded")
    headers: dict[str, str] = Field(
        default_factory=dict, description="static headers added to every request (no secrets)"
    )
    batch_size: int = Field(
        1, ge=1, le=1000, description="1: one POST per message; more: one POST per batch"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        try:
            url = httpx.URL(v)
        except httpx.InvalidURL as exc:  # not a ValueError: pydantic would not report it
            raise ValueError("url does not parse") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("url must be an https:// URL")
        if url.userinfo:
            raise ValueError("url must not carry credentials")
        return v

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by Leadback or is a credential")
            if any(c in value for c in "\r\n\0") or len(value) > 1024:
                raise ValueError(f"header {name!r}: value must be one line of <= 1024 characters")
        return v


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; :class:`ConfigError` (never echoing it)
    unless it decodes to 24..64 bytes."""
    text = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError("the webhook secret is not whsec_<base64>") from exc
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ConfigError(
            f"the webhook secret must decode to {MIN_SECRET_BYTES}..{MAX_SECRET_BYTES} bytes"
        )
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` over ``{id}.{timestamp}.{body}`` (Standard Webhooks)."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def message_id(delivery_id: str) -> str:
    """The ``webhook-id`` of one message: its delivery id, unless that holds characters the
    signed string cannot (the spec forbids ``.``), then a digest of it."""
    if re.fullmatch(r"[A-Za-z0-9_:\-]{1,128}", delivery_id):
        return delivery_id
    return "msg_" + hashlib.sha256(delivery_id.encode()).hexdigest()[:32]


def batch_id(delivery_ids: Sequence[str]) -> str:
    """A ``webhook-id`` for a batch: the same set of deliveries always gets the same id."""
    digest = hashlib.sha256("\n".join(sorted(delivery_ids)).encode()).hexdigest()
    return "batch_" + digest[:40]


def message_body(message: Message, timestamp: str) -> dict[str, Any]:
    """One message as the receiver sees it: ``content.data`` and the delivery's fields."""
    return {
        **message.content.data,
        "type": STEP_TYPE,
        "timestamp": timestamp,
        "delivery_id": message.delivery_id,
        "site_id": message.site_id,
        "campaign_id": message.campaign_id,
        "person_id": message.person_id,
        "step": message.step,
    }


def webhook_result(status: int, headers: Mapping[str, str], text: str, *, now: float) -> SendResult:
    """What a receiver's answer means for the dispatcher (see the module docstring)."""
    if 200 <= status < 300:
        return Delivered(status=status, response=clip(text))
    reason = f"http_{status}"
    if 300 <= status < 400:
        return DestinationRejected(
            reason,
            "the receiver redirected; redirects are not followed",
            status=status,
            response=text,
        )
    if status == 410:
        return DestinationRejected(
            "webhook_gone", "the receiver disabled this endpoint", status=status, response=text
        )
    if status == 429 or status >= 500:
        return DestinationUnavailable(
            reason,
            "the receiver asks to retry later",
            status=status,
            response=text,
            retry_after=retry_after_seconds(headers.get("retry-after"), now),
        )
    return DestinationRejected(
        reason, "the receiver refused the request", status=status, response=text
    )


class WebhookChannel:
    """One receiver URL and its signing secret."""

    def __init__(
        self, config: WebhookConfig, deps: ChannelDeps, *, resolver: Resolver | None = None
    ) -> None:
        self._key = secret_key(config.secret.resolve())
        try:
            check_url(config.url, allow_private=deps.allow_private_targets)
        except DestinationRejected as exc:
            raise ConfigError(f"destination {config.id}: {exc.detail}") from exc
        self._config = config
        self._clock = deps.clock
        self._client = deps.http_client(config.timeout_s)
        self._guard = EgressGuard(
            allow_private=deps.allow_private_targets, clock=deps.clock, resolver=resolver
        )
        self._slots = asyncio.Semaphore(config.concurrency)
        self._static = {"User-Agent": "Leadback-Webhooks/1", **config.headers}

    @property
    def kind(self) -> ChannelKind:
        return "webhook"

    @property
    def max_batch(self) -> int:
        return self._config.batch_size if self._config.batch_size > 1 else SINGLE_PER_CALL

    async def send_batch(self, messages: Sequence[Message]) -> list[SendResult]:
        """``batch_size`` 1: one POST per message (at most ``concurrency`` in flight); more:
        one POST per ``batch_size`` messages, whose outcome every message of it shares."""
        size = self._config.batch_size
        if size == 1:
            return list(await asyncio.gather(*(self._post_one(m) for m in messages)))
        chunks = [messages[i : i + size] for i in range(0, len(messages), size)]
        outcomes = await asyncio.gather(*(self._post_batch(c) for c in chunks))
        return [outcome for chunk, outcome in zip(chunks, outcomes, strict=True) for _ in chunk]

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post_one(self, message: Message) -> SendResult:
        now = self._clock.now()
        body = orjson.dumps(message_body(message, format_ts(now)))
        return await self._post(message_id(message.delivery_id), body, now)

    async def _post_batch(self, messages: Sequence[Message]) -> SendResult:
        now = self._clock.now()
        stamp = format_ts(now)
        doc = {
            "type": BATCH_TYPE,
            "timestamp": stamp,
            "data": [message_body(m, stamp) for m in messages],
        }
        return await self._post(batch_id([m.delivery_id for m in messages]), orjson.dumps(doc), now)

    async def _post(self, msg_id: str, body: bytes, now: float) -> SendResult:
        timestamp = int(now)
        headers = {
            **self._static,
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(self._key, msg_id, timestamp, body),
        }
        try:
            async with self._slots:
                response = await self._guard.post(
                    self._client, self._config.url, content=body, headers=headers
                )
        except DestinationError as exc:
            return exc
        return webhook_result(
            response.status_code, response.headers, response.text, now=self._clock.now()
        )


def build(config: WebhookConfig, deps: ChannelDeps) -> Channel:
    """The webhook channel for ``config`` (the secret resolved and checked now)."""
    return WebhookChannel(config, deps)
