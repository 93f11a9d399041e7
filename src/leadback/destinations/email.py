"""The e-mail channel: SMTP (aiosmtplib) over a pool of open connections.

Each message is one SMTP transaction (MAIL, RCPT, DATA) on a pooled connection
(:mod:`~leadback.destinations.smtp_pool`), so one refused recipient fails only its own
message: the session is reset (RSET) and serves the next one. A reused connection found
dead at MAIL (the server closed it while idle, or answered 421) is replaced once by a
fresh one; nothing was accepted yet, so this cannot send a mail twice. Every SMTP command,
the connection and the TLS handshake have the destination's ``timeout_s``.

Connections are opened one at a time. When a batch cannot connect (server down, TLS or
AUTH refused), the messages of that batch still waiting for a connection share the first
failure instead of each trying again: a wrong password is tried once per batch, not once
per message (servers lock accounts out), and a server that does not answer costs one
timeout, not one per message.

Replies map to results as :mod:`~leadback.destinations.smtp_replies` draws it; the MIME
form is :mod:`~leadback.destinations.email_mime`'s.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Sequence
from typing import Final, Literal

import aiosmtplib
from pydantic import Field, field_validator, model_validator

from leadback.clock import Clock
from leadback.destinations.base import (
    ChannelKind,
    Delivered,
    DestinationError,
    DestinationRejected,
    DestinationUnavailable,
    Message,
    SendResult,
)
from leadback.destinations.config import ChannelDeps, DestinationConfig, SecretRef
from leadback.destinations.email_mime import Envelope, Identity, render, smtp_address
from leadback.destinations.smtp_pool import Lease, SmtpPool
from leadback.destinations.smtp_replies import Phase, exception_error, queue_id, redact
from leadback.logs import get_logger

log = get_logger(__name__)

MAX_BATCH: Final = 20
DEFAULT_PORTS: Final = {"starttls": 587, "tls": 465, "none": 25}
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9\-.]{0,251}[A-Za-z0-9])?")
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain"})


def _check_address(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        address, utf8 = smtp_address(value)
    except ValueError as exc:
        raise ValueError("not an e-mail address (name@domain.tld)") from exc
    if utf8:
        raise ValueError("the local part of a sender address must be ASCII")
    return address


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EmailConfig(DestinationConfig):
    """An SMTP server (a relay such as Postfix, or a provider's SMTP endpoint)."""

    kind: Literal["email"] = "email"
    host: str = Field(min_length=1, max_length=253, description="SMTP server host name or IP")
    port: int | None = Field(
        None, ge=1, le=65535, description="default: 587 (starttls), 465 (tls), 25 (none)"
    )
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls",
        description="starttls: upgrade required (refused if the server does not offer it); "
        "tls: TLS from the first byte (port 465); none: clear text (loopback relays only "
        "when there are credentials)",
    )
    username: str | None = Field(None, min_length=1, max_length=256)
    password: SecretRef | None = None
    from_address: str = Field(description="envelope sender and From address")
    from_name: str = Field("", max_length=200, description="From display name")
    reply_to: str | None = None
    pool_size: int | None = Field(
        None, ge=1, le=256, description="SMTP connections kept open (default: concurrency)"
    )
    list_unsubscribe_mailto: str | None = Field(
        None, description="address added to List-Unsubscribe as a mailto: link"
    )
    ca_file: str | None = Field(
        None, min_length=1, max_length=4096, description="CA bundle for a private SMTP server"
    )
    helo_name: str | None = Field(
        None, max_length=253, description="EHLO name (default: this host's FQDN)"
    )
    max_idle_s: float = Field(
        30.0, gt=0, le=3600, description="an idle connection older than this is not reused"
    )

    @field_validator("from_address", "reply_to", "list_unsubscribe_mailto")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return _check_address(value)

    @field_validator("from_name")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("the From name must be one line of printable characters")
        return value

    @field_validator("helo_name")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        if value is not None and not _HOSTNAME.fullmatch(value):
            raise ValueError("the EHLO name must be a host name")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> EmailConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.username is not None and self.security == "none" and not _is_loopback(self.host):
            raise ValueError(
                "security 'none' with credentials sends the password in clear: "
                "use starttls or tls (clear text is allowed to a loopback relay only)"
            )
        return self

    @property
    def effective_port(self) -> int:
        """The configured port, or the usual one for the security mode."""
        return self.port or DEFAULT_PORTS[self.security]


class _Batch:
    """What the messages of one ``send_batch`` call share: the first connection failure."""

    __slots__ = ("failure",)

    def __init__(self) -> None:
        self.failure: DestinationError | None = None


class _NoConnection(Exception):
    """Internal: a connection could not be opened; carries the result for the message."""

    def __init__(self, error: DestinationError) -> None:
        super().__init__(error.reason)
        self.error = error


class _Stale:
    """Internal: a reused connection was dead before the transaction began."""


_STALE: Final = _Stale()


