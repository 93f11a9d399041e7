"""SMS through Twilio's Messages API (or any provider that speaks it).

One message is one ``POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json``, form-encoded,
HTTP Basic with ``AccountSid:AuthToken`` or ``ApiKeySid:ApiKeySecret``; Twilio has no batch call,
so the messages of a batch go out concurrently (at most ``concurrency`` in flight).
What an answer means (``references/destinations.md`` section 5)::

    201                          Delivered(provider_id = the SM... sid)
    21610 (replied STOP)         RecipientGone("unsubscribed"): never retried
    21211, 21612, 21614          RecipientGone("invalid_address"): not a number that takes SMS
    20429 or HTTP 429            DestinationUnavailable, not before Retry-After
    5xx, timeout, connection     DestinationUnavailable
    20003 or HTTP 401            DestinationRejected("sms_auth")
    any other 4xx                DestinationRejected("twilio_<code>") (``http_<status>`` if none)

Twilio warns against branching finely on codes (it split some in 2024): only the ones above
change what the dispatcher does. The recipient's number never reaches a log or an error: Twilio
quotes it in some messages ("The 'To' number +1... is not valid"), so stored answers are
rebuilt from the error's fields with numbers redacted.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any, Final, Literal

import httpx
import orjson
from pydantic import Field, model_validator

from leadback.clock import Clock
from leadback.destinations.base import (
    ChannelKind,
    Delivered,
    DestinationRejected,
    DestinationUnavailable,
    Message,
    PhoneNumber,
    RecipientGone,
    SendResult,
)
from leadback.destinations.config import ChannelDeps, DestinationConfig, SecretRef
from leadback.destinations.http import json_object, redact_numbers, retry_after_s, unavailable_from
from leadback.logs import get_logger

log = get_logger(__name__)

E164: Final = r"^\+[1-9]\d{1,14}$"
_E164_RE: Final = re.compile(E164)

CODE_UNSUBSCRIBED: Final = 21610
CODES_INVALID_ADDRESS: Final = frozenset({21211, 21612, 21614})
CODE_AUTH: Final = 20003
CODE_TOO_MANY_REQUESTS: Final = 20429


class SmsConfig(DestinationConfig):
    """A Twilio account (or a Twilio-compatible provider) sending from one number or one
    messaging service."""

    kind: Literal["sms"]
    base_url: str = Field(
        "https://api.twilio.com",
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="the API's origin (and path prefix for compatible providers)",
    )
    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: SecretRef | None = Field(None, description="with account_sid for Basic auth")
    api_key_sid: str | None = Field(
        None, pattern=r"^SK[0-9a-fA-F]{32}$", description="instead of the auth token"
    )
    api_key_secret: SecretRef | None = None
    from_number: str | None = Field(None, pattern=E164, description="E.164 sender number")
    messaging_service_sid: str | None = Field(
        None, pattern=r"^MG[0-9a-fA-F]{32}$", description="instead of from_number"
    )
    status_callback: str | None = Field(
        None, pattern=r"^https?://\S+$", max_length=2048, description="delivery receipts URL"
    )

    @model_validator(mode="after")
    def _one_of_each(self) -> SmsConfig:
        if (self.from_number is None) == (self.messaging_service_sid is None):
            raise ValueError("give exactly one of from_number and messaging_service_sid")
        key = (self.api_key_sid is not None, self.api_key_secret is not None)
        if key[0] != key[1]:
            raise ValueError("api_key_sid and api_key_secret go together")
        if key[0] == (self.auth_token is not None):
            raise ValueError("give exactly one of auth_token and api_key_sid + api_key_secret")
        return self


class SmsChannel:
    """A :class:`~leadback.destinations.base.Channel` over Twilio's Messages API."""

    def __init__(self, config: SmsConfig, client: httpx.AsyncClient, clock: Clock) -> None:
        self._config = config
        self._client = client
        self._clock = clock
        self._path = f"/2010-04-01/Accounts/{config.account_sid}/Messages.json"
        self._in_flight = asyncio.Semaphore(config.concurrency)

    @property
    def kind(self) -> ChannelKind:
        return "sms"

    @property
    def max_batch(self) -> int:
        """A batch is one wave of concurrent requests."""
        return self._config.concurrency

    async def send_batch(self, messages: Sequence[Message]) -> list[SendResult]:
        """One request per message, concurrently; a result per message, in order."""
        return list(await asyncio.gather(*(self._send(m) for m in messages)))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _send(self, message: Message) -> SendResult:
        result = await self._attempt(message)
        log.debug(
            "sms attempt",
            destination_id=self._config.id,
            delivery_id=message.delivery_id,
            outcome=type(result).__name__,
            reason=getattr(result, "reason", None),
            status=result.status,
        )
        return result

    async def _attempt(self, message: Message) -> SendResult:
        recipient = message.recipient
        if not isinstance(recipient, PhoneNumber):
            return DestinationRejected("wrong_recipient", "an SMS goes to a phone number")
        if not _E164_RE.fullmatch(recipient.e164):
            return RecipientGone("invalid_address", "sms_invalid_number", "not an E.164 number")
        if not message.content.text.strip():
            return DestinationRejected("empty_body", "an SMS needs text")
        form = {"To": recipient.e164, "Body": message.content.text}
        if self._config.from_number is not None:
            form["From"] = self._config.from_number
        else:
            assert self._config.messaging_service_sid is not None
            form["MessagingServiceSid"] = self._config.messaging_service_sid
        if self._config.status_callback is not None:
            form["StatusCallback"] = self._config.status_callback
        async with self._in_flight:
            try:
                response = await self._client.post(self._path, data=form)
            except httpx.HTTPError as exc:
                return unavailable_from(exc)
        return outcome(response, now=self._clock.now())


