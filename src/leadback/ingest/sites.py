"""Sites and their write keys, looked up without leaking key bytes through timing."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Literal

from leadback.errors import AuthError
from leadback.settings import SiteSettings


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class SiteRegistry:
    """Known sites, their consent defaults, and write key -> site resolution."""

    def __init__(self, sites: Mapping[str, SiteSettings]) -> None:
        self.known = frozenset(sites)
        self.consent_defaults: dict[str, Literal["granted", "denied"]] = {
            site_id: s.consent_default for site_id, s in sites.items() if s.consent_default
        }
        # Looking up a SHA-256 of the key: the dict compare sees digests, not key prefixes.
        self._by_digest = {_digest(s.write_key.get_secret_value()): sid for sid, s in sites.items()}

    def site_for_key(self, key: str | None) -> str:
        """The site a write key belongs to; :class:`AuthError` if none."""
        if not key:
            raise AuthError("missing write key")
        site = self._by_digest.get(_digest(key))
        if site is None:
            raise AuthError("unknown write key")
        return site


def write_key_from_headers(authorization: str | None, x_write_key: str | None) -> str | None:
    """The write key from ``Authorization: Bearer <key>``, ``Basic base64(<key>:)`` (Segment's
    convention) or ``X-Write-Key``."""
    if x_write_key:
        return x_write_key.strip()
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip() or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[0] or None
    return None
