"""Helpers for integration tests: read topics, wait for ClickHouse counts, run the segmenter."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from leadback.kafka.config import producer_options
from leadback.kafka.producer import KafkaRecordProducer
from leadback.segmenter.member import Segmenter
from leadback.segmenter.service import build_engine, build_segmenter, change_producer
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate


async def read_topic(bootstrap: str, topic: str, *, idle_ms: int = 1500) -> list[dict[str, Any]]:
    """Every record of ``topic`` from the beginning, until none arrives for ``idle_ms``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[dict[str, Any]] = []
        while True:
            batch = await consumer.getmany(timeout_ms=idle_ms)
            if not batch:
                return out
            for records in batch.values():
                out.extend(orjson.loads(r.value) for r in records)
    finally:
        await consumer.stop()


async def topic_size(bootstrap: str, topic: str) -> int:
    """Records on ``topic``, counted by reading them: the embedded broker's end offsets are
    the base offset of the last batch, not the next offset, so they undercount."""
    return len(await read_topic(bootstrap, topic, idle_ms=1000))


async def wait_for(
    probe: Callable[[], Awaitable[Any]], expected: Any, timeout: float = 30.0
) -> Any:
    """Poll ``probe`` until it returns ``expected``; return the last value either way."""
    deadline = time.monotonic() + timeout
    value = await probe()
    while value != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        value = await probe()
    return value


async def count(store: ClickHouseStore, sql: str) -> int:
    rows = await store.query(sql.replace("{db}", store.database))
    return int(rows[0][0])


@contextlib.asynccontextmanager
async def run_segmenter(settings: Settings, store: ClickHouseStore) -> AsyncIterator[Segmenter]:
    """A real segmenter loop in this process, on the test's topics and database."""
    await migrate(store)
    bootstrap = settings.kafka.bootstrap
    invalid = KafkaRecordProducer(**producer_options(settings.kafka, bootstrap, embedded=True))
    await invalid.start()

    changes = change_producer(settings, bootstrap, embedded=True)  # as the service does
    engine = build_engine(settings, store, changes) if settings.audiences.enabled else None
    if engine is not None:
        await engine.start()
    seg = build_segmenter(settings, store, bootstrap, invalid, engine)
    stop = asyncio.Event()
    task = asyncio.create_task(seg.run(stop))
    timer = None
    if engine is not None:
        timer = asyncio.create_task(
            engine.run(stop, interval_s=settings.audiences.timer_interval_ms / 1000)
        )
    try:
        yield seg
    finally:
        stop.set()
        await task
        if timer is not None:
            await timer
        await invalid.stop()
        changes.close()
