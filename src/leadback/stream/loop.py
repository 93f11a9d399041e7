"""The stream loop: fetch, batch per partition, write each batch through a handler, settle the
written batches together, then commit. The segmenter runs on it; the dispatcher will.

What it keeps true, whatever the handler does:

* An offset is committed only after the handler wrote its batch and settled it. A handler
  failure (an exception out of ``write`` or ``settle``) leaves it uncommitted: at least once,
  and exactly once for a handler that writes idempotently (the segmenter's tokens).
* A revoked partition's batches, forming or written but not settled, are dropped: the new owner
  reads them again from the committed offset. Records fetched for the old assignment are not
  batched after a revocation.
* While the handler's store is unavailable (``RetryableError`` inside :meth:`StreamLoop.retrying`)
  the assigned partitions are paused and the group is polled, so the member keeps its place;
  records of partitions assigned meanwhile are held and batched afterwards. A partition revoked
  meanwhile raises :class:`PartitionLost` to the handler for that batch.
* Back-pressure from a backlog: when a fetch comes back full (or the consumer reports as much
  lag), batches grow to their size limit and written batches wait to be settled and committed
  together, at most ``catchup_commit_s`` or ``catchup_commit_events`` (one settle serves many).
* Replay: when a partition is assigned, the handler is asked whether a range starting at its
  first offset was planned before (:meth:`RoundHandler.recall`); if so the batch is re-formed to
  exactly that range (same token), and the next range is asked for after it is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from leadback import failpoints
from leadback.clock import Clock, SystemClock
from leadback.errors import BrokerUnavailableError, RetryableError
from leadback.kafka.consumer import CommitFailed, Records
from leadback.logs import get_logger
from leadback.stream.batches import PartitionBatch
from leadback.stream.consumer import Consumer, ConsumerFactory
from leadback.stream.handler import LoopSettings, PartitionLost, RoundHandler

log = get_logger(__name__)

T = TypeVar("T")


@dataclass
class LoopStats:
    """Counters read by the metrics collector and the benchmarks."""

    records_fetched: int = 0
    records_committed: int = 0
    batches_committed: int = 0
    batches_replayed: int = 0
    rounds: int = 0
    retries: int = 0
    last_write_seconds: float = 0.0
    last_round_seconds: float = 0.0  # from a round's first write to its commit


class StreamLoop:
    """One member of a consumer group, feeding a :class:`RoundHandler`."""

    def __init__(
        self,
        settings: LoopSettings,
        *,
        topic: str,
        consumer_factory: ConsumerFactory,
        handler: RoundHandler,
        clock: Clock | None = None,
        name: str = "stream",
    ) -> None:
        self._settings = settings
        self._topic = topic
        self._handler = handler
        self._clock = clock or SystemClock()
        self._name = name  # failpoints: "<name>.after_write", "<name>.after_deferred_write"
        self._batches: dict[int, PartitionBatch] = {}
        # Written, not yet settled and committed (several rounds while catching up).
        self._unsettled: list[PartitionBatch] = []
        self._unsettled_since = 0.0
        self._unresolved: set[int] = set()  # assigned partitions not yet asked for a replay
        self._held: dict[int, list[Records]] = {}  # fetched while waiting out an outage
        self._revocations: dict[int, int] = {}  # per partition, to drop records fetched before
        self._consumer: Consumer = consumer_factory(self._on_assigned, self._on_revoked)
        self._backlog = False
        self.stats = LoopStats()

    @property
    def assignment(self) -> set[int]:
        """Partitions this member owns now."""
        return self._consumer.assignment()

    # -- rebalance ------------------------------------------------------------------------

    async def _on_assigned(self, partitions: set[int]) -> None:
        self._unresolved |= partitions
        log.info("partitions assigned", topic=self._topic, partitions=sorted(partitions))

    async def _on_revoked(self, partitions: set[int]) -> None:
        for p in partitions:
            self._batches.pop(p, None)
            self._unresolved.discard(p)
            self._held.pop(p, None)
            self._revocations[p] = self._revocations.get(p, 0) + 1
        self._unsettled = [b for b in self._unsettled if b.partition not in partitions]
        log.info("partitions revoked", topic=self._topic, partitions=sorted(partitions))

    # -- main loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then settle what is batched and leave the group."""
        await self._consumer.start()
        try:
            while not stop.is_set():
                await self._poll_once(self._poll_timeout_ms())
                await self._flush_due(force=False)
            if self._settings.drain_on_shutdown:
                await self._drain()
            await self._flush_due(force=True)
        finally:
            try:
                await self._consumer.stop()
            except BrokerUnavailableError as exc:
                log.warning("consumer did not stop cleanly", error=str(exc))

    def _poll_timeout_ms(self) -> int:
        interval = self._settings.flush_interval_ms / 1000
        if not self._batches:
            return self._settings.flush_interval_ms
        oldest = min(b.started for b in self._batches.values())
        wait = max(0.0, oldest + interval - self._clock.monotonic())
        return max(1, int(wait * 1000))

    async def _poll_once(self, timeout_ms: int) -> int:
        """Fetch and batch records; return how many."""
        if self._held:
            held, self._held = self._held, {}
            count = 0
            for partition, chunks in held.items():
                for records in chunks:
                    count += len(records)
                    await self._accept(partition, records)
            return count
        try:
            fetched = await self._consumer.getmany(timeout_ms, self._settings.fetch_max_records)
        except BrokerUnavailableError as exc:
            log.warning("fetch failed; retrying", error=str(exc))
            await self._clock.sleep(self._settings.retry_initial_s)
            return 0
        fetched_count = sum(len(r) for r in fetched.values())
        self.stats.records_fetched += fetched_count
        limit = self._settings.fetch_max_records
        self._backlog = fetched_count >= limit or (
            fetched_count > 0 and self._consumer.lag() >= limit
        )
        for partition, records in fetched.items():
            await self._accept(partition, records)
        return fetched_count

    async def _accept(self, partition: int, records: Records) -> None:
        revocations = self._revocations.get(partition, 0)
        while len(records):
            if self._revocations.get(partition, 0) != revocations:
                # Revoked while a batch was written (and maybe assigned again): what is left was
                # fetched for the old assignment; the owner reads it again from the commit.
                return
            batch = self._batches.get(partition)
            if batch is None:
                batch = await self._new_batch(partition, records)
                if self._revocations.get(partition, 0) != revocations:
                    return
                self._batches[partition] = batch
            if batch.replay is None:
                # Cap at the configured size; the rest starts the next batch.
                room = max(1, self._settings.batch_max_events - batch.count)
                take, records = records.split(room)
                batch.add(take)
            else:
                records = batch.add(records)
            if batch.replay_complete or self._full(batch):
                await self._flush_many([batch])
            elif sum(b.size for b in self._batches.values()) >= self._settings.buffer_max_bytes:
                # Many partitions growing at once (a backlog): bound the memory they hold.
                largest = max(
                    (b for b in self._batches.values() if b.replay is None),
                    key=lambda b: b.size,
                    default=None,
                )
                if largest is not None:
                    await self._flush_many([largest])

    async def _new_batch(self, partition: int, records: Records) -> PartitionBatch:
        replay = None
        if partition in self._unresolved:
            replay = await self._handler.recall(partition, records.offsets[0], self.retrying)
            self._unresolved.discard(partition)
            if replay is not None:
                log.info(
                    "replaying an intended batch",
                    partition=partition,
                    first=replay.first_offset,
                    last=replay.last_offset,
                )
        return PartitionBatch(
            self._topic, partition, started=self._started(records.timestamps[0]), replay=replay
        )

    def _started(self, first_timestamp_ms: int) -> float:
        """When a new batch counts as started: when its first record was produced, if that is
        earlier (it waited while the previous round was written), so it is not held back a
        whole flush interval more. At most one interval back; clocks of hosts differ."""
        now = self._clock.monotonic()
        waited = self._clock.now() - first_timestamp_ms / 1000
        return now - min(max(0.0, waited), self._settings.flush_interval_ms / 1000)

    def _full(self, batch: PartitionBatch) -> bool:
        return (
            batch.count >= self._settings.batch_max_events
            or batch.size >= self._settings.batch_max_bytes
        )

    async def _flush_due(self, *, force: bool) -> None:
        interval = self._settings.flush_interval_ms / 1000
        now = self._clock.monotonic()
        batches = [b for b in self._batches.values() if b.count]
        if not force and (self._backlog or not any(now - b.started >= interval for b in batches)):
            if self._unsettled and (not self._backlog or self._settle_due()):
                await self._settle()
            return
        # One round takes every partition's batch, not only the due ones: the settle after the
        # writes (an audience evaluation) costs about the same for one partition as for all.
        due = [b for b in batches if force or b.replay is None or b.replay_complete]
        if due:
            await self._flush_many(due, force=force)
        if self._unsettled and (force or not self._backlog or self._settle_due()):
            await self._settle()

    async def _drain(self) -> None:
        """Consume to the current end of every assigned partition (embedded shutdown: the
        broker's memory goes with it). A member still joining the group waits for its
        partitions first. The end is where the reported end offsets are reached and a poll
        brings nothing more (the embedded broker reports the last batch's base offset as the
        end). Bounded by ``shutdown_timeout_s``."""
        deadline = self._clock.monotonic() + self._settings.shutdown_timeout_s
        while not self._consumer.assignment() and self._clock.monotonic() < deadline:
            await self._poll_once(100)
        if not self._consumer.assignment():
            log.warning("cannot drain: no partition assigned")
            return
        try:
            ends = await self._consumer.end_offsets(self._consumer.assignment())
        except BrokerUnavailableError as exc:
            log.warning("cannot drain: end offsets unknown", error=str(exc))
            return
        while self._clock.monotonic() < deadline:
            fetched = await self._poll_once(200)
            positions = {p: await self._consumer.position(p) for p in ends}
            if not fetched and all(positions[p] >= end for p, end in ends.items()):
                return
        log.warning("drain timed out", ends=ends)

    # -- write, settle, commit ------------------------------------------------------------

    async def _flush_many(self, batches: list[PartitionBatch], *, force: bool = False) -> None:
        """Write the batches; then settle and commit, unless a backlog is being caught up:
        then written batches wait (at most ``catchup_commit_s`` or ``catchup_commit_events``)
        and one settle and one commit serve them all."""
        started = self._clock.monotonic()
        for batch in batches:
            if self._batches.get(batch.partition) is batch:
                del self._batches[batch.partition]
        batches = [b for b in batches if b.count]
        if not batches:
            return
        written = await self._handler.write(batches, self.retrying)
        self.stats.last_write_seconds = self._clock.monotonic() - started
        owned = self._consumer.assignment()
        for batch in written:
            if batch.replay is not None and batch.partition in owned:
                # Several ranges of this partition may have been written uncommitted (catch-up):
                # the range after this one may have been planned too.
                self._unresolved.add(batch.partition)
        if not written:
            return
        failpoints.hit(f"{self._name}.after_write")
        if not self._unsettled:
            self._unsettled_since = started
        self._unsettled.extend(written)
        if any(sum(u.partition == b.partition for u in self._unsettled) > 1 for b in written):
            # Two ranges of one partition written, neither committed (crash tests).
            failpoints.hit(f"{self._name}.after_deferred_write")
        if force or not self._backlog or self._settle_due():
            await self._settle()

    def _settle_due(self) -> bool:
        """While catching up: whether the written batches waited long (or many) enough."""
        waited = self._clock.monotonic() - self._unsettled_since
        records = sum(b.count for b in self._unsettled)
        return (
            waited >= self._settings.catchup_commit_s
            or records >= self._settings.catchup_commit_events
        )

    async def _settle(self) -> None:
        """Settle every written batch not settled yet, then commit those still owned."""
        batches, self._unsettled = self._unsettled, []
        if not batches:
            return
        await self._handler.settle(batches, self.retrying)
        owned = self._consumer.assignment()
        done = [b for b in batches if b.partition in owned]  # else: the new owner replays it
        offsets: dict[int, int] = {}
        for b in done:
            offsets[b.partition] = max(offsets.get(b.partition, 0), b.last_offset + 1)
        if offsets:
            try:
                await self._consumer.commit(offsets)
            except (CommitFailed, BrokerUnavailableError) as exc:
                # Harmless: whoever reads the ranges again replays them with the same tokens.
                log.warning("commit failed after write", error=str(exc))
        for batch in done:
            self.stats.records_committed += batch.count
            self.stats.batches_committed += 1
            if batch.replay is not None:
                self.stats.batches_replayed += 1
        self.stats.rounds += 1
        self.stats.last_round_seconds = self._clock.monotonic() - self._unsettled_since

    # -- back-pressure --------------------------------------------------------------------

    async def retrying(
        self, what: str, call: Callable[[], Awaitable[T]], *, partition: int | None = None
    ) -> T:
        """Run ``call`` until it succeeds or fails with an error that is not retryable; keep
        the group membership meanwhile, with the assigned partitions paused.

        Raises :class:`PartitionLost` if ``partition`` is revoked while waiting.
        """
        delay = self._settings.retry_initial_s
        paused: set[int] = set()
        try:
            while True:
                try:
                    return await call()
                except RetryableError as exc:
                    self.stats.retries += 1
                    log.warning(
                        "store unavailable; retrying", what=what, delay=delay, error=str(exc)
                    )
                    if not paused:
                        paused = self._consumer.assignment()
                        self._consumer.pause(paused)
                    await self._wait_polling(delay)
                    if partition is not None and partition not in self._consumer.assignment():
                        raise PartitionLost(what) from exc
                    delay = min(delay * 2, self._settings.retry_max_s)
        finally:
            if paused:
                self._consumer.resume(paused & self._consumer.assignment())

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
