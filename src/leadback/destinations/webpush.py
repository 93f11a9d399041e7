"""Web push (RFC 8030 / 8291 / 8292): one encrypted POST per subscription.

For each message the channel builds the JSON the site's service worker shows
(``{"title", "body", "url", "delivery_id"}``, at most :data:`MAX_PLAINTEXT` bytes: the body is
shortened, and a message that still does not fit is rejected), encrypts it for the browser's
key (``aes128gcm``, RFC 8291, with ``http_ece``), signs a VAPID token for the push service's
origin (:mod:`leadback.destinations.vapid`) and POSTs it to the endpoint through the egress
guard (:mod:`leadback.destinations.egress`: endpoints come from browsers, so they are checked
like webhook URLs). Headers: ``TTL`` (never 0, which pywebpush defaults to and which drops the
message when the device is offline), ``Urgency``, ``Content-Encoding: aes128gcm``,
``Authorization: vapid t=..., k=...``.

Answers (``references/destinations.md`` §7):

==========================  =========================================================
2xx (201 Created)           ``Delivered``, ``provider_id`` = the ``Location`` header
404, 410                    ``RecipientGone("subscription_gone")``: forget the subscription
429, 5xx, timeouts          ``DestinationUnavailable`` (``retry_after`` from ``Retry-After``)
400, 401, 403, 413, others  ``DestinationRejected`` (403: the VAPID key is not the one the
                            browser subscribed with, or the token is invalid)
==========================  =========================================================

A subscription whose keys do not decode or whose endpoint is refused by the egress guard is
``RecipientGone("invalid_address")``: it can never be sent to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Final, Literal

import http_ece
import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import Field, field_validator

from leadback.destinations.base import (
    Channel,
    ChannelKind,
    Delivered,
    DestinationError,
    DestinationRejected,
    DestinationUnavailable,
    Message,
    PushSubscription,
    RecipientGone,
    SendResult,
    clip,
)
from leadback.destinations.config import ChannelDeps, DestinationConfig, SecretRef
from leadback.destinations.egress import TARGET_NOT_ALLOWED, EgressGuard, Resolver, check_url
from leadback.destinations.push_subscription import decode_auth, decode_p256dh
from leadback.destinations.retry_after import retry_after_seconds
from leadback.destinations.vapid import VapidSigner, load_private_key
from leadback.errors import ConfigError, InvalidInputError

MAX_PLAINTEXT: Final = 3993  # RFC 8291 §4: 4096 bytes on the wire, one record
MAX_TTL_S: Final = 28 * 86400  # the longest push services keep a message (FCM: 4 weeks)
MAX_BATCH: Final = 100
ELLIPSIS: Final = "\u2026"

Urgency = Literal["very-low", "low", "normal", "high"]


class WebPushConfig(DestinationConfig):
    """A VAPID key pair: every subscription made with its public key can be sent to."""

    kind: Literal["webpush"]
    vapid_private_key: SecretRef = Field(
        description="P-256 private key: PEM, or the raw 32 bytes base64url (py_vapid's forms)"
    )
    vapid_public_key: str = Field(
        description="the public key, base64url: the site's applicationServerKey"
    )
    subject: str = Field(description="who push services contact: mailto:... or https://...")
    ttl_s: int = Field(86400, ge=1, le=MAX_TTL_S, description="how long to hold an offline push")
    urgency: Urgency = "normal"

    @field_validator("vapid_public_key")
    @classmethod
    def _public_point(cls, v: str) -> str:
        try:
            decode_p256dh(v, field="vapid_public_key")
        except InvalidInputError as exc:
            raise ValueError(exc.detail) from exc
        return v.rstrip("=")

    @field_validator("subject")
    @classmethod
    def _contact(cls, v: str) -> str:
        if v.startswith("mailto:") and "@" in v and " " not in v:
            return v
        if v.startswith("https://") and len(v) > len("https://") and " " not in v:
            return v
        raise ValueError("subject must be mailto:<address> or an https:// URL")


def push_payload(title: str, body: str, url: str | None, delivery_id: str) -> bytes:
    """The JSON the service worker receives, shortened to :data:`MAX_PLAINTEXT` bytes by
    cutting the body (with an ellipsis); :class:`DestinationRejected` if even an empty body
    does not fit."""

    def dump(text: str) -> bytes:
        doc = {"title": title, "body": text, "url": url, "delivery_id": delivery_id}
        return orjson.dumps(doc)

    data = dump(body)
    if len(data) <= MAX_PLAINTEXT:
        return data
    if len(dump("")) > MAX_PLAINTEXT:
        raise DestinationRejected(
            "payload_too_large", f"title and url alone exceed {MAX_PLAINTEXT} bytes"
        )
    lo, hi = 0, len(body) - 1  # the longest prefix that fits with the ellipsis
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(dump(body[:mid] + ELLIPSIS)) <= MAX_PLAINTEXT:
            lo = mid
        else:
            hi = mid - 1
    return dump(body[:lo].rstrip() + ELLIPSIS) if lo else dump("")


def encrypt_payload(plain: bytes, p256dh: bytes, auth: bytes) -> bytes:
    """``plain`` encrypted for one subscription (aes128gcm, one record, a fresh sender key)."""
    sender = ec.generate_private_key(ec.SECP256R1())
    body: bytes = http_ece.encrypt(
        plain, private_key=sender, dh=p256dh, auth_secret=auth, version="aes128gcm"
    )
    return body


def redact(text: str, endpoint: str) -> str:
    """A push service's answer without the endpoint or its token (an address of the person)."""
    text = text.replace(endpoint, "<endpoint>")
    token = endpoint.rstrip("/").rsplit("/", 1)[-1]
    if len(token) >= 8:
        text = text.replace(token, "<token>")
    return text


