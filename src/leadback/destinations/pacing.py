"""Pacing sends per recipient and per sender on an injected clock (Telegram's published
guidance: at most one message a second to one chat, about 30 a second from one bot).

The invariant, in the clock's time: two sends to the same key start at least ``per_key_s``
apart, and any two sends at least ``1 / rate_per_s`` apart. A send is let go only when both
hold *now*, checked and recorded with no await in between, so it holds however late a sleeping
task wakes up. Sends to one key wait in turn on that key's lock; sends to different keys sleep
until the earliest time they could go and check again (at most ``concurrency`` of them wait,
so the re-checks cost little).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Final

from leadback.clock import Clock

_PRUNE_AT: Final = 10_000  # keys remembered before the stale ones are forgotten
_EPSILON: Final = 1e-9  # float sums of intervals land a hair short of the mark


class _Key:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class Pacer:
    """Waits until a send to ``key`` is allowed, then counts it as sent."""

    def __init__(self, clock: Clock, *, per_key_s: float, rate_per_s: float) -> None:
        self._clock = clock
        self._per_key_s = per_key_s
        self._interval = 1.0 / rate_per_s
        self._last_send = float("-inf")
        self._key_next: dict[Hashable, float] = {}
        self._keys: dict[Hashable, _Key] = {}

    async def wait(self, key: Hashable) -> None:
        """Return when a send to ``key`` may start now; the send is counted from here."""
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = _Key()
        entry.users += 1
        try:
            async with entry.lock:
                while True:
                    now = self._clock.monotonic()
                    ready = max(
                        self._key_next.get(key, float("-inf")), self._last_send + self._interval
                    )
                    if ready <= now + _EPSILON:
                        break
                    await self._clock.sleep(ready - now)
                self._last_send = now
                self._key_next[key] = now + self._per_key_s
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._keys[key]
        if len(self._key_next) > _PRUNE_AT:
            self._prune()

    def hold(self, key: Hashable, seconds: float) -> None:
        """No send to ``key`` for ``seconds`` from now (the provider said so)."""
        until = self._clock.monotonic() + seconds
        if until > self._key_next.get(key, float("-inf")):
            self._key_next[key] = until

    def _prune(self) -> None:
        now = self._clock.monotonic()
        for key in [k for k, t in self._key_next.items() if t <= now and k not in self._keys]:
            del self._key_next[key]
