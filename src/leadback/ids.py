"""Identifiers: UUIDv7 event ids and random visitor ids."""

from __future__ import annotations

import os
import re
import time

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def uuid7(now_ms: int | None = None) -> str:
    """A UUIDv7 (RFC 9562) string: 48-bit Unix ms timestamp, then 74 random bits.

    Time-ordered, so ids sort roughly by arrival, which keeps ClickHouse parts tidy.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # RFC 9562 variant
    value |= rand & ((1 << 62) - 1)  # rand_b, 62 bits
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_visitor_id() -> str:
    """A random 128-bit first-party visitor id, 32 lower-case hex characters."""
    return os.urandom(16).hex()


def is_visitor_id(value: str) -> bool:
    """Whether ``value`` looks like an id :func:`new_visitor_id` made (cookie validation)."""
    return bool(_HEX32.match(value))