def push_result(status: int, headers: Mapping[str, str], text: str, *, now: float) -> SendResult:
    """What a push service's answer means for the dispatcher (see the module docstring)."""
    if 200 <= status < 300:
        return Delivered(provider_id=headers.get("location"), status=status, response=clip(text))
    reason = f"http_{status}"
    if status in (404, 410):
        return RecipientGone(
            "subscription_gone",
            reason,
            "the push service no longer knows this subscription",
            status=status,
            response=text,
        )
    if status == 429 or status >= 500:
        return DestinationUnavailable(
            reason,
            "the push service asks to retry later",
            status=status,
            response=text,
            retry_after=retry_after_seconds(headers.get("retry-after"), now),
        )
    detail = {
        400: "the push service refused the request",
        401: "the push service wants VAPID authorization",
        403: "the VAPID token or key was refused (not the key the browser subscribed with?)",
        413: "the payload is too large for the push service",
    }.get(status, "the push service refused the request")
    return DestinationRejected(reason, detail, status=status, response=text)


class WebPushChannel:
    """One VAPID key pair; each message is one request to its subscription's push service."""

    def __init__(
        self, config: WebPushConfig, deps: ChannelDeps, *, resolver: Resolver | None = None
    ) -> None:
        key = load_private_key(config.vapid_private_key.resolve())
        self._signer = VapidSigner(key, config.subject, deps.clock)
        if self._signer.public_key != config.vapid_public_key:
            # Browsers subscribed with vapid_public_key: pushes signed with another key get 403.
            raise ConfigError(
                f"destination {config.id}: vapid_public_key is not the public key of "
                "vapid_private_key"
            )
        self._config = config
        self._clock = deps.clock
        self._client = deps.http_client(config.timeout_s)
        self._guard = EgressGuard(
            allow_private=deps.allow_private_targets, clock=deps.clock, resolver=resolver
        )
        self._slots = asyncio.Semaphore(config.concurrency)

    @property
    def kind(self) -> ChannelKind:
        return "webpush"

    @property
    def max_batch(self) -> int:
        return MAX_BATCH

    async def send_batch(self, messages: Sequence[Message]) -> list[SendResult]:
        """One request per message, at most ``concurrency`` in flight."""
        return list(await asyncio.gather(*(self._send_one(m) for m in messages)))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _send_one(self, message: Message) -> SendResult:
        try:
            async with self._slots:
                return await self._attempt(message)
        except DestinationError as exc:
            return exc

    async def _attempt(self, message: Message) -> SendResult:
        sub = message.recipient
        if not isinstance(sub, PushSubscription):
            return DestinationRejected("wrong_recipient", "web push needs a push subscription")
        try:
            p256dh = decode_p256dh(sub.p256dh)
            auth = decode_auth(sub.auth)
        except InvalidInputError as exc:
            return RecipientGone("invalid_address", "invalid_subscription", exc.detail)
        try:
            check_url(sub.endpoint, allow_private=self._guard.allow_private)
        except DestinationRejected as exc:  # before signing: the VAPID audience comes from it
            return RecipientGone("invalid_address", exc.reason, exc.detail)
        content = message.content
        plain = push_payload(content.subject or "", content.text, content.url, message.delivery_id)
        try:
            body = encrypt_payload(plain, p256dh, auth)
        except (http_ece.ECEException, ValueError) as exc:
            return RecipientGone("invalid_address", "invalid_subscription", type(exc).__name__)
        headers = {
            "TTL": str(self._config.ttl_s),
            "Urgency": self._config.urgency,
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "Authorization": self._signer.authorization(sub.endpoint),
        }
        try:
            response = await self._guard.post(
                self._client, sub.endpoint, content=body, headers=headers
            )
        except DestinationRejected as exc:
            if exc.reason == TARGET_NOT_ALLOWED:  # this endpoint can never be sent to
                return RecipientGone("invalid_address", exc.reason, exc.detail)
            raise
        text = redact(response.text, sub.endpoint) if response.content else ""
        return push_result(response.status_code, response.headers, text, now=self._clock.now())


def build(config: WebPushConfig, deps: ChannelDeps) -> Channel:
    """The web push channel for ``config`` (secrets resolved now: a bad key fails here)."""
    return WebPushChannel(config, deps)
