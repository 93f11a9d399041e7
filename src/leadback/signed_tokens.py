"""Opaque signed tokens for links sent to people: one-click unsubscribe, Telegram deep links.

A token is ``base64url(payload) + base64url(mac)`` without padding, where ``mac`` is the first
12 bytes of HMAC-SHA256(key, purpose || 0x00 || payload). The purpose (``"unsubscribe"``,
``"telegram"``) is bound into the MAC, so a token made for one use is refused for another.
Tokens carry no expiry: an unsubscribe link must keep working for as long as the mail sits in
an inbox. Payloads are not encrypted: put ids in them, never contact details.

Telegram's ``/start`` parameter allows 64 characters of ``[A-Za-z0-9_-]``: a 16-byte visitor
id makes a 38-character token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING, Final

from leadback.errors import ConfigError, InvalidInputError
from leadback.generated_secrets import generated_secret
from leadback.logs import get_logger

if TYPE_CHECKING:
    from leadback.settings import Settings

log = get_logger(__name__)

MAC_BYTES: Final = 12
MIN_KEY_BYTES: Final = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Signs and verifies tokens with one key; extra keys only verify (rotation)."""

    __slots__ = ("_keys",)

    def __init__(self, key: bytes, *old_keys: bytes) -> None:
        for k in (key, *old_keys):
            if len(k) < MIN_KEY_BYTES:
                raise ConfigError(f"a token key needs at least {MIN_KEY_BYTES} bytes")
        self._keys = (key, *old_keys)

    @staticmethod
    def generate_key() -> str:
        """A new random key as ``LEADBACK_DISPATCHER_TOKEN_KEY`` expects it (64 hex digits)."""
        return secrets.token_hex(32)

    @staticmethod
    def _mac(key: bytes, purpose: str, payload: bytes) -> bytes:
        digest = hmac.new(key, purpose.encode() + b"\x00" + payload, hashlib.sha256).digest()
        return digest[:MAC_BYTES]

    def sign(self, purpose: str, payload: bytes) -> str:
        """A token carrying ``payload`` for ``purpose``."""
        return _b64(payload + self._mac(self._keys[0], purpose, payload))

    def verify(self, purpose: str, token: str) -> bytes:
        """The payload of a token made for ``purpose`` with one of the keys.

        Raises ``InvalidInputError("invalid_token")`` for anything else (the detail never says
        which check failed).
        """
        bad = InvalidInputError("invalid_token", "the link is not valid")
        if not token or len(token) > 4096 or not token.isascii():
            raise bad
        try:
            raw = _unb64(token)
        except ValueError as exc:
            raise bad from exc
        if len(raw) <= MAC_BYTES or _b64(raw) != token:
            raise bad
        payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        for key in self._keys:
            if hmac.compare_digest(mac, self._mac(key, purpose, payload)):
                return payload
        raise bad


def token_signer(settings: Settings) -> TokenSigner:
    """The signer for ``LEADBACK_DISPATCHER_TOKEN_KEYS`` (first signs, all verify).

    In the embedded mode with no key configured, one is generated once into
    ``<data_dir>/secrets/token_key`` and shared by ingest (which verifies) and the dispatcher
    (which signs). Production refuses to start without keys (see the settings).
    """
    keys = [k.get_secret_value().encode() for k in settings.dispatcher.token_keys]
    if keys:
        return TokenSigner(*keys)
    if settings.environment != "embedded":
        raise ConfigError("LEADBACK_DISPATCHER_TOKEN_KEYS is required outside the embedded mode")
    path = settings.data_dir / "secrets" / "token_key"
    key, _ = generated_secret(
        path, TokenSigner.generate_key, setting="LEADBACK_DISPATCHER_TOKEN_KEYS"
    )
    return TokenSigner(key.encode())
