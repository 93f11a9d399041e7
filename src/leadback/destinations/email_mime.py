"""One :class:`~leadback.destinations.base.Message` -> the MIME bytes and envelope of an e-mail.

What every mail carries: ``From`` (with the sender's name), ``To``, ``Subject`` (RFC 2047
encoded words when not ASCII), ``Date``, ``Message-ID`` and ``X-Leadback-Delivery`` derived
from the delivery id only (a resent duplicate has the same Message-ID, and no custom header
names the person), and when the content has an unsubscribe link, ``List-Unsubscribe`` (the
HTTPS link, then the configured mailto) with ``List-Unsubscribe-Post:
List-Unsubscribe=One-Click`` (RFC 8058). Bodies are ``multipart/alternative`` (text, then
HTML) when both exist, else the one part there is, UTF-8 quoted-printable.

``List-Unsubscribe`` is written verbatim (``set_raw``, ``refold_source="none"``): the
library's refolding turns a long URL into encoded words, which no mail client follows.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Final

from leadback.destinations.base import (
    DestinationRejected,
    EmailAddress,
    Message,
    RecipientGone,
)

MAX_ADDRESS: Final = 254
_POLICY: Final = email_policy.SMTP.clone(refold_source="none")
_POLICY_UTF8: Final = _POLICY.clone(utf8=True)
_STABLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,127}")
_HEADER_URI = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the mail is from, as configured on the destination."""

    from_address: str
    from_name: str
    reply_to: str | None = None
    unsubscribe_mailto: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """What the SMTP transaction sends: MAIL FROM, RCPT TO and the DATA bytes."""

    sender: str
    recipient: str
    smtputf8: bool  # the recipient's local part is not ASCII (RFC 6531)
    data: bytes


def smtp_address(address: str) -> tuple[str, bool]:
    """``address`` ready for the envelope: the domain IDNA-encoded, and whether the local part
    needs SMTPUTF8. ``ValueError`` when it is not an address at all."""
    if (
        len(address) > MAX_ADDRESS
        or not address.isprintable()
        or any(ch.isspace() for ch in address)
        or any(ch in '<>"\\' for ch in address)
    ):
        raise ValueError("not an address")
    local, _, domain = address.rpartition("@")
    if not local or not domain or "." not in domain:
        raise ValueError("not an address")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError("not an address") from exc
    return f"{local}@{ascii_domain}", not local.isascii()


def stable_id(delivery_id: str) -> str:
    """The delivery id if it is safe in a header and a Message-ID, else its SHA-256 (hex)."""
    if _STABLE_ID.fullmatch(delivery_id):
        return delivery_id
    return hashlib.sha256(delivery_id.encode()).hexdigest()


def message_id(delivery_id: str, from_address: str) -> str:
    """``<{delivery id}@{sender's domain}>``: the same for every attempt of one delivery."""
    domain = smtp_address(from_address)[0].rpartition("@")[2]
    return f"<{stable_id(delivery_id)}@{domain}>"


def _list_unsubscribe(url: str, mailto: str | None, delivery: str) -> str:
    if not _HEADER_URI.fullmatch(url) or "<" in url or ">" in url or "," in url:
        raise DestinationRejected("invalid_message", "the unsubscribe URL cannot go in a header")
    value = f"<{url}>"
    if mailto:
        # The subject names the delivery (in the ledger), never the person's address.
        value += f",\r\n <mailto:{mailto}?subject=unsubscribe%20{delivery}>"
    return value


def render(message: Message, identity: Identity, *, now: float) -> Envelope:
    """The envelope and bytes of ``message``.

    Raises ``RecipientGone("invalid_address")`` when the recipient is no address and
    ``DestinationRejected("invalid_message")`` when the content cannot make a mail (no
    subject, no body, a line break in the subject, an unusable unsubscribe URL).
    """
    recipient = message.recipient
    if not isinstance(recipient, EmailAddress):
        raise DestinationRejected("invalid_recipient", "the e-mail channel needs an EmailAddress")
    try:
        to_address, smtputf8 = smtp_address(recipient.address)
    except ValueError as exc:
        raise RecipientGone("invalid_address", "invalid_address", "not an e-mail address") from exc
    content = message.content
    if not content.subject:
        raise DestinationRejected("invalid_message", "an e-mail needs a subject")
    if not content.text and not content.html:
        raise DestinationRejected("invalid_message", "an e-mail needs a text or an HTML body")
    delivery = stable_id(message.delivery_id)
    sender = smtp_address(identity.from_address)[0]

    msg = EmailMessage(policy=_POLICY_UTF8 if smtputf8 else _POLICY)
    try:
        msg["From"] = Address(display_name=identity.from_name, addr_spec=sender)
        msg["To"] = Address(addr_spec=to_address)
        if identity.reply_to:
            msg["Reply-To"] = Address(addr_spec=identity.reply_to)
        msg["Subject"] = content.subject
    except (ValueError, IndexError) as exc:  # a line break in a header, an odd address
        raise DestinationRejected("invalid_message", "a header cannot be encoded") from exc
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    msg["Message-ID"] = message_id(message.delivery_id, identity.from_address)
    msg["X-Leadback-Delivery"] = delivery
    if content.unsubscribe_url:
        unsubscribe = _list_unsubscribe(
            content.unsubscribe_url, identity.unsubscribe_mailto, delivery
        )
        msg.set_raw("List-Unsubscribe", unsubscribe)
        msg.set_raw("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
    _set_body(msg, content.text, content.html)
    return Envelope(sender=sender, recipient=to_address, smtputf8=smtputf8, data=msg.as_bytes())


def _set_body(msg: EmailMessage, text: str, html: str | None) -> None:
    if text and html:
        msg.set_content(text, cte="quoted-printable")
        msg.add_alternative(html, subtype="html", cte="quoted-printable")
        for part in msg.iter_parts():
            del part["MIME-Version"]  # only the top level carries it
    elif html:
        msg.set_content(html, subtype="html", cte="quoted-printable")
    else:
        msg.set_content(text, cte="quoted-printable")
