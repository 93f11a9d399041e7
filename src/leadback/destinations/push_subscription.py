"""A browser's push subscription: the rules ingest accepts it by and the form it is stored in.

The browser's ``PushSubscription.toJSON()`` is ``{"endpoint": "https://...", "keys": {"p256dh":
"<base64url>", "auth": "<base64url>"}}``. Ingest validates it here, stores its compact JSON
(:func:`subscription_json`) encrypted with the contact cipher in the ``push_subscribed`` signal
(``subscription_enc``), and keys it by :func:`endpoint_sha256`; the dispatcher decrypts it and
reads it back with :func:`subscription_from_json` into the
:class:`~leadback.destinations.base.PushSubscription` the web push channel sends to.

An endpoint is an address of the person (it identifies their browser): it is never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from typing import Final

import orjson
from cryptography.hazmat.primitives.asymmetric import ec

from leadback.destinations.base import DestinationRejected, PushSubscription
from leadback.destinations.egress import check_url
from leadback.errors import InvalidInputError

MAX_ENDPOINT_CHARS: Final = 2048
P256DH_BYTES: Final = 65  # an uncompressed P-256 point: 0x04 || X || Y
AUTH_BYTES: Final = 16  # RFC 8291 §3.2
_B64URL: Final = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


def b64url_decode(text: str) -> bytes:
    """Base64url with or without padding; ``ValueError`` on any other character."""
    if not _B64URL.match(text):
        raise ValueError("not base64url")
    stripped = text.rstrip("=")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc


def endpoint_sha256(endpoint: str) -> str:
    """The lower-case hex SHA-256 of the endpoint: the subscription's key in the store."""
    return hashlib.sha256(endpoint.encode()).hexdigest()


def _invalid(field: str, detail: str) -> InvalidInputError:
    return InvalidInputError("invalid_push_subscription", f"{field}: {detail}", field=field)


def check_endpoint(endpoint: str, *, allow_private: bool, field: str = "endpoint") -> str:
    """``endpoint`` if it is an https URL of at most :data:`MAX_ENDPOINT_CHARS` whose host is
    not a private IP literal (``http`` and private addresses when ``allow_private``). Host
    names are not resolved here: the channel resolves and checks them at send time."""
    if not endpoint:
        raise _invalid(field, "is empty")
    if len(endpoint) > MAX_ENDPOINT_CHARS:
        raise _invalid(field, f"is longer than {MAX_ENDPOINT_CHARS} characters")
    try:
        check_url(endpoint, allow_private=allow_private)
    except DestinationRejected as exc:
        raise _invalid(field, exc.detail) from exc
    return endpoint


def decode_p256dh(text: str, *, field: str = "keys.p256dh") -> bytes:
    """The browser's public key: 65 bytes, a point on P-256."""
    try:
        raw = b64url_decode(text)
    except ValueError as exc:
        raise _invalid(field, "is not base64url") from exc
    if len(raw) != P256DH_BYTES or raw[0] != 0x04:
        raise _invalid(field, f"must be a {P256DH_BYTES}-byte uncompressed P-256 point")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError as exc:
        raise _invalid(field, "is not a point on P-256") from exc
    return raw


def decode_auth(text: str, *, field: str = "keys.auth") -> bytes:
    """The subscription's authentication secret: 16 bytes."""
    try:
        raw = b64url_decode(text)
    except ValueError as exc:
        raise _invalid(field, "is not base64url") from exc
    if len(raw) != AUTH_BYTES:
        raise _invalid(field, f"must be {AUTH_BYTES} bytes")
    return raw


def validate_subscription(
    endpoint: str, p256dh: str, auth: str, *, allow_private: bool, prefix: str = ""
) -> PushSubscription:
    """A checked subscription; :class:`InvalidInputError` naming the field (``prefix`` + name)
    otherwise."""
    check_endpoint(endpoint, allow_private=allow_private, field=f"{prefix}endpoint")
    decode_p256dh(p256dh, field=f"{prefix}keys.p256dh")
    decode_auth(auth, field=f"{prefix}keys.auth")
    return PushSubscription(endpoint=endpoint, p256dh=p256dh, auth=auth)


def subscription_json(sub: PushSubscription) -> str:
    """The compact JSON stored (encrypted) for a subscription."""
    doc = {"endpoint": sub.endpoint, "keys": {"p256dh": sub.p256dh, "auth": sub.auth}}
    return orjson.dumps(doc).decode()


def subscription_from_json(text: str) -> PushSubscription:
    """A stored subscription read back (after decryption); :class:`InvalidInputError` if it is
    not the shape :func:`subscription_json` writes."""
    try:
        doc = orjson.loads(text)
        keys = doc["keys"]
        endpoint, p256dh, auth = doc["endpoint"], keys["p256dh"], keys["auth"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise InvalidInputError("invalid_push_subscription", "not a subscription") from exc
    if not all(isinstance(v, str) for v in (endpoint, p256dh, auth)):
        raise InvalidInputError("invalid_push_subscription", "not a subscription")
    return PushSubscription(endpoint=endpoint, p256dh=p256dh, auth=auth)