class EmailChannel:
    """Sends :class:`Message` objects with an ``EmailAddress`` recipient over SMTP."""

    def __init__(self, config: EmailConfig, password: str | None, clock: Clock) -> None:
        self._config = config
        self._password = password
        self._clock = clock
        self._identity = Identity(
            from_address=config.from_address,
            from_name=config.from_name,
            reply_to=config.reply_to,
            unsubscribe_mailto=config.list_unsubscribe_mailto,
        )
        self._connecting = asyncio.Lock()  # one connection attempt at a time (see _open)
        self.pool = SmtpPool(
            size=config.pool_size or config.concurrency, clock=clock, max_idle_s=config.max_idle_s
        )

    @property
    def kind(self) -> ChannelKind:
        return "email"

    @property
    def max_batch(self) -> int:
        return MAX_BATCH

    async def send_batch(self, messages: Sequence[Message]) -> list[SendResult]:
        """One SMTP transaction per message, up to the pool size at once; results in order."""
        batch = _Batch()
        return list(await asyncio.gather(*(self._send(m, batch) for m in messages)))

    async def aclose(self) -> None:
        """QUIT and close the pooled connections."""
        await self.pool.aclose()

    async def _send(self, message: Message, batch: _Batch) -> SendResult:
        try:
            envelope = render(message, self._identity, now=self._clock.now())
        except DestinationError as error:
            return error
        fresh = False
        while True:
            try:
                async with self.pool.lease(lambda: self._open(batch), fresh=fresh) as lease:
                    outcome = await _transaction(lease, envelope)
            except _NoConnection as failed:
                return failed.error
            if not isinstance(outcome, _Stale):
                return outcome
            if fresh:  # a fresh connection is never stale; defensive
                return DestinationUnavailable("smtp_disconnected", "connection lost (mail)")
            fresh = True

    async def _open(self, batch: _Batch) -> aiosmtplib.SMTP:
        # Serialized, so that after a failure the batch's other messages see it instead of
        # trying too: one login attempt per batch with a wrong password, not pool_size.
        async with self._connecting:
            if batch.failure is not None:
                raise _NoConnection(batch.failure)
            return await self._connect(batch)

    async def _connect(self, batch: _Batch) -> aiosmtplib.SMTP:
        cfg = self._config
        smtp = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.effective_port,
            timeout=cfg.timeout_s,
            use_tls=cfg.security == "tls",
            start_tls=cfg.security == "starttls",
            cert_bundle=cfg.ca_file,
            username=cfg.username,
            password=self._password,
            local_hostname=cfg.helo_name,
        )
        try:
            await smtp.connect()
            if smtp.is_ehlo_or_helo_needed:
                await smtp.ehlo()  # the extensions (SIZE, SMTPUTF8) before the first MAIL
        except (aiosmtplib.SMTPException, OSError) as exc:
            smtp.close()
            error = exception_error(exc, "connect")
            batch.failure = error
            log.warning(
                "smtp connection failed",
                destination=cfg.id,
                reason=error.reason,
                status=error.status,
            )
            raise _NoConnection(error) from exc
        return smtp


async def _transaction(lease: Lease, envelope: Envelope) -> SendResult | _Stale:
    """MAIL, RCPT, DATA for one message on one connection."""
    smtp = lease.smtp
    encoding = "utf-8" if envelope.smtputf8 else "ascii"
    options: list[str] = []
    if envelope.smtputf8:
        if not smtp.supports_extension("smtputf8"):
            detail = "the recipient's address needs SMTPUTF8, which the server does not offer"
            return DestinationRejected("smtp_utf8_unsupported", detail)
        options.append("SMTPUTF8")
    if smtp.supports_extension("size"):
        options.append(f"SIZE={len(envelope.data)}")
    phase: Phase = "mail"
    try:
        await smtp.mail(envelope.sender, options=options, encoding=encoding)
        phase = "rcpt"
        await smtp.rcpt(envelope.recipient, encoding=encoding)
        phase = "data"
        reply = await smtp.data(envelope.data)
    except aiosmtplib.SMTPResponseException as exc:
        if phase == "mail" and lease.reused and exc.code == 421:
            lease.discard()  # the server is closing this session: try a new one
            return _STALE
        await _reset(lease)
        return exception_error(exc, phase)
    except (aiosmtplib.SMTPException, OSError) as exc:
        lease.discard()
        stale = isinstance(exc, aiosmtplib.SMTPServerDisconnected)
        if phase == "mail" and lease.reused and stale:
            return _STALE
        return exception_error(exc, phase)
    return Delivered(
        provider_id=queue_id(reply.message), status=reply.code, response=redact(reply.message)
    )


async def _reset(lease: Lease) -> None:
    """RSET after a refused command, so the connection can serve the next message."""
    if not lease.smtp.is_connected:
        return
    try:
        await lease.smtp.rset()
    except (aiosmtplib.SMTPException, OSError):
        lease.discard()


def build(config: EmailConfig, deps: ChannelDeps) -> EmailChannel:
    """The channel for ``config``; resolves the password now (``ConfigError`` if absent)."""
    password = config.password.resolve() if config.password is not None else None
    return EmailChannel(config, password, deps.clock)
