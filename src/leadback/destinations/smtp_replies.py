"""SMTP replies and aiosmtplib errors -> what the dispatcher should do.

=====================================  ==========================================================
what happened                          result
=====================================  ==========================================================
2xx after DATA                         ``Delivered`` (``provider_id``: the queue id in the reply)
4xx anywhere (421, 450, 451, 452 ...)  ``DestinationUnavailable("smtp_4xx")``
connection refused                     ``DestinationUnavailable("smtp_connect")``
connection lost                        ``DestinationUnavailable("smtp_disconnected")``
no answer in ``timeout_s``             ``DestinationUnavailable("timeout")``
5xx on RCPT, mailbox does not exist    ``RecipientGone("hard_bounce", "smtp_5xx")``: 550, 551,
                                       553 without an enhanced code, or any 5xx with 5.1.x or
                                       5.2.1 (5.1.3, bad address syntax: ``invalid_address``)
other 5xx (5.7.x policy, 552 size...)  ``DestinationRejected("smtp_5xx")``
530, 534, 535, 538; AUTH unsupported   ``DestinationRejected("smtp_auth")``
STARTTLS refused, TLS handshake        ``DestinationRejected("smtp_tls")``
=====================================  ==========================================================

A 550 with a 5.7.x code is a policy refusal (spam filter, sender reputation, Microsoft's
5.7.515 authentication rule): the mailbox exists, so it is not treated as a hard bounce.
Reply texts often quote addresses (Postfix: ``<bob@example.org>: Recipient address
rejected``): :func:`redact` replaces anything shaped like an address before a reply is kept.
"""

from __future__ import annotations

import re
import ssl
from typing import Final, Literal

import aiosmtplib

from leadback.destinations.base import (
    DestinationError,
    DestinationRejected,
    DestinationUnavailable,
    RecipientGone,
)

Phase = Literal["connect", "mail", "rcpt", "data"]

AUTH_CODES: Final = frozenset({530, 534, 535, 538})
_ADDRESS = re.compile(r"[^\s<>\"'(),;:\[\]]+@[^\s<>\"'(),;:\[\]]+")
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
# Queue ids as servers report them after DATA: Postfix/SendGrid "queued as X", Exim "id=X",
# Sendmail "X Message accepted for delivery", Amazon SES "Ok X".
_QUEUE_ID = (
    re.compile(r"queued as ([A-Za-z0-9._\-]+)", re.IGNORECASE),
    re.compile(r"\bid=([A-Za-z0-9._\-]+)"),
    re.compile(r"^(?:\d\.\d\.\d\s+)?([A-Za-z0-9]{8,32})\s+Message accepted", re.IGNORECASE),
    re.compile(r"^(?:\d\.\d\.\d\s+)?Ok ([0-9a-f][0-9a-f\-]{15,})", re.IGNORECASE),
)


def redact(text: str) -> str:
    """``text`` with every e-mail-shaped token replaced by ``[address]``."""
    return _ADDRESS.sub("[address]", text)


def queue_id(reply: str) -> str | None:
    """The server's queue id from its reply to DATA, if it gave one in a known form."""
    for pattern in _QUEUE_ID:
        match = pattern.search(reply)
        if match:
            return match.group(1)
    return None


def enhanced_code(reply: str) -> tuple[int, int, int] | None:
    """RFC 3463 status (``5.1.1`` -> ``(5, 1, 1)``) at the start of a reply text, if any."""
    match = _ENHANCED.match(reply)
    if match is None:
        return None
    klass, subject, detail = match.groups()
    return int(klass), int(subject), int(detail)


def reply_error(code: int, reply: str, phase: Phase) -> DestinationError:
    """The result of a non-2xx reply ``code`` with text ``reply`` to a command of ``phase``."""
    text = redact(reply)
    reason = f"smtp_{code}"
    what = {
        "connect": "server refused the session",
        "mail": "sender refused",
        "rcpt": "recipient refused",
        "data": "message refused",
    }[phase]
    if code in AUTH_CODES:
        detail = "authentication failed or required"
        return DestinationRejected("smtp_auth", detail, status=code, response=text)
    if 400 <= code < 500:
        return DestinationUnavailable(reason, what, status=code, response=text)
    if phase == "rcpt" and 500 <= code < 600:
        enhanced = enhanced_code(reply)
        if enhanced == (5, 1, 3):
            return RecipientGone("invalid_address", reason, what, status=code, response=text)
        gone = (
            code in (550, 551, 553)
            if enhanced is None
            else enhanced[1] == 1 or enhanced[1:] == (2, 1)
        )
        if gone:
            return RecipientGone("hard_bounce", reason, what, status=code, response=text)
    return DestinationRejected(reason, what, status=code, response=text)


def exception_error(exc: Exception, phase: Phase) -> DestinationError:
    """An aiosmtplib (or socket/TLS) exception raised during ``phase`` as a result."""
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return DestinationUnavailable("timeout", f"no answer from the SMTP server ({phase})")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        first = exc.recipients[0]
        return reply_error(first.code, first.message, "rcpt")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return DestinationRejected(
            "smtp_auth", "authentication failed", status=exc.code, response=redact(exc.message)
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return reply_error(exc.code, exc.message, phase)
    if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
        return DestinationRejected("smtp_tls", "TLS handshake failed", response=str(exc))
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return DestinationUnavailable("smtp_disconnected", f"connection lost ({phase})")
    if isinstance(exc, aiosmtplib.SMTPConnectError | OSError):
        detail = "cannot reach the SMTP server"
        return DestinationUnavailable("smtp_connect", detail, response=redact(str(exc)))
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return DestinationRejected("smtp_unsupported", str(exc))
    if isinstance(exc, aiosmtplib.SMTPException):
        message = str(exc)
        if "STARTTLS" in message:
            return DestinationRejected("smtp_tls", message)
        if "AUTH" in message or "authentication" in message:
            return DestinationRejected("smtp_auth", message)
        return DestinationUnavailable("smtp_error", redact(message))
    return DestinationUnavailable("smtp_error", type(exc).__name__)
