"""The stream loop driven by a fake consumer and a manual clock: batching, commits only after
the handler, revocations, back-pressure, replay and catch-up rounds. (The same loop against the
real broker: tests/integration/test_segmenter_rows.py, test_crash_recovery.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import pytest

from leadback.clock import ManualClock
from leadback.errors import BrokerUnavailableError, StoreUnavailableError
from leadback.kafka.consumer import Records
from leadback.stream.batches import Intent, PartitionBatch
from leadback.stream.consumer import PartitionsCallback
from leadback.stream.handler import PartitionLost, Retrying
from leadback.stream.loop import StreamLoop


@dataclass
class LoopKnobs:
    batch_max_events: int = 100
    batch_max_bytes: int = 1 << 20
    buffer_max_bytes: int = 1 << 24
    flush_interval_ms: int = 250
    fetch_max_records: int = 1000
    catchup_commit_s: float = 30.0
    catchup_commit_events: int = 1_000_000
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    drain_on_shutdown: bool = False
    shutdown_timeout_s: float = 5.0


class FakeConsumer:
    """A group member over in-memory partitions. ``getmany`` with nothing to hand out lets the
    manual clock run for its timeout, as a real poll would wait."""

    def __init__(
        self,
        clock: ManualClock,
        on_assigned: PartitionsCallback,
        on_revoked: PartitionsCallback,
    ) -> None:
        self.clock = clock
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self.log: dict[int, list[bytes]] = {}
        self.position_: dict[int, int] = {}
        self.committed: dict[int, int] = {}
        self.commits: list[dict[int, int]] = []
        self.paused: set[int] = set()
        self.pauses = 0
        self._assigned: set[int] = set()
        self._events: list[tuple[str, set[int]]] = []
        self.polls = 0
        self.on_poll: Callable[[FakeConsumer], None] | None = None

    # test controls
    def produce(self, partition: int, *values: bytes) -> None:
        self.log.setdefault(partition, []).extend(values)

    def assign(self, *partitions: int) -> None:
        self._events.append(("assigned", set(partitions)))

    def revoke(self, *partitions: int) -> None:
        self._events.append(("revoked", set(partitions)))

    # the Consumer protocol
    async def start(self) -> None:
        return None

    async def _deliver(self) -> None:
        events, self._events = self._events, []
        for kind, parts in events:
            if kind == "assigned":
                self._assigned |= parts
                for p in parts:
                    self.position_[p] = self.committed.get(p, 0)
                await self._on_assigned(parts)
            else:
                self._assigned -= parts
                self.paused -= parts
                await self._on_revoked(parts)

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[int, Records]:
        self.polls += 1
        if self.on_poll is not None:
            self.on_poll(self)
        await self._deliver()
        out: dict[int, Records] = {}
        budget = max_records
        for p in sorted(self._assigned - self.paused):
            pos = self.position_[p]
            values = self.log.get(p, [])[pos : pos + budget]
            if not values:
                continue
            offsets = list(range(pos, pos + len(values)))
            ts = [int(self.clock.now() * 1000)] * len(values)
            keys: list[bytes | None] = [b"site:v%d" % (o % 5) for o in offsets]
            out[p] = Records(p, offsets, ts, keys, list(values))
            self.position_[p] = pos + len(values)
            budget -= len(values)
            if budget <= 0:
                break
        if not out:
            await self.clock.sleep(timeout_ms / 1000)
        return out

    async def commit(self, offsets: dict[int, int]) -> None:
        self.commits.append(dict(offsets))
        self.committed.update(offsets)

    def assignment(self) -> set[int]:
        return set(self._assigned)

    def lag(self) -> int:
        return sum(len(self.log.get(p, [])) - self.position_[p] for p in self._assigned)

    def pause(self, partitions: Iterable[int]) -> None:
        self.pauses += 1
        self.paused |= set(partitions)

    def resume(self, partitions: Iterable[int]) -> None:
        self.paused -= set(partitions)

    async def end_offsets(self, partitions: Iterable[int]) -> dict[int, int]:
        return {p: len(self.log.get(p, [])) for p in partitions}

    async def position(self, partition: int) -> int:
        return self.position_.get(partition, 0)

    async def stop(self) -> None:
        return None


@dataclass
class Handler:
    """Records what the loop hands over; failures are scripted."""

    written: list[tuple[int, int, int]] = field(default_factory=list)  # partition, first, last
    settled: list[list[tuple[int, int, int]]] = field(default_factory=list)
    write_failures: int = 0  # RetryableError this many times first
    settle_error: Exception | None = None
    intents: dict[tuple[int, int], Intent] = field(default_factory=dict)
    during_retry: Callable[[], None] | None = None
    lost: list[int] = field(default_factory=list)

    async def recall(self, partition: int, offset: int, retrying: Retrying) -> Intent | None:
        return self.intents.get((partition, offset))

    async def write(
        self, batches: Sequence[PartitionBatch], retrying: Retrying
    ) -> list[PartitionBatch]:
        done = []
        for b in batches:
            try:
                await retrying("write", self._attempt, partition=b.partition)
            except PartitionLost:
                self.lost.append(b.partition)
                continue
            self.written.append((b.partition, b.first_offset, b.last_offset))
            b.release()
            done.append(b)
        return done

    async def _attempt(self) -> None:
        if self.write_failures:
            self.write_failures -= 1
            if self.during_retry is not None:
                self.during_retry()
            raise StoreUnavailableError("store away")

    async def settle(self, batches: Sequence[PartitionBatch], retrying: Retrying) -> None:
        if self.settle_error is not None:
            raise self.settle_error
        self.settled.append([(b.partition, b.first_offset, b.last_offset) for b in batches])


@dataclass
class Rig:
    loop: StreamLoop
    consumer: FakeConsumer
    handler: Handler
    clock: ManualClock
    stop: asyncio.Event
    task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.loop.run(self.stop))

    async def until(self, cond: Callable[[], bool], what: str, turns: int = 5000) -> None:
        for _ in range(turns):
            if cond():
                return
            assert self.task is None or not self.task.done() or self.task.exception() is None
            await asyncio.sleep(0)
        raise AssertionError(f"not reached: {what}")

    async def finish(self) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task


def rig(knobs: LoopKnobs | None = None, handler: Handler | None = None) -> Rig:
    clock = ManualClock()
    made: list[FakeConsumer] = []

    def factory(on_assigned: PartitionsCallback, on_revoked: PartitionsCallback) -> FakeConsumer:
        made.append(FakeConsumer(clock, on_assigned, on_revoked))
        return made[0]

    handler = handler or Handler()
    loop = StreamLoop(
        knobs or LoopKnobs(),
        topic="t",
        consumer_factory=factory,
        handler=handler,
        clock=clock,
        name="test",
    )
    return Rig(loop, made[0], handler, clock, asyncio.Event())


def values(n: int, start: int = 0) -> list[bytes]:
    return [b'{"n":%d}' % i for i in range(start, start + n)]


async def test_a_batch_is_written_settled_then_committed_after_the_flush_interval() -> None:
    r = rig()
    r.consumer.assign(0, 1)
    r.consumer.produce(0, *values(5))
    r.consumer.produce(1, *values(3))
    r.start()
    await r.until(lambda: r.consumer.commits, "a commit")
    assert sorted(r.handler.written) == [(0, 0, 4), (1, 0, 2)]
    # One round: both partitions' batches settled together, then one commit.
    assert [sorted(s) for s in r.handler.settled] == [[(0, 0, 4), (1, 0, 2)]]
    assert r.consumer.commits == [{0: 5, 1: 3}]
    assert r.clock.monotonic() >= 0.25  # held for the flush interval, not written at once
    await r.finish()
    assert r.loop.stats.records_committed == 8


async def test_a_full_batch_is_written_without_waiting_and_the_rest_starts_the_next() -> None:
    r = rig(LoopKnobs(batch_max_events=4, flush_interval_ms=60_000))
    r.consumer.assign(0)
    r.consumer.produce(0, *values(10))
    r.start()
    await r.until(lambda: len(r.handler.written) == 2, "two full batches")
    assert r.handler.written == [(0, 0, 3), (0, 4, 7)]
    assert r.consumer.committed == {0: 8}
    await r.finish()  # shutdown flushes the last two records
    assert r.handler.written[-1] == (0, 8, 9)
    assert r.consumer.committed == {0: 10}


async def test_handler_failure_leaves_the_offsets_uncommitted() -> None:
    r = rig(handler=Handler(settle_error=ValueError("evaluation bug")))
    r.consumer.assign(0)
    r.consumer.produce(0, *values(5))
    r.start()
    assert r.task is not None
    with pytest.raises(ValueError, match="evaluation bug"):
        await asyncio.wait_for(r.task, 5)
    assert r.handler.written == [(0, 0, 4)]  # written, but the round never settled
    assert r.consumer.commits == []


async def test_a_partition_revoked_mid_batch_drops_its_batch_and_commits_only_the_rest() -> None:
    r = rig(LoopKnobs(flush_interval_ms=1000))
    r.consumer.assign(0, 1)
    r.consumer.produce(0, *values(5))
    r.consumer.produce(1, *values(5))

    def revoke_once(c: FakeConsumer) -> None:
        if c.polls == 2:  # after the first fetch batched both partitions
            c.revoke(0)

    r.consumer.on_poll = revoke_once
    r.start()
    await r.until(lambda: r.consumer.commits, "a commit")
    await r.finish()
    assert r.handler.written == [(1, 0, 4)]
    assert r.consumer.commits == [{1: 5}]


async def test_store_outage_pauses_partitions_retries_the_same_batch_then_commits() -> None:
    r = rig(handler=Handler(write_failures=3))
    r.consumer.assign(0)
    r.consumer.produce(0, *values(5))
    r.start()
    await r.until(lambda: r.consumer.commits, "a commit")
    assert r.consumer.pauses == 1  # paused once for the whole outage
    assert r.consumer.paused == set()  # resumed after it
    assert r.loop.stats.retries == 3
    # Backoff doubled: 0.2 + 0.4 + 0.8 s waited (polling the group) before the write passed.
    assert r.clock.monotonic() >= 0.25 + 1.4
    assert r.handler.written == [(0, 0, 4)]
    assert r.consumer.commits == [{0: 5}]
    await r.finish()


async def test_records_of_a_partition_assigned_during_an_outage_are_held_not_lost() -> None:
    handler = Handler(write_failures=2)
    r = rig(handler=handler)
    r.consumer.assign(0)
    r.consumer.produce(0, *values(3))
    r.consumer.produce(1, *values(4))
    handler.during_retry = lambda: r.consumer.assign(1)
    r.start()
    await r.until(lambda: r.consumer.committed.get(1) == 4, "partition 1 committed")
    await r.finish()
    assert sorted(r.handler.written) == [(0, 0, 2), (1, 0, 3)]


async def test_a_partition_revoked_while_its_write_is_retried_is_left_to_the_new_owner() -> None:
    handler = Handler(write_failures=5)
    r = rig(handler=handler)
    r.consumer.assign(0)
    r.consumer.produce(0, *values(3))
    handler.during_retry = lambda: r.consumer.revoke(0)
    r.start()
    await r.until(lambda: handler.lost, "the write abandoned")
    await r.finish()
    assert handler.lost == [0]
    assert r.handler.written == []
    assert r.consumer.commits == []


async def test_a_recalled_intent_re_forms_exactly_its_range_and_asks_again_after_it() -> None:
    handler = Handler()
    handler.intents[(0, 0)] = Intent(0, 6, 1_800_000_000_000, "t/0/0-6/x")
    handler.intents[(0, 7)] = Intent(7, 8, 1_800_000_000_000, "t/0/7-8/x")
    r = rig(LoopKnobs(batch_max_events=100), handler)
    r.consumer.assign(0)
    r.consumer.produce(0, *values(12))
    r.start()
    await r.until(lambda: r.consumer.committed.get(0) == 12, "all committed")
    await r.finish()
    # The two recorded ranges exactly, then a fresh batch for the rest.
    assert r.handler.written == [(0, 0, 6), (0, 7, 8), (0, 9, 11)]


async def test_a_backlog_writes_batches_back_to_back_and_settles_them_in_one_round() -> None:
    knobs = LoopKnobs(batch_max_events=10, fetch_max_records=10, catchup_commit_events=40)
    r = rig(knobs)
    r.consumer.assign(0)
    r.consumer.produce(0, *values(45))
    r.start()
    await r.until(lambda: r.consumer.committed.get(0) == 45, "all committed")
    await r.finish()
    assert len(r.handler.written) == 5
    # Four full batches wait for one settle and one commit; the tail is a round of its own.
    assert [len(s) for s in r.handler.settled] == [4, 1]
    assert r.consumer.commits == [{0: 40}, {0: 45}]


async def test_fetch_failures_wait_and_retry_without_losing_records() -> None:
    r = rig()
    r.consumer.assign(0)
    r.consumer.produce(0, *values(3))
    failures = [BrokerUnavailableError("broker away")] * 2
    real = r.consumer.getmany

    async def flaky(timeout_ms: int, max_records: int) -> dict[int, Records]:
        if failures:
            raise failures.pop()
        return await real(timeout_ms, max_records)

    r.consumer.getmany = flaky  # type: ignore[method-assign]
    r.start()
    await r.until(lambda: r.consumer.commits, "a commit")
    await r.finish()
    assert r.consumer.commits == [{0: 3}]
    assert r.clock.monotonic() >= 0.4  # two retry waits on the injected clock


async def test_retrying_gives_up_at_once_on_an_error_that_is_not_retryable() -> None:
    r = rig()
    calls: list[int] = []

    async def refused() -> None:
        calls.append(1)
        raise ValueError("not retryable")

    with pytest.raises(ValueError):
        await r.loop.retrying("x", refused)
    assert calls == [1]
    assert r.loop.stats.retries == 0
