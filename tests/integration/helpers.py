"""Helpers for integration tests: read topics and committed offsets, wait for a condition,
count in ClickHouse, run the segmenter."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from leadback.kafka.config import producer_options
from leadback.kafka.producer import KafkaRecordProducer
from leadback.segmenter.member import Segmenter
from leadback.segmenter.service import build_engine, build_segmenter, change_producer
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import available, migrate


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


_UNSET: Any = object()


async def wait_for(
    probe: Callable[[], Any],
    expected: Any = _UNSET,
    *,
    until: Callable[[Any], bool] | None = None,
    what: str = "",
    timeout: float = 30.0,
    interval: float = 0.2,
) -> Any:
    """Poll ``probe`` (sync or async) every ``interval`` s until its value equals ``expected``
    or satisfies ``until``, and return that value. Past ``timeout`` s, fail with ``what`` was
    awaited and the last value seen. The one way tests wait: for a condition, never a time."""
    if (expected is _UNSET) == (until is None):
        raise TypeError("wait_for needs exactly one of expected or until")
    done = until if until is not None else lambda value: bool(value == expected)
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if done(value):
            return value
        if time.monotonic() >= deadline:
            wanted = f" == {expected!r}" if until is None else ""
            last = repr(value)
            if len(last) > 600:
                last = last[:600] + "..."
            raise AssertionError(
                f"waited {timeout:g}s for {what or 'the probe'}{wanted}; last value: {last}"
            )
        await asyncio.sleep(interval)


async def committed_count(bootstrap: str, group: str, topic: str) -> int:
    """Records of ``topic`` that consumer ``group`` has committed (the sum of its partitions'
    committed offsets; offsets start at 0). Reads the offsets without joining the group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        total = 0
        for p in parts:
            total += await consumer.committed(TopicPartition(topic, p)) or 0
        return total
    finally:
        await consumer.stop()


async def migrate_before(store: ClickHouseStore, version: int) -> None:
    """Create the database as the release before migration ``version`` left it."""
    await store.connect()
    db = store.database
    await store.command(
        f"CREATE TABLE {db}.schema_migrations (version UInt32, name String, "
        "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    params = {"db": db, "ttl_days": 3650, "ttl_seconds": 3650 * 86_400, "dedup_window": 1000}
    for migration in available():
        if migration.version < version:
            for statement in migration.statements(**params):
                await store.command(statement)
            await store.command(
                f"INSERT INTO {db}.schema_migrations (version, name) "
                f"VALUES ({migration.version}, '{migration.name}')"
            )


#: Migrations of the key-value tables a round reads (0011 and on), and what they make.
KEY_VALUE = ("person_state", "person_memberships")
_KEY_VALUE_VIEWS = ("person_signals_feed_", "signal_rows_to_", "memberships_to_")


@contextlib.asynccontextmanager
async def with_person_state(store: ClickHouseStore) -> AsyncIterator[None]:
    """Run the current engine on a database older than migration 0011: the key-value tables
    and their views exist inside the block and are dropped after it (the feed views made to
    write into ``person_signals`` again), so the database looks as the older release left it
    and the migrations fill them from it."""
    db = store.database
    params = {"db": db, "ttl_days": 3650, "ttl_seconds": 3650 * 86_400, "dedup_window": 1000}
    for migration in available():
        if migration.name in KEY_VALUE:
            for statement in migration.statements(**params):
                await store.command(statement)
    yield
    views = await store.query(
        "SELECT name, create_table_query FROM system.tables WHERE database = {db:String} AND "
        "multiSearchAny(name, {p:Array(String)})",
        {"db": db, "p": list(_KEY_VALUE_VIEWS)},
    )
    for name, create in views:
        await store.command(f"DROP VIEW {db}.{name}")
        if str(name).startswith("person_signals_feed_"):  # as older releases had it
            await store.command(
                str(create).replace(f"TO {db}.signal_rows", f"TO {db}.person_signals")
            )
    for table in ("signal_rows", *KEY_VALUE):
        await store.command(f"DROP TABLE {db}.{table}")


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
    seg = build_segmenter(settings, store, bootstrap, invalid, engine, embedded=True)
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
        if engine is not None:
            await engine.close()
        await invalid.stop()
        changes.close()
