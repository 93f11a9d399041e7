"""The segmenter loop: fetch, batch per partition, record intent, insert, then commit.

Exactly once into ClickHouse: the insert carries a deduplication token named after the batch's
offset range, the range is recorded (intent) before the insert, and offsets are committed only
after it. A crash anywhere in between makes the next owner of the partition rebuild the same
range and retry with the same token, which ClickHouse drops if the first attempt had landed.
ClickHouse unavailable: the loop pauses the partitions and retries the same batch with
exponential backoff, polling the group meanwhile so it keeps its membership; nothing is
committed, nothing skipped. A batch ClickHouse rejects as malformed is split: rows that are not
canonical events go to the invalid topic with a reason, the rest is inserted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import orjson

from leadback import failpoints
from leadback.clock import Clock, SystemClock
from leadback.errors import (
    BrokerUnavailableError,
    PermanentError,
    RetryableError,
    StoreRejectedError,
)
from leadback.events import format_ts
from leadback.kafka.consumer import CommitFailed, GroupConsumer, Message
from leadback.logs import get_logger
from leadback.segmenter.batches import Intent, PartitionBatch
from leadback.settings import SegmenterSettings
from leadback.store.client import ClickHouseStore

log = get_logger(__name__)

T = TypeVar("T")

REQUIRED_KEYS = ("event_id", "site_id", "visitor_id", "type", "received_at")
InvalidSink = Callable[[bytes | None, bytes], Awaitable[None]]


class BatchObserver(Protocol):
    """Runs after a batch is in ClickHouse and before its offsets are committed (audiences)."""

    async def on_batch(
        self, keys: Iterable[bytes], values: Sequence[bytes], token: str
    ) -> None: ...


@dataclass
class SegmenterStats:
    """Counters read by the metrics collector."""

    records_fetched: int = 0
    events_inserted: int = 0
    batches_inserted: int = 0
    rounds: int = 0
    batches_replayed: int = 0
    insert_retries: int = 0
    events_quarantined: int = 0
    observer_failures: int = 0
    last_insert_seconds: float = 0.0


class PartitionLost(Exception):
    """The partition was revoked while its batch waited for ClickHouse: abandon the batch."""


class Segmenter:
    """One member of the segmenter consumer group."""

    def __init__(
        self,
        settings: SegmenterSettings,
        *,
        topic: str,
        store: ClickHouseStore,
        consumer_factory: Callable[..., GroupConsumer],
        invalid_sink: InvalidSink,
        clock: Clock | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        self._settings = settings
        self._topic = topic
        self._store = store
        self._invalid_sink = invalid_sink
        self._observer = observer
        self._clock = clock or SystemClock()
        self._batches: dict[int, PartitionBatch] = {}
        self._unresolved: set[int] = set()  # assigned partitions whose intent is not looked up
        self._consumer = consumer_factory(
            topic,
            group_id=settings.group_id,
            on_assigned=self._on_assigned,
            on_revoked=self._on_revoked,
        )
        self.stats = SegmenterStats()
        self.running = False
        self._backlog = False

    @property
    def observer(self) -> BatchObserver | None:
        """What runs after each inserted batch (the audience engine), if anything."""
        return self._observer

    @property
    def assignment(self) -> set[int]:
        """Partitions this member owns now."""
        return self._consumer.assignment()

    # -- rebalance ------------------------------------------------------------------------

    async def _on_assigned(self, partitions: set[int]) -> None:
        self._unresolved |= partitions
        log.info("partitions assigned", partitions=sorted(partitions))

    async def _on_revoked(self, partitions: set[int]) -> None:
        # Uncommitted batches are dropped: the new owner re-reads them from the committed
        # offset and, through the intent, inserts exactly the same ranges.
        for p in partitions:
            self._batches.pop(p, None)
            self._unresolved.discard(p)
        log.info("partitions revoked", partitions=sorted(partitions))

    async def _lookup_intent(self, partition: int, offset: int) -> Intent | None:
        rows = await self._retrying(
            "intent lookup",
            lambda: self._store.query(
                f"SELECT last_offset, first_timestamp, token FROM {self._store.database}."
                "segmenter_batches FINAL WHERE consumer_group = {g:String} AND topic = {t:String}"
                " AND partition = {p:UInt32} AND first_offset = {o:UInt64} LIMIT 1",
                {"g": self._settings.group_id, "t": self._topic, "p": partition, "o": offset},
            ),
        )
        if not rows:
            return None
        last, first_ts, token = rows[0]
        return Intent(offset, int(last), int(first_ts), str(token))

    # -- main loop ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then flush what is batched and leave the group."""
        await self._consumer.start()
        self.running = True
        try:
            while not stop.is_set():
                await self._poll_once(self._poll_timeout_ms())
                await self._flush_due(force=False)
            if self._settings.drain_on_shutdown:
                await self._drain()
            await self._flush_due(force=True)
        finally:
            self.running = False
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

    async def _poll_once(self, timeout_ms: int) -> None:
        try:
            fetched = await self._consumer.getmany(timeout_ms, self._settings.fetch_max_records)
        except BrokerUnavailableError as exc:
            log.warning("fetch failed; retrying", error=str(exc))
            await asyncio.sleep(self._settings.retry_initial_s)
            return
        # A full fetch means a backlog: batches then grow to their size limit instead of
        # flushing by age, which keeps catch-up rounds large.
        fetched_count = sum(len(m) for m in fetched.values())
        self.stats.records_fetched += fetched_count
        self._backlog = fetched_count >= self._settings.fetch_max_records
        for partition, messages in fetched.items():
            await self._accept(partition, messages)

    async def _accept(self, partition: int, messages: list[Message]) -> None:
        while messages:
            batch = self._batches.get(partition)
            if batch is None:
                replay = None
                if partition in self._unresolved:
                    replay = await self._lookup_intent(partition, messages[0].offset)
                    self._unresolved.discard(partition)
                    if replay is not None:
                        log.info(
                            "replaying an intended batch",
                            partition=partition,
                            first=replay.first_offset,
                            last=replay.last_offset,
                        )
                batch = PartitionBatch(
                    self._topic, partition, started=self._started(messages[0]), replay=replay
                )
                self._batches[partition] = batch
            if batch.replay is None:
                # Cap at the configured size; the rest starts the next batch.
                room = max(1, self._settings.batch_max_events - batch.count)
                messages, later = messages[:room], messages[room:]
                messages = batch.add(messages) + later
            else:
                messages = batch.add(messages)
            if batch.replay_complete or self._full(batch):
                await self._flush(batch)

    def _started(self, first: Message) -> float:
        """When a new batch counts as started: when its first record was produced, if that is
        earlier (it waited while the previous round was written), so it is not held back a
        whole flush interval more. At most one interval back; clocks of hosts differ."""
        now = self._clock.monotonic()
        waited = self._clock.now() - first.timestamp / 1000
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
            return
        # One round takes every partition's batch, not only the due ones: the evaluation after
        # the inserts costs about the same for one partition as for all.
        due = [
            b
            for b in batches
            if force or b.replay is None or b.replay_complete  # a replay is re-formed whole
        ]
        if due:
            await self._flush_many(due)

    async def _drain(self) -> None:
        """Consume to the current end of every assigned partition (embedded shutdown)."""
        deadline = self._clock.monotonic() + self._settings.shutdown_timeout_s
        try:
            ends = await self._consumer.end_offsets(self._consumer.assignment())
        except BrokerUnavailableError as exc:
            log.warning("cannot drain: end offsets unknown", error=str(exc))
            return
        while self._clock.monotonic() < deadline:
            positions = {p: await self._consumer.position(p) for p in ends}
            if all(positions[p] >= end for p, end in ends.items()):
                return
            await self._poll_once(100)
        log.warning("drain timed out", ends=ends)

    # -- flush ----------------------------------------------------------------------------

    async def _flush(self, batch: PartitionBatch) -> None:
        await self._flush_many([batch])

    async def _flush_many(self, batches: list[PartitionBatch]) -> None:
        """Insert each batch (intent first), evaluate audiences once for all, then commit.

        One evaluation per flush round, not per partition: its cost is mostly fixed (statement
        planning), so audiences stay fresh however many partitions this member owns.
        """
        started = self._clock.monotonic()
        for batch in batches:
            if self._batches.get(batch.partition) is batch:
                del self._batches[batch.partition]
        batches = [b for b in batches if b.count]
        fresh = [b for b in batches if b.replay is None]
        if fresh:
            await self._retrying("intent insert", lambda: self._write_intents(fresh))
        inserted = [b for b in batches if await self._insert(b)]
        if not inserted:
            return
        failpoints.hit("segmenter.after_insert")
        if self._observer is not None:
            await self._observe(inserted)
        owned = self._consumer.assignment()
        done = [b for b in inserted if b.partition in owned]  # else: the new owner replays it
        if done:
            try:
                await self._consumer.commit({b.partition: b.last_offset + 1 for b in done})
            except (CommitFailed, BrokerUnavailableError) as exc:
                # Harmless: whoever reads the ranges again replays them with the same tokens.
                log.warning("commit failed after insert", error=str(exc))
        for batch in done:
            self.stats.events_inserted += batch.count
            self.stats.batches_inserted += 1
            if batch.replay is not None:
                self.stats.batches_replayed += 1
            log.debug(
                "batch inserted", partition=batch.partition, events=batch.count, token=batch.token
            )
        self.stats.rounds += 1
        self.stats.last_insert_seconds = self._clock.monotonic() - started

    async def _insert(self, batch: PartitionBatch) -> bool:
        """The events insert (its intent is written); False if the partition was lost."""
        token = batch.token
        try:
            try:
                await self._retrying(
                    "events insert",
                    lambda: self._store.insert_json_rows(
                        "events", batch.payload(), dedup_token=token
                    ),
                    partition=batch.partition,
                )
            except StoreRejectedError as exc:
                log.error("batch rejected; checking rows one by one", token=token, error=str(exc))
                await self._quarantine(batch, token)
        except PartitionLost:
            log.warning(
                "partition revoked during retries; batch left to its new owner",
                partition=batch.partition,
                token=token,
            )
            return False
        return True

    async def _observe(self, batches: list[PartitionBatch]) -> None:
        """Run the observer on the inserted batches together."""
        observer = self._observer
        assert observer is not None
        keys: set[bytes] = set().union(*(b.keys for b in batches))
        values = [v for b in batches for v in b.values]
        token = "+".join(sorted(b.token for b in batches))
        try:
            await self._retrying(
                "audience evaluation", lambda: observer.on_batch(keys, values, token)
            )
        except PermanentError as exc:
            # A statement the engine refuses will not pass on retry; the events are stored
            # and the next batch or timer pass of these persons evaluates them again.
            self.stats.observer_failures += 1
            log.error("audience evaluation failed", token=token, error=str(exc))
        failpoints.hit("segmenter.after_evaluation")

    async def _write_intents(self, batches: list[PartitionBatch]) -> None:
        """Record the ranges about to be inserted, all partitions in one insert."""
        rows = b"\n".join(
            orjson.dumps(
                {
                    "consumer_group": self._settings.group_id,
                    "topic": self._topic,
                    "partition": b.partition,
                    "first_offset": b.first_offset,
                    "last_offset": b.last_offset,
                    "first_timestamp": b.first_timestamp,
                    "records": b.count,
                    "token": b.token,
                }
            )
            for b in batches
        )
        token = "intent:" + "+".join(b.token for b in batches)
        await self._store.insert_json_rows("segmenter_batches", rows, dedup_token=token)

    async def _quarantine(self, batch: PartitionBatch, token: str) -> None:
        good: list[bytes] = []
        for value in batch.values:
            reason = _invalid_reason(value)
            if reason is None:
                good.append(value)
            else:
                await self._invalid_sink(None, _invalid_record(reason, value))
                self.stats.events_quarantined += 1
        if good:
            try:
                await self._retrying(
                    "filtered insert",
                    partition=batch.partition,
                    call=lambda: self._store.insert_json_rows(
                        "events", b"\n".join(good), dedup_token=f"{token}/filtered"
                    ),
                )
            except StoreRejectedError as exc:
                # Every row looks canonical yet the engine refuses them: keep them visible.
                log.error("filtered batch still rejected", token=token, error=str(exc))
                for value in good:
                    await self._invalid_sink(
                        None, _invalid_record("store_rejected", value, str(exc))
                    )
                self.stats.events_quarantined += len(good)

    async def _retrying(
        self, what: str, call: Callable[[], Awaitable[T]], *, partition: int | None = None
    ) -> T:
        """Run ``call`` until it succeeds or fails permanently; keep the group alive meanwhile.

        Raises :class:`PartitionLost` if ``partition`` is revoked while waiting.
        """
        delay = self._settings.retry_initial_s
        paused: set[int] = set()
        try:
            while True:
                try:
                    return await call()
                except RetryableError as exc:
                    self.stats.insert_retries += 1
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
        # Polling a paused consumer returns nothing but keeps the member in its group.
        deadline = self._clock.monotonic() + seconds
        while (left := deadline - self._clock.monotonic()) > 0:
            try:
                await self._consumer.getmany(int(min(left, 1.0) * 1000) + 1, 1)
            except BrokerUnavailableError:
                await asyncio.sleep(min(left, 0.5))


def _invalid_reason(value: bytes) -> str | None:
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "not_json"
    if not isinstance(obj, dict):
        return "not_an_object"
    for key in REQUIRED_KEYS:
        if not isinstance(obj.get(key), str) or not obj[key]:
            return f"missing_{key}"
    return None


def _invalid_record(reason: str, value: bytes, detail: str = "") -> bytes:
    return orjson.dumps(
        {
            "reason": reason,
            "detail": detail[:1000],
            "source": "segmenter",
            "received_at": format_ts(),
            "raw": value[:8192].decode("utf-8", "replace"),
        }
    )
