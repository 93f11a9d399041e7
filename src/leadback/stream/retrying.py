"""Store retries that keep a consumer-group member in its group (the stream loop's)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from leadback.clock import Clock
from leadback.errors import BrokerUnavailableError, RetryableError
from leadback.kafka.consumer import Records
from leadback.logs import get_logger
from leadback.stream.consumer import Consumer
from leadback.stream.handler import LoopSettings, PartitionLost

log = get_logger(__name__)

T = TypeVar("T")


class GroupRetrier:
    """Retries a store call with backoff, the assigned partitions paused meanwhile; records a
    partition assigned during the wait brings are put in ``held`` for the loop to batch."""

    def __init__(
        self,
        consumer: Consumer,
        settings: LoopSettings,
        clock: Clock,
        held: dict[int, list[Records]],
        on_retry: Callable[[], None],
    ) -> None:
        self._consumer = consumer
        self._settings = settings
        self._clock = clock
        self._held = held
        self._on_retry = on_retry

    async def retrying(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        *,
        partition: int | None = None,
        polling: bool = True,
    ) -> T:
        """Run ``call`` until it succeeds or fails with an error that is not retryable; keep
        the group membership meanwhile (``polling``; else another task polls), with the
        assigned partitions paused.

        Raises :class:`PartitionLost` if ``partition`` is revoked while waiting.
        """
        delay = self._settings.retry_initial_s
        paused: set[int] = set()
        try:
            while True:
                try:
                    return await call()
                except RetryableError as exc:
                    self._on_retry()
                    log.warning(
                        "store unavailable; retrying", what=what, delay=delay, error=str(exc)
                    )
                    if not paused:
                        paused = self._consumer.assignment()
                        self._consumer.pause(paused)
                    if polling:
                        await self._wait_polling(delay)
                    else:
                        await self._clock.sleep(delay)
                    if partition is not None and partition not in self._consumer.assignment():
                        raise PartitionLost(what) from exc
                    delay = min(delay * 2, self._settings.retry_max_s)
        finally:
            if paused:
                self._consumer.resume(paused & self._consumer.assignment())

    async def beside(
        self, what: str, call: Callable[[], Awaitable[T]], *, partition: int | None = None
    ) -> T:
        """:meth:`retrying` for a task running beside the loop, which polls meanwhile."""
        return await self.retrying(what, call, partition=partition, polling=False)

    async def _wait_polling(self, seconds: float) -> None:
        # Polling a paused consumer returns nothing but keeps the member in its group. A
        # partition assigned meanwhile is not paused: what it returns is held for later.
        deadline = self._clock.monotonic() + seconds
        while (left := deadline - self._clock.monotonic()) > 0:
            try:
                fetched = await self._consumer.getmany(int(min(left, 1.0) * 1000) + 1, 1)
            except BrokerUnavailableError:
                await self._clock.sleep(min(left, 0.5))
                continue
            for partition, records in fetched.items():
                self._held.setdefault(partition, []).append(records)
