"""The one small interface every channel implements, and what a send can end in.

A channel turns :class:`Message` objects into provider calls. It does one attempt per message:
retries, backoff, rate limits across messages and the delivery ledger are the dispatcher's.
What the attempt ended in is told by the result, typed by what the dispatcher should do::

    Delivered                       the provider accepted it (``provider_id``: its message id)
    DestinationError                (a LeadbackError; ``status``/``response`` = last answer)
    ├── DestinationUnavailable      429, 5xx, timeouts, connection errors: retry later,
    │                               not before ``retry_after`` seconds when the provider said
    └── DestinationRejected         a permanent 4xx: retrying fails the same way -> dead topic
        └── RecipientGone           the address is dead for good: suppress or forget it
                                    (``why``: unsubscribed, hard_bounce, blocked,
                                    subscription_gone, invalid_address)

Channels translate their library's and HTTP client's errors into these at the adapter
(``raise ... from exc``); nothing above ``destinations`` sees an httpx or aiosmtplib error.
Every network call has a timeout. Responses kept in errors are truncated (:func:`clip`) and
never carry the recipient's address or a credential.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from leadback.errors import LeadbackError

ChannelKind = Literal["email", "sms", "webpush", "webhook", "telegram"]
GoneReason = Literal[
    "unsubscribed", "hard_bounce", "blocked", "subscription_gone", "invalid_address"
]

MAX_RESPONSE_CHARS = 1000


def clip(text: str | bytes, limit: int = MAX_RESPONSE_CHARS) -> str:
    """A provider's answer shortened for the ledger and the dead topic."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "..."


class DestinationError(LeadbackError):
    """A send that did not go through. ``status`` is the HTTP status (or SMTP code) if any."""

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        status: int | None = None,
        response: str = "",
    ) -> None:
        self.reason = reason  # a stable code: "http_429", "twilio_21610", "smtp_550", "timeout"
        self.detail = detail
        self.status = status
        self.response = clip(response)
        super().__init__(f"{reason}: {detail}" if detail else reason)


class DestinationUnavailable(DestinationError):
    """Transient: try again later, not before ``retry_after`` seconds if that is set."""

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        status: int | None = None,
        response: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason, detail, status=status, response=response)
        self.retry_after = retry_after


class DestinationRejected(DestinationError):
    """Permanent: the provider refused this message; it goes to the dead topic."""


class RecipientGone(DestinationRejected):
    """The recipient's address is dead for good (``why``); the dispatcher suppresses it."""

    def __init__(
        self,
        why: GoneReason,
        reason: str,
        detail: str = "",
        *,
        status: int | None = None,
        response: str = "",
    ) -> None:
        super().__init__(reason, detail, status=status, response=response)
        self.why = why


@dataclass(frozen=True, slots=True)
class EmailAddress:
    address: str  # normalized, decrypted just before the send; never logged


@dataclass(frozen=True, slots=True)
class PhoneNumber:
    e164: str  # "+14155550123"


@dataclass(frozen=True, slots=True)
class PushSubscription:
    endpoint: str
    p256dh: str  # base64url, the browser's P-256 public key
    auth: str  # base64url, 16 bytes


@dataclass(frozen=True, slots=True)
class TelegramChat:
    chat_id: int


@dataclass(frozen=True, slots=True)
class NoAddress:
    """Webhooks: the destination's URL is the address; the person is in the payload."""


Recipient = EmailAddress | PhoneNumber | PushSubscription | TelegramChat | NoAddress


@dataclass(frozen=True, slots=True)
class Content:
    """What a step renders to. Channels use what applies to them: e-mail ``subject``, ``text``
    and ``html``; SMS and Telegram ``text``; web push ``subject`` (title), ``text`` (body) and
    ``url``; webhooks ``data`` (the JSON payload)."""

    text: str = ""
    subject: str | None = None
    html: str | None = None
    url: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    unsubscribe_url: str | None = None  # e-mail: List-Unsubscribe (RFC 8058 one-click)


@dataclass(frozen=True, slots=True)
class Message:
    """One message to one person, ready to send.

    ``delivery_id`` is stable for (campaign, person, membership version, step): every retry
    of the same message carries it, so a provider or receiver that deduplicates (webhook
    ``webhook-id``, e-mail ``Message-ID``) drops a repeat.
    """

    delivery_id: str
    site_id: str
    campaign_id: str
    person_id: str
    step: int
    recipient: Recipient
    content: Content
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class Delivered:
    """The provider accepted the message."""

    provider_id: str | None = None  # Twilio SM..., SMTP queue id, Telegram message_id
    status: int | None = None
    response: str = ""


SendResult = Delivered | DestinationError


class Channel(Protocol):
    """One destination: an SMTP server, a Twilio account, a VAPID key pair, a webhook URL, a
    Telegram bot. Built from its validated config and resolved secrets by the registry."""

    @property
    def kind(self) -> ChannelKind: ...

    @property
    def max_batch(self) -> int:
        """How many messages one :meth:`send_batch` call may carry (1: per person)."""
        ...

    async def send_batch(self, messages: Sequence[Message]) -> list[SendResult]:
        """One attempt for each message; a result per message, in order. Raises nothing but
        ``DestinationError`` subclasses for problems of the whole call (then every message of
        the batch shares that outcome)."""
        ...

    async def aclose(self) -> None:
        """Close connections (SMTP pool, HTTP client)."""
        ...
