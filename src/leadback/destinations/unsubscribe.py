"""Unsubscribe links: the one place that knows what an unsubscribe token carries.

The dispatcher signs a token per (site, person, channel, campaign) when it renders a message
and puts :func:`unsubscribe_url` in it (e-mail: the ``List-Unsubscribe`` header, RFC 8058);
ingest reads the token back when the link is used (``POST /v1/unsubscribe/{token}``).

The payload is compact JSON, ``{"s": site, "p": person, "c": channel, "m": campaign}``, signed
for the purpose ``"unsubscribe"`` (:class:`~leadback.signed_tokens.TokenSigner`): a token made
for another purpose, or altered by one character, is refused. Payloads are readable by whoever
holds the link, so they carry ids only, never a contact detail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, get_args

import orjson

from leadback.destinations.base import ChannelKind
from leadback.errors import InvalidInputError
from leadback.signed_tokens import TokenSigner

PURPOSE: Final = "unsubscribe"
UNSUBSCRIBE_PATH: Final = "/v1/unsubscribe/"

CHANNELS: Final = frozenset((*get_args(ChannelKind), "all"))


@dataclass(frozen=True, slots=True)
class UnsubscribeRequest:
    """Who asked to stop receiving what: ``channel`` is a channel kind or ``"all"``."""

    site_id: str
    person_id: str
    channel: str
    campaign_id: str


def unsubscribe_token(
    signer: TokenSigner, *, site_id: str, person_id: str, channel: str, campaign_id: str
) -> str:
    """A signed, URL-safe token for one person's unsubscribe link.

    ``channel`` is a channel kind (``"email"``, ``"sms"``, ...) or ``"all"``; anything else
    raises ``ValueError`` (a programming error, not a person's input).
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    if not site_id or not person_id:
        raise ValueError("an unsubscribe token needs a site and a person")
    payload = {"s": site_id, "p": person_id, "c": channel, "m": campaign_id}
    return signer.sign(PURPOSE, orjson.dumps(payload))


def read_unsubscribe_token(signer: TokenSigner, token: str) -> UnsubscribeRequest:
    """What a token made by :func:`unsubscribe_token` says.

    Raises ``InvalidInputError("invalid_token")`` for a forged, altered or other-purpose token
    (and, defensively, for a signed payload of the wrong shape).
    """
    payload = signer.verify(PURPOSE, token)
    bad = InvalidInputError("invalid_token", "the link is not valid")
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise bad from exc
    if not isinstance(data, dict):
        raise bad
    fields = (data.get("s"), data.get("p"), data.get("c"), data.get("m"))
    site_id, person_id, channel, campaign_id = fields
    if not all(isinstance(f, str) for f in fields) or not site_id or not person_id:
        raise bad
    if channel not in CHANNELS:
        raise bad
    return UnsubscribeRequest(
        site_id=str(site_id),
        person_id=str(person_id),
        channel=str(channel),
        campaign_id=str(campaign_id),
    )


def unsubscribe_url(public_url: str, token: str) -> str:
    """The link people (and mail providers, RFC 8058) use: ``<public_url>/v1/unsubscribe/<token>``.

    ``public_url`` is ingest's public base URL (``ChannelDeps.public_url``); the token is
    base64url, so it needs no escaping.
    """
    return public_url.rstrip("/") + UNSUBSCRIBE_PATH + token
