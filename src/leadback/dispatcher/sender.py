"""Per-destination send queues: each destination has its own queue, workers (its
``concurrency``) and rate limit, so a slow or failing destination never delays the others.

A worker takes up to the channel's ``max_batch`` messages, waits for the rate limiter, makes
one ``send_batch`` call (bounded by the destination's timeout) and hands each message's result
to ``on_result``. Nothing here retries: a transient failure comes back as a
:class:`DestinationUnavailable` and the scheduler decides when to try again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from leadback.clock import Clock
from leadback.destinations.base import (
    Channel,
    DestinationError,
    DestinationUnavailable,
    Message,
    SendResult,
)
from leadback.logs import get_logger

log = get_logger(__name__)

OnResult = Callable[[Sequence[tuple[Message, SendResult]]], Awaitable[None]]


@dataclass
class QueueStats:
    queued: int = 0
    in_flight: int = 0
    sent: int = 0
    failed: int = 0
    calls: int = 0


class RateLimiter:
    """A token bucket: ``rate`` calls per second, bursts up to ``max(1, rate)``."""

    def __init__(self, rate: float | None, clock: Clock) -> None:
        self._rate = rate
        self._clock = clock
        self._burst = max(1.0, rate or 1.0)
        self._tokens = self._burst
        self._at = clock.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self._rate is None:
            return
        async with self._lock:
            while True:
                now = self._clock.monotonic()
                self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
                self._at = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await self._clock.sleep((1 - self._tokens) / self._rate)


class DestinationQueue:
    """The queue and workers of one destination."""

    def __init__(
        self,
        destination: str,
        channel: Channel,
        *,
        concurrency: int,
        rate_per_s: float | None,
        timeout_s: float,
        clock: Clock,
        on_result: OnResult,
    ) -> None:
        self.destination = destination
        self.channel = channel
        self.stats = QueueStats()
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._limiter = RateLimiter(rate_per_s, clock)
        self._timeout_s = timeout_s
        self._concurrency = concurrency
        self._on_result = on_result
        self._workers = [
            asyncio.create_task(self._work(), name=f"send:{destination}:{i}")
            for i in range(concurrency)
        ]

    def submit(self, messages: Sequence[Message]) -> None:
        for m in messages:
            self._queue.put_nowait(m)
        self.stats.queued = self._queue.qsize()

    @property
    def backlog(self) -> int:
        """Messages waiting or being sent."""
        return self._queue.qsize() + self.stats.in_flight

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.channel.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self.stats.queued = self._queue.qsize()
            self.stats.in_flight += len(batch)
            try:
                await self._limiter.acquire()
                results = await self._send(batch)
                self.stats.calls += 1
                for r in results:
                    if isinstance(r, DestinationError):
                        self.stats.failed += 1
                    else:
                        self.stats.sent += 1
                await self._on_result(list(zip(batch, results, strict=True)))
            finally:
                self.stats.in_flight -= len(batch)

    async def _send(self, batch: list[Message]) -> list[SendResult]:
        # Every provider call has its own timeout inside the channel; this bound only catches a
        # channel that hangs. A batch of per-person messages goes through at most `concurrency`
        # calls at a time, so its bound grows with its rounds of calls.
        rounds = -(-len(batch) // self._concurrency) if self.channel.max_batch > 1 else 1
        try:
            async with asyncio.timeout(self._timeout_s * (rounds + 1)):
                results = await self.channel.send_batch(batch)
        except DestinationError as exc:
            return [exc] * len(batch)
        except TimeoutError:
            return [DestinationUnavailable("timeout", "the provider call timed out")] * len(batch)
        except Exception as exc:
            log.exception("a channel failed unexpectedly", destination=self.destination)
            return [DestinationUnavailable("channel_error", type(exc).__name__)] * len(batch)
        if len(results) != len(batch):
            log.error(
                "a channel returned the wrong number of results", destination=self.destination
            )
            return [DestinationUnavailable("channel_error", "result count mismatch")] * len(batch)
        return results

    async def close(self) -> None:
        """Stop the workers (messages still queued are dropped: they are still pending in
        the store, and the next owner sends them)."""
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)


class BrokenChannel:
    """Stands in for a destination whose channel cannot be built (a secret is missing): every
    message comes back unavailable, so it is retried with backoff and reaches the dead topic in
    the end, while the operator fixes the secret."""

    kind: Final = "webhook"
    max_batch = 100

    def __init__(self, destination: str) -> None:
        self._destination = destination

    async def send_batch(self, messages: Sequence[Message]) -> list[SendResult]:
        error = DestinationUnavailable(
            "destination_misconfigured", f"destination {self._destination!r} cannot be built"
        )
        return [error] * len(messages)

    async def aclose(self) -> None:
        return None
