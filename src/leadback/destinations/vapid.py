"""VAPID (RFC 8292): the application server's signed claim to each push service.

Every push request carries ``Authorization: vapid t=<JWT>, k=<public key>``, where the JWT
(ES256) names the push service's origin in ``aud``, expires within 24 hours (``exp``) and says
who to contact (``sub``, ``mailto:`` or ``https:``). The claims are built fresh for each origin:
pywebpush's ``webpush()`` fills ``aud`` into the dict it is handed and reuses it, so one dict
shared across push services sends the first service's ``aud`` to all the others, which refuse
it (``references/destinations.md`` §7). Signing is ECDSA work, so a token is reused for its
origin until shortly before it expires.
"""

from __future__ import annotations

import base64
from typing import Final

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid
from py_vapid.jwt import sign as sign_jwt

from leadback.clock import Clock
from leadback.errors import ConfigError

TOKEN_LIFETIME_S: Final = 12 * 3600  # RFC 8292 §2: at most 24 h; what pywebpush uses
RENEW_BEFORE_S: Final = 3600  # a token is replaced when less than this is left


def load_private_key(text: str) -> ec.EllipticCurvePrivateKey:
    """A VAPID private key from PEM, or from raw/DER base64url as py_vapid takes it.
    :class:`ConfigError` (without the key) when it is neither, or not on P-256."""
    try:
        if "-----BEGIN" in text:
            vapid = Vapid.from_pem(text.strip().encode())
        else:
            vapid = Vapid.from_string(text.strip())
        key = vapid.private_key
    except Exception as exc:  # py_vapid raises whatever its parsers raise
        raise ConfigError(
            "vapid_private_key is not a private key (PEM, or raw 32-byte base64url)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError("vapid_private_key must be a P-256 (prime256v1) key")
    return key


def public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    """The uncompressed public point, base64url without padding (``k=`` and the browser's
    ``applicationServerKey``)."""
    raw = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def origin_of(endpoint: str) -> str:
    """The ASCII origin of a push endpoint (``scheme://host[:port]``), the JWT's ``aud``."""
    url = httpx.URL(endpoint)
    host = url.raw_host.decode("ascii")
    if ":" in host:
        host = f"[{host}]"
    return f"{url.scheme}://{host}" + (f":{url.port}" if url.port is not None else "")


class VapidSigner:
    """Makes the ``Authorization`` header for an endpoint, one cached token per origin."""

    def __init__(
        self,
        private_key: ec.EllipticCurvePrivateKey,
        subject: str,
        clock: Clock,
        *,
        lifetime_s: int = TOKEN_LIFETIME_S,
    ) -> None:
        self._key = private_key
        self.public_key = public_key_b64(private_key)
        self._subject = subject
        self._clock = clock
        self._lifetime_s = lifetime_s
        self._tokens: dict[str, tuple[int, str]] = {}  # origin -> (exp, header)

    def authorization(self, endpoint: str) -> str:
        """``vapid t=<jwt>, k=<public key>`` for the push service of ``endpoint``."""
        origin = origin_of(endpoint)
        now = int(self._clock.now())
        cached = self._tokens.get(origin)
        if cached is not None and cached[0] - now > RENEW_BEFORE_S:
            return cached[1]
        exp = now + self._lifetime_s
        # A new dict for every origin and every token: never one shared, mutated dict.
        claims = {"aud": origin, "exp": exp, "sub": self._subject}
        header = f"vapid t={sign_jwt(claims, self._key)}, k={self.public_key}"
        if len(self._tokens) > 1024:  # push services are few; anything else is junk endpoints
            self._tokens.clear()
        self._tokens[origin] = (exp, header)
        return header
