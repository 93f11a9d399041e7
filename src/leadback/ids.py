"""Identifiers: UUIDv7 event ids and random visitor ids."""

from __future__ import annotations

import os
import re

_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_POOL_BYTES = 4096

# Ids are drawn from a buffer of os.urandom bytes: one getrandom() call per few hundred ids
# instead of one per id (a syscall is a measurable share of a pixel's cost).
_pool = b""
_pool_at = 0


def _random_bytes(n: int) -> bytes:
    global _pool, _pool_at  # noqa: PLW0603 - a per-process buffer
    end = _pool_at + n
    if end > len(_pool):
        _pool, _pool_at, end = os.urandom(_POOL_BYTES), 0, n
    chunk = _pool[_pool_at:end]
    _pool_at = end
    return chunk


def _drop_pool() -> None:
    global _pool, _pool_at
    _pool, _pool_at = b"", 0


# A forked child must not hand out its parent's buffered bytes again.
os.register_at_fork(after_in_child=_drop_pool)

# The first hex digit of rand_b carries the RFC 9562 variant (binary 10xx).
_VARIANT = {c: "89ab"[int(c, 16) & 0x3] for c in "0123456789abcdef"}


def uuid7(now_ms: int) -> str:
    """A UUIDv7 (RFC 9562) string: the 48-bit Unix ms timestamp ``now_ms``, then 74 random bits.

    Time-ordered, so ids sort roughly by arrival, which keeps ClickHouse parts tidy. The time
    comes from the caller's clock.
    """
    t = f"{now_ms & 0xFFFF_FFFF_FFFF:012x}"
    r = _random_bytes(10).hex()  # 80 bits; 74 are used
    # version 7, rand_a (12 bits), variant + rand_b (2 + 62 bits)
    return f"{t[:8]}-{t[8:]}-7{r[:3]}-{_VARIANT[r[3]]}{r[4:7]}-{r[7:19]}"


def new_visitor_id() -> str:
    """A random 128-bit first-party visitor id, 32 lower-case hex characters."""
    return _random_bytes(16).hex()


def is_visitor_id(value: str) -> bool:
    """Whether ``value`` looks like an id :func:`new_visitor_id` made (cookie validation)."""
    return bool(_HEX32.match(value))
