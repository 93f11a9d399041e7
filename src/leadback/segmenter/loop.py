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
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import orjson

from leadback import failpoints
from leadback.audiences.digest import BatchDigest
from leadback.clock import Clock, SystemClock
from leadback.errors import (
    BrokerUnavailableError,
    PermanentError,
    RetryableError,
    StoreRejectedError,
)
from leadback.events import format_ts
from leadback.kafka.consumer import CommitFailed, GroupConsumer, Records
from leadback.logs import get_logger
from leadback.segmenter.batches import Intent, PartitionBatch
from leadback.settings import SegmenterSettings
from leadback.store.client import ClickHouseStore

log = get_logger(__name__)

T = TypeVar("T")

REQUIRED_KEYS = ("event_id", "site_id", "visitor_id", "type", "received_at")
InvalidSink = Callable[[bytes | None, bytes], Awaitable[None]]


class BatchObserver(Protocol):
    """Runs after batches are in ClickHouse and before their offsets are committed (audiences):
    ``digest`` once per inserted body, ``on_round`` once for the batches committed together."""

    def digest(self, body: bytes) -> BatchDigest: ...

    async def on_round(
        self, keys: Iterable[bytes], digests: Sequence[BatchDigest], token: str
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
        # Inserted, not yet evaluated and committed (several rounds while catching up).
        self._unsettled: list[PartitionBatch] = []
        self._unsettled_since = 0.0
        self._unresolved: set[int] = set()  # assigned partitions whose intent is not looked up
        self._held: dict[int, list[Records]] = {}  # fetched while waiting out an outage
        self._revocations: dict[int, int] = {}  # per partition, to drop records fetched before
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
            self._held.pop(p, None)
            self._revocations[p] = self._revocations.get(p, 0) + 1
        # Inserted but uncommitted: the new owner replays them (same tokens) and evaluates.
        self._unsettled = [b for b in self._unsettled if b.partition not in partitions]
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
            await asyncio.sleep(self._settings.retry_initial_s)
            return 0
        # A full fetch, or as many records again waiting, means a backlog: batches then grow
        # to their size limit instead of flushing by age, and their evaluation and commit wait
        # (see _flush_many), which keeps catch-up rounds large and few.
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
                replay = None
                if partition in self._unresolved:
                    replay = await self._lookup_intent(partition, records.offsets[0])
                    self._unresolved.discard(partition)
                    if replay is not None:
                        log.info(
                            "replaying an intended batch",
                            partition=partition,
                            first=replay.first_offset,
                            last=replay.last_offset,
                        )
                batch = PartitionBatch(
                    self._topic,
                    partition,
                    started=self._started(records.timestamps[0]),
                    replay=replay,
                )
                self._batches[partition] = batch
            if batch.replay is None:
                # Cap at the configured size; the rest starts the next batch.
                room = max(1, self._settings.batch_max_events - batch.count)
                take, records = records.split(room)
                batch.add(take)
            else:
                records = batch.add(records)
            if batch.replay_complete or self._full(batch):
                await self._flush(batch)
            elif sum(b.size for b in self._batches.values()) >= self._settings.buffer_max_bytes:
                # Many partitions growing at once (a backlog): bound the memory they hold.
                largest = max(
                    (b for b in self._batches.values() if b.replay is None),
                    key=lambda b: b.size,
                    default=None,
                )
                if largest is not None:
                    await self._flush(largest)

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
        # One round takes every partition's batch, not only the due ones: the evaluation after
        # the inserts costs about the same for one partition as for all.
        due = [
            b
            for b in batches
            if force or b.replay is None or b.replay_complete  # a replay is re-formed whole
        ]
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

    # -- flush ----------------------------------------------------------------------------

    async def _flush(self, batch: PartitionBatch) -> None:
        await self._flush_many([batch])

    async def _flush_many(self, batches: list[PartitionBatch], *, force: bool = False) -> None:
        """Insert each batch (intents first); then evaluate audiences once for all and commit,
        unless a backlog is being caught up: then inserted batches wait (at most
        ``catchup_commit_s`` or ``catchup_commit_events``) and one evaluation and one commit
        serve them all. The evaluation reads every touched person's history, so one per
        catch-up stretch costs about what one per round would, many times fewer."""
        started = self._clock.monotonic()
        for batch in batches:
            if self._batches.get(batch.partition) is batch:
                del self._batches[batch.partition]
        batches = [b for b in batches if b.count]
        fresh = [b for b in batches if b.replay is None]
        if fresh:
            await self._retrying("intent insert", lambda: self._write_intents(fresh))
        inserted = [b for b in batches if await self._insert(b)]
        self.stats.last_insert_seconds = self._clock.monotonic() - started
        if not inserted:
            return
        failpoints.hit("segmenter.after_insert")
        if not self._unsettled:
            self._unsettled_since = started
        self._unsettled.extend(inserted)
        if any(sum(u.partition == b.partition for u in self._unsettled) > 1 for b in inserted):
            # Two ranges of one partition inserted, neither committed (crash tests).
            failpoints.hit("segmenter.after_deferred_insert")
        if force or not self._backlog or self._settle_due():
            await self._settle()

    def _settle_due(self) -> bool:
        """While catching up: whether the inserted batches waited long (or many) enough."""
        waited = self._clock.monotonic() - self._unsettled_since
        events = sum(b.count for b in self._unsettled)
        return (
            waited >= self._settings.catchup_commit_s
            or events >= self._settings.catchup_commit_events
        )

    async def _settle(self) -> None:
        """Evaluate audiences for every inserted batch not settled yet, then commit them."""
        batches, self._unsettled = self._unsettled, []
        if not batches:
            return
        if self._observer is not None:
            await self._observe(batches)
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

    async def _insert(self, batch: PartitionBatch) -> bool:
        """The events insert (its intent is written); False if the partition was lost."""
        token = batch.token
        body = batch.payload()
        try:
            try:
                await self._retrying(
                    "events insert",
                    lambda: self._store.insert_json_rows(
                        "events", body, dedup_token=token, settings=self._settings.insert_settings
                    ),
                    partition=batch.partition,
                )
            except StoreRejectedError as exc:
                log.error("batch rejected; checking rows one by one", token=token, error=str(exc))
                body = await self._quarantine(batch, token)
        except PartitionLost:
            log.warning(
                "partition revoked during retries; batch left to its new owner",
                partition=batch.partition,
                token=token,
            )
            return False
        if self._observer is not None:
            batch.digest = self._observer.digest(body)
        batch.release()
        if batch.replay is not None and batch.partition in self._consumer.assignment():
            # Several batches of this partition may have been inserted uncommitted (catch-up):
            # the range after this one may be intended too.
            self._unresolved.add(batch.partition)
        return True

    async def _observe(self, batches: list[PartitionBatch]) -> None:
        """Run the observer on the inserted batches together."""
        observer = self._observer
        assert observer is not None
        keys: set[bytes] = set().union(*(b.keys for b in batches))
        digests = [b.digest for b in batches if b.digest is not None]
        token = round_token([b.token for b in batches])
        try:
            await self._retrying(
                "audience evaluation", lambda: observer.on_round(keys, digests, token)
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

    async def _quarantine(self, batch: PartitionBatch, token: str) -> bytes:
        """Send the rows that are not canonical events to the invalid topic and insert the
        rest; return the body inserted."""
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
                        "events",
                        b"\n".join(good),
                        dedup_token=f"{token}/filtered",
                        settings=self._settings.insert_settings,
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
                return b""
        return b"\n".join(good)

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
        # Polling a paused consumer returns nothing but keeps the member in its group. A
        # partition assigned meanwhile is not paused: what it returns is held for later.
        deadline = self._clock.monotonic() + seconds
        while (left := deadline - self._clock.monotonic()) > 0:
            try:
                fetched = await self._consumer.getmany(int(min(left, 1.0) * 1000) + 1, 1)
            except BrokerUnavailableError:
                await asyncio.sleep(min(left, 0.5))
                continue
            for partition, records in fetched.items():
                self._held.setdefault(partition, []).append(records)


def round_token(tokens: Sequence[str]) -> str:
    """One name for batches evaluated together: their tokens, or a digest of many."""
    ordered = sorted(tokens)
    if len(ordered) <= 4:
        return "+".join(ordered)
    digest = hashlib.sha256("+".join(ordered).encode()).hexdigest()[:32]
    return f"{ordered[0]}+{len(ordered) - 1}:{digest}"


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