def outcome(response: httpx.Response, *, now: float) -> SendResult:
    """What one answer of the Messages API means (see the module docstring)."""
    status = response.status_code
    body = json_object(response)
    if 200 <= status < 300:
        sid = body.get("sid")
        kept = orjson.dumps({"sid": sid, "status": body.get("status")}).decode()
        return Delivered(
            provider_id=sid if isinstance(sid, str) else None, status=status, response=kept
        )
    code = body.get("code") if isinstance(body.get("code"), int) else None
    kept = _kept_error(body, code, status)
    if status == 429 or code == CODE_TOO_MANY_REQUESTS:
        return DestinationUnavailable(
            f"twilio_{code}" if code else "http_429",
            "the provider throttled the account",
            status=status,
            response=kept,
            retry_after=retry_after_s(response.headers.get("retry-after"), now),
        )
    if status >= 500:
        return DestinationUnavailable(
            f"http_{status}",
            "the provider failed",
            status=status,
            response=kept,
            retry_after=retry_after_s(response.headers.get("retry-after"), now),
        )
    if code == CODE_UNSUBSCRIBED:
        return RecipientGone(
            "unsubscribed",
            "twilio_21610",
            "the recipient replied STOP",
            status=status,
            response=kept,
        )
    if code in CODES_INVALID_ADDRESS:
        return RecipientGone(
            "invalid_address",
            f"twilio_{code}",
            "the number cannot receive SMS",
            status=status,
            response=kept,
        )
    if code == CODE_AUTH or status == 401:
        return DestinationRejected(
            "sms_auth", "the account credentials were refused", status=status, response=kept
        )
    return DestinationRejected(
        f"twilio_{code}" if code else f"http_{status}",
        "the provider refused the message",
        status=status,
        response=kept,
    )


def _kept_error(body: dict[str, Any], code: int | None, status: int) -> str:
    """The error as stored: Twilio's fields, the message with any number in it redacted."""
    message = body.get("message")
    return orjson.dumps(
        {
            "code": code,
            "message": redact_numbers(message) if isinstance(message, str) else None,
            "more_info": body.get("more_info") if isinstance(body.get("more_info"), str) else None,
            "status": status,
        }
    ).decode()


def build(config: SmsConfig, deps: ChannelDeps) -> SmsChannel:
    """The channel for ``config``; resolves its secrets (``ConfigError`` naming a missing one)."""
    if config.api_key_sid is not None:
        assert config.api_key_secret is not None
        auth = httpx.BasicAuth(config.api_key_sid, config.api_key_secret.resolve())
    else:
        assert config.auth_token is not None
        auth = httpx.BasicAuth(config.account_sid, config.auth_token.resolve())
    client = deps.http_client(config.timeout_s, base_url=config.base_url.rstrip("/"), auth=auth)
    return SmsChannel(config, client, deps.clock)
