"""One member of the segmenter consumer group: the stream loop feeding the event writer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from leadback.clock import Clock, SystemClock
from leadback.segmenter.event_writer import BatchObserver, EventWriter
from leadback.segmenter.intents import IntentLog
from leadback.segmenter.quarantine import InvalidSink, Quarantine
from leadback.service_settings import SegmenterSettings
from leadback.store.client import ClickHouseStore
from leadback.stream.consumer import ConsumerFactory
from leadback.stream.loop import StreamLoop


@dataclass(frozen=True)
class SegmenterStats:
    """Counters for /metrics, logs and the benchmarks (a snapshot)."""

    records_fetched: int
    events_inserted: int  # inserted and committed
    batches_inserted: int
    rounds: int
    batches_replayed: int
    insert_retries: int
    events_quarantined: int
    observer_failures: int
    last_insert_seconds: float
    last_round_seconds: float


class Segmenter:
    """Consumes the events topic into ClickHouse and hands each round to the audiences."""

    def __init__(
        self,
        settings: SegmenterSettings,
        *,
        topic: str,
        store: ClickHouseStore,
        consumer_factory: ConsumerFactory,
        invalid_sink: InvalidSink,
        clock: Clock | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        clock = clock or SystemClock()
        self._writer = EventWriter(
            store,
            IntentLog(store, group_id=settings.group_id, topic=topic),
            Quarantine(store, invalid_sink, clock=clock, insert_settings=settings.insert_settings),
            insert_settings=settings.insert_settings,
            observer=observer,
        )
        self._loop = StreamLoop(
            settings,
            topic=topic,
            consumer_factory=consumer_factory,
            handler=self._writer,
            clock=clock,
            name="segmenter",
        )

    @property
    def observer(self) -> BatchObserver | None:
        """What runs after each round of inserted batches (the audience engine), if anything."""
        return self._writer.observer

    @property
    def assignment(self) -> set[int]:
        """Partitions this member owns now."""
        return self._loop.assignment

    @property
    def stats(self) -> SegmenterStats:
        loop = self._loop.stats
        return SegmenterStats(
            records_fetched=loop.records_fetched,
            events_inserted=loop.records_committed,
            batches_inserted=loop.batches_committed,
            rounds=loop.rounds,
            batches_replayed=loop.batches_replayed,
            insert_retries=loop.retries,
            events_quarantined=self._writer.events_quarantined,
            observer_failures=self._writer.observer_failures,
            last_insert_seconds=loop.last_write_seconds,
            last_round_seconds=loop.last_round_seconds,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then flush what is batched and leave the group."""
        await self._loop.run(stop)
