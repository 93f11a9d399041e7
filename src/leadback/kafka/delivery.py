"""Delivery from the request path to Kafka that never blocks a request and never loses a record.

``submit()`` is synchronous and only appends to a bounded in-memory queue; a drainer task
hands records to the producer. While the broker is away (a send fails, or acks stop coming for
``stall_s``) the service is *degraded*: new records, the memory queue and any failed in-flight
record go to the disk spool, in order. A probe checks the broker every ``probe_interval_s``;
when it answers, the spool is replayed oldest first and acked only after the broker acked, and
then the queue takes over again. Order per key is kept except for records that were in flight
at the moment of failure (they are spooled behind newer ones); every event carries its
``event_id`` and the store counts each once, so the rare at-least-once replay is harmless.

States::

    direct --send error / stall--> spooling --probe ok, spool empty--> direct
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from leadback.clock import Clock, SystemClock
from leadback.errors import BackpressureError, BrokerUnavailableError
from leadback.kafka.producer import RecordProducer
from leadback.kafka.spool import Spool, SpoolRecord
from leadback.logs import get_logger

log = get_logger(__name__)


@dataclass
class DeliveryStats:
    """Plain counters, read by the metrics collector (no per-record metric calls)."""

    submitted: int = 0
    delivered: int = 0
    spooled: int = 0
    replayed: int = 0
    send_failures: int = 0
    rejected_full: int = 0


class Delivery:
    """Bounded memory queue + disk spool in front of a :class:`RecordProducer`."""

    def __init__(
        self,
        producer: RecordProducer,
        spool: Spool,
        *,
        queue_max_events: int,
        queue_max_bytes: int,
        stall_s: float = 3.0,
        probe_interval_s: float = 0.5,
        replay_batch: int = 2000,
        clock: Clock | None = None,
        on_latency: Callable[[float], None] | None = None,
    ) -> None:
        self._producer = producer
        self._spool = spool
        self._queue: collections.deque[tuple[SpoolRecord, float]] = collections.deque()
        self._queue_bytes = 0
        self._queue_max_events = queue_max_events
        self._queue_max_bytes = queue_max_bytes
        self._stall_s = stall_s
        self._probe_interval_s = probe_interval_s
        self._replay_batch = replay_batch
        self._clock = clock or SystemClock()
        self._on_latency = on_latency
        self._inflight: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._spooling = not spool.is_empty  # leftovers of an earlier run are replayed first
        self._broker_ok = False
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self.stats = DeliveryStats()

    # -- request path -------------------------------------------------------------------

    def submit(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Accept a record for delivery. Raises :class:`BackpressureError` only when both the
        memory queue and the disk spool are full."""
        record: SpoolRecord = (topic, key, value)
        if not self._spooling and not self._queue_full(len(value)):
            self._queue.append((record, self._clock.monotonic()))
            self._queue_bytes += len(value)
            self._wakeup.set()
        else:
            try:
                self._spool.append([record])
            except BackpressureError:
                self.stats.rejected_full += 1
                raise
            self.stats.spooled += 1
        self.stats.submitted += 1

    def _queue_full(self, size: int) -> bool:
        return (
            len(self._queue) >= self._queue_max_events
            or self._queue_bytes + size > self._queue_max_bytes
        )

    def set_latency_observer(self, observe: Callable[[float], None] | None) -> None:
        """Called with seconds from ``submit`` to the broker's ack, for each direct record."""
        self._on_latency = observe

    # -- state ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The broker is reachable and records flow straight to it."""
        return self._broker_ok and not self._spooling and not self._closing

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def spool_bytes(self) -> int:
        return self._spool.size_bytes

    @property
    def spool_records(self) -> int:
        return self._spool.pending_records

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the producer (if the broker is away, start degraded) and the background tasks."""
        try:
            await self._producer.start()
            self._broker_ok = True
        except BrokerUnavailableError as exc:
            log.warning("broker unavailable at start; spooling", error=str(exc))
            self._enter_spooling("broker unavailable at start")
        self._tasks = [
            asyncio.create_task(self._drain(), name="delivery-drain"),
            asyncio.create_task(self._watch(), name="delivery-watch"),
        ]

    async def close(self, timeout: float) -> None:
        """Deliver what can be delivered within ``timeout``; spool the rest to disk."""
        self._closing = True
        self._wakeup.set()
        deadline = self._clock.monotonic() + timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._queue and not self._spooling:  # noqa: ASYNC110 - drained by a task
                    await asyncio.sleep(0.01)
                if not self._spooling:
                    await self._producer.flush()
                    pending = [f for _, f in self._inflight if not f.done()]
                    if pending:
                        await asyncio.wait(pending)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._spool_queue()
        left = sum(1 for _, f in self._inflight if not f.done())
        if left:
            # Their callbacks spool them if they fail later; flushing can't wait forever.
            log.warning("records still in flight at shutdown", count=left)
        try:
            async with asyncio.timeout(max(0.5, deadline - self._clock.monotonic())):
                await self._producer.stop()
        except (TimeoutError, BrokerUnavailableError) as exc:
            log.warning("producer did not stop cleanly", error=str(exc))
        self._spool.close()
        log.info("delivery closed", **self.stats.__dict__)

    # -- background -----------------------------------------------------------------------

    async def _drain(self) -> None:
        while True:
            if not self._queue or self._spooling:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            record, queued_at = self._queue.popleft()
            self._queue_bytes -= len(record[2])
            try:
                async with asyncio.timeout(self._stall_s):
                    future = await self._producer.send(*record)
            except (TimeoutError, BrokerUnavailableError) as exc:
                self.stats.send_failures += 1
                self._spool.append([record])
                self.stats.spooled += 1
                self._enter_spooling(f"send failed: {exc!r}")
                continue
            self._inflight.append((self._clock.monotonic(), future))
            future.add_done_callback(functools.partial(self._on_done, record, queued_at))

    def _on_done(self, record: SpoolRecord, queued_at: float, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.stats.send_failures += 1
            try:
                self._spool.append([record])
                self.stats.spooled += 1
            except BackpressureError:
                self.stats.rejected_full += 1
                log.error("spool full: record lost after a failed send", topic=record[0])
            self._enter_spooling("delivery failed")
            return
        self.stats.delivered += 1
        if self._on_latency is not None:
            self._on_latency(self._clock.monotonic() - queued_at)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s / 2 if self._spooling else 0.1)
            self._prune_inflight()
            if self._spooling and not self._closing:
                await self._try_recover()

    def _prune_inflight(self) -> None:
        while self._inflight and self._inflight[0][1].done():
            self._inflight.popleft()
        if self._inflight and not self._spooling:
            oldest = self._inflight[0][0]
            if self._clock.monotonic() - oldest > self._stall_s:
                self._enter_spooling(f"no ack for {self._stall_s}s")

    def _enter_spooling(self, reason: str) -> None:
        if not self._spooling:
            log.warning("broker away: spooling to disk", reason=reason)
        self._spooling = True
        self._broker_ok = False
        self._spool_queue()

    def _spool_queue(self) -> None:
        if not self._queue:
            return
        records = [record for record, _ in self._queue]
        try:
            self._spool.append(records)
            self.stats.spooled += len(records)
        except BackpressureError:
            # All or nothing failed: keep as many as fit, one by one, count the rest.
            for record in records:
                try:
                    self._spool.append([record])
                    self.stats.spooled += 1
                except BackpressureError:
                    self.stats.rejected_full += 1
            log.error("spool full while spooling the memory queue")
        self._queue.clear()
        self._queue_bytes = 0

    async def _try_recover(self) -> None:
        if not await self._producer.probe(self._stall_s):
            return
        if self._inflight and not all(f.done() for _, f in self._inflight):
            return  # earlier sends are still unresolved; let them settle first
        log.info("broker reachable: replaying spool", records=self._spool.pending_records)
        while not self._closing:
            cursor, records = self._spool.read(self._replay_batch)
            if not records:
                break
            try:
                async with asyncio.timeout(self._stall_s * 4):
                    futures = [await self._producer.send(*r) for r in records]
                    await asyncio.gather(*futures)
            except (TimeoutError, BrokerUnavailableError) as exc:
                log.warning("spool replay interrupted", error=str(exc))
                return
            self._spool.ack(cursor)
            self.stats.replayed += len(records)
            self.stats.delivered += len(records)
        if self._spool.is_empty and not self._closing:
            self._spooling = False
            self._broker_ok = True
            self._wakeup.set()
            log.info("broker back: direct delivery resumed")
