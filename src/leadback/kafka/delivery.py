"""Delivery from the request path to Kafka that never blocks a request and never loses a record.

``submit()`` is synchronous: it hands the record to the producer's client-side queue (bounded
in records and bytes, batched and sent by the client's own threads). While the broker is away
(a record is not acknowledged within ``stall_s`` and comes back failed) or the client queue is
full, the service is *degraded*: new records go to the disk spool, in order, and so does every
record the client gives back as failed. A probe checks the broker every ``probe_interval_s``;
when it answers and the client queue has settled, the spool is replayed oldest first and acked
only after the broker acked, and then direct delivery takes over again. Order per key is kept
except for records that were in flight at the moment of failure (they are spooled behind newer
ones); every event carries its ``event_id`` and the store counts each once, so the rare
at-least-once replay is harmless.

States::

    direct --failure / queue full--> spooling --probe ok, spool empty--> direct

A broker that refuses the producer's configuration (the idempotent producer) is not an
outage: found at start, it stops the start with the :class:`ConfigError` that names the
setting; found later, records keep going to the spool (none is lost, requests keep being
answered) and the error is logged until the service is restarted with the setting changed.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from leadback.clock import Clock, SystemClock
from leadback.errors import (
    BackpressureError,
    BrokerUnavailableError,
    LeadbackError,
    QueueFullError,
)
from leadback.kafka.rdkafka import QueueingProducer
from leadback.kafka.spool import Spool
from leadback.kafka.spool_frames import SpoolRecord
from leadback.logs import get_logger

log = get_logger(__name__)


@dataclass
class DeliveryStats:
    """Plain counters, read by the metrics collector (no per-record metric calls)."""

    submitted: int = 0
    produced: int = 0  # handed to the client (direct and replayed)
    spooled: int = 0
    replayed: int = 0
    send_failures: int = 0
    queue_full: int = 0
    rejected_full: int = 0


class Delivery:
    """The producer's bounded queue in front, the disk spool behind."""

    def __init__(
        self,
        producer: QueueingProducer,
        spool: Spool,
        *,
        stall_s: float = 3.0,
        probe_interval_s: float = 0.5,
        poll_interval_s: float = 0.05,
        replay_batch: int = 2000,
        clock: Clock | None = None,
    ) -> None:
        self._producer = producer
        self._spool = spool
        self._stall_s = stall_s
        self._probe_interval_s = probe_interval_s
        self._poll_interval_s = poll_interval_s
        self._replay_batch = replay_batch
        self._clock = clock or SystemClock()
        self._spooling = not spool.is_empty  # leftovers of an earlier run are replayed first
        self._broker_ok = False
        self._started = False
        self._closing = False
        self._refused = ""  # why the producer can never deliver, once known
        self._tasks: list[asyncio.Task[None]] = []
        self.stats = DeliveryStats()

    # -- request path -------------------------------------------------------------------

    def submit(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Accept a record for delivery. Raises :class:`BackpressureError` only when both the
        producer's queue and the disk spool are full."""
        stats = self.stats
        stats.submitted += 1
        if not self._spooling:
            try:
                self._producer.produce(topic, key, value)
                stats.produced += 1
                return
            except QueueFullError:
                stats.queue_full += 1
                self._enter_spooling("the producer's queue is full")
            except BrokerUnavailableError as exc:
                self._enter_spooling(str(exc))
        try:
            self._spool.append([(topic, key, value)])
        except BackpressureError:
            stats.submitted -= 1
            stats.rejected_full += 1
            raise
        stats.spooled += 1

    # -- state ----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The broker is reachable and records flow straight to it."""
        return self._broker_ok and not self._spooling and not self._closing

    @property
    def queue_depth(self) -> int:
        """Records in the producer's queue or in flight, not yet acknowledged."""
        return self._producer.pending() if self._started else 0

    @property
    def delivered(self) -> int:
        """Records the broker acknowledged (those handed over, less failed and pending)."""
        s = self.stats
        return max(0, s.produced - s.send_failures - self.queue_depth)

    @property
    def spool_bytes(self) -> int:
        return self._spool.size_bytes

    @property
    def spool_records(self) -> int:
        return self._spool.pending_records

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the producer (if the broker is away, start degraded) and the background task.

        Raises :class:`ConfigError` if the broker refuses the producer's configuration."""
        self._producer.start(self._on_failed)
        self._started = True
        try:
            reachable = await self._producer.probe(self._stall_s)
        except LeadbackError:
            self._producer.close()
            self._started = False
            self._spool.close()
            raise
        if reachable:
            self._broker_ok = True
        else:
            log.warning("broker unavailable at start; spooling")
            self._enter_spooling("broker unavailable at start")
        self._tasks = [asyncio.create_task(self._serve(), name="delivery-serve")]

    async def close(self, timeout: float) -> None:
        """Deliver what can be delivered within ``timeout``; spool the rest to disk."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._started:
            deadline = self._clock.monotonic() + timeout
            if not self._spooling:
                await self._settle(deadline)
            left = self._producer.pending()
            if left:
                # Whatever the broker has not acknowledged goes to the spool (the purge
                # reports each as failed); a few may have arrived: at least once.
                log.warning("records not acknowledged at shutdown: spooled", count=left)
                self._producer.purge()
                await self._settle(self._clock.monotonic() + 5.0)
            self._producer.close()
        self._spool.close()
        log.info("delivery closed", delivered=self.delivered, **self.stats.__dict__)

    async def _settle(self, deadline: float) -> None:
        """Serve reports until nothing is pending or ``deadline`` (monotonic) passes."""
        while True:
            self._producer.poll()
            if not self._producer.pending() or self._clock.monotonic() >= deadline:
                return
            await asyncio.sleep(0.01)

    # -- background -----------------------------------------------------------------------

    async def _serve(self) -> None:
        last_probe = 0.0
        while True:
            await asyncio.sleep(self._poll_interval_s)
            self._producer.poll()
            now = self._clock.monotonic()
            if self._spooling and now - last_probe >= self._probe_interval_s:
                last_probe = now
                await self._try_recover()

    def _on_failed(self, topic: str, key: bytes | None, value: bytes, reason: str) -> None:
        """A record the client gave back (broker away past the stall limit, or purged)."""
        self.stats.send_failures += 1
        try:
            self._spool.append([(topic, key, value)])
            self.stats.spooled += 1
        except BackpressureError:
            self.stats.rejected_full += 1
            log.error("spool full: record lost after a failed send", topic=topic)
        self._enter_spooling(f"delivery failed: {reason}")

    def _enter_spooling(self, reason: str) -> None:
        if not self._spooling and not self._closing:
            log.warning("broker away: spooling to disk", reason=reason)
        self._spooling = True
        self._broker_ok = False

    async def _try_recover(self) -> None:
        if self._closing:
            return
        try:
            reachable = await self._producer.probe(self._stall_s)
        except LeadbackError as exc:  # refused for good (ConfigError, PermanentError)
            if str(exc) != self._refused:
                self._refused = str(exc)
                log.error("the producer cannot deliver: records stay spooled", error=str(exc))
            return
        if not reachable:
            return
        if self._producer.pending():
            return  # earlier records are still unresolved; let them settle first
        log.info("broker reachable: replaying spool", records=self._spool.pending_records)
        while not self._closing:
            cursor, records = self._spool.read(self._replay_batch)
            if not records:
                break
            if len(records) < self._replay_batch:
                if not self._hand_over(records):
                    return  # the queue is full: what it took left the spool; the rest later
                # The tail went to the producer's queue ahead of any new record: direct
                # delivery resumes. (Under load the spool is never empty when it is looked at:
                # waiting for that would keep ingest spooling as long as traffic lasts.)
                self._spool.ack(cursor)
                self.stats.replayed += len(records)
                break
            if not await self._replay(records):
                return
            self._spool.ack(cursor)
            self.stats.replayed += len(records)
        if self._spool.is_empty and not self._closing:
            self._spooling = False
            self._broker_ok = True
            log.info("broker back: direct delivery resumed")

    def _hand_over(self, records: list[SpoolRecord]) -> bool:
        """Queue the spool's last records like new ones and leave spooling, with no await in
        between, so nothing submitted meanwhile overtakes them. A record the broker then
        refuses comes back through ``_on_failed`` into the spool. False if the producer's
        queue would not take them all: those it took leave the spool, the rest stay."""
        for done, (topic, key, value) in enumerate(records):
            try:
                self._producer.produce(topic, key, value, self._on_failed)
            except (QueueFullError, BrokerUnavailableError):
                if done:
                    cursor, again = self._spool.read(done)  # the head, exactly those queued
                    self._spool.ack(cursor)
                    self.stats.replayed += len(again)
                return False
            self.stats.produced += 1
        self._spooling = False
        self._broker_ok = True
        return True

    async def _replay(self, records: list[SpoolRecord]) -> bool:
        """Send one spool batch and wait for the broker: True when all of it was acked."""
        failed: list[str] = []

        def on_failure(_topic: str, _key: bytes | None, _value: bytes, reason: str) -> None:
            failed.append(reason)  # the batch stays in the spool; no second copy

        deadline = self._clock.monotonic() + self._stall_s * 4
        for topic, key, value in records:
            while not failed:
                try:
                    self._producer.produce(topic, key, value, on_failure)
                    self.stats.produced += 1
                    break
                except QueueFullError:
                    # The client queue is smaller than a replay batch: let it drain.
                    await self._settle(deadline)
                    if self._clock.monotonic() >= deadline:
                        failed.append("the producer's queue stayed full")
                except BrokerUnavailableError as exc:
                    failed.append(str(exc))
            if failed:
                break
        await self._settle(deadline)
        if failed or self._producer.pending():
            # Counted as failures so `delivered` stays right; the spool still has them all.
            self.stats.send_failures += len(failed)
            log.warning("spool replay failed; will retry", error=failed[0] if failed else "")
            return False
        return True
