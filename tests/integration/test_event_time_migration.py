"""Migration 0004 moves an existing events table to the event time: every row kept with
``occurred_at = received_at``, monthly partitions on it, the materialized views still firing;
and it finishes after a crash at any point."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from leadback import events as ev
from leadback.ingest.signals import signal_event
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import available, migrate
from tests.integration.helpers import count, migrate_before
from tests.integration.test_crash_recovery import canonical

pytestmark = pytest.mark.integration

FROM_4 = [m.version for m in available() if m.version >= 4]  # 4 and every later one

# Received on three days in two months: old daily partitions 3, new monthly ones 2.
RECEIVED = ["2026-10-30T23:59:59.999Z", "2026-11-01T00:00:00.000Z", "2026-11-20T12:00:00.000Z"]
EVENT_TIME = 4  # the migration under test


@pytest.fixture
async def old_store(make_settings: Callable[..., Settings]) -> AsyncIterator[ClickHouseStore]:
    """A database as a Leadback release before 0004 left it, with 30 events in it."""
    store = ClickHouseStore(make_settings().clickhouse)
    await migrate_before(store, EVENT_TIME)
    rows = []
    for i in range(30):
        row = canonical(i, 0)
        row["received_at"] = RECEIVED[i % 3]
        rows.append(orjson.dumps(row))
    await store.insert_json_rows("events", b"\n".join(rows), dedup_token="old")
    assert await _partition_key(store) == "toYYYYMMDD(received_at)"
    try:
        yield store
    finally:
        await store.command(f"DROP DATABASE IF EXISTS {store.database}")
        await store.close()


async def _partition_key(store: ClickHouseStore) -> str:
    rows = await store.query(
        "SELECT partition_key FROM system.tables WHERE database = {db:String} AND name = 'events'",
        {"db": store.database},
    )
    return str(rows[0][0])


async def _statements_of_0004(store: ClickHouseStore) -> list[str]:
    (migration,) = [m for m in available() if m.version == EVENT_TIME]
    return migration.statements(db=store.database, ttl_days=3650, dedup_window=1000)


async def _assert_moved(store: ClickHouseStore) -> None:
    db = store.database
    assert await count(store, "SELECT count() FROM {db}.events") == 30
    assert await count(store, "SELECT countIf(occurred_at != received_at) FROM {db}.events") == 0
    assert await _partition_key(store) == "toYYYYMM(occurred_at)"
    assert await count(store, "SELECT uniqExact(_partition_id) FROM {db}.events") == 2
    rows = await store.query(
        "SELECT sorting_key, create_table_query FROM system.tables "
        "WHERE database = {db:String} AND name = 'events'",
        {"db": db},
    )
    sorting_key, create = rows[0]
    assert sorting_key == "site_id, visitor_id, event_id"
    assert "TTL toDateTime(occurred_at) + toIntervalDay(" in create
    columns = [
        str(r[0])
        for r in await store.query(
            "SELECT name FROM system.columns WHERE database = {db:String} AND table = 'events' "
            "ORDER BY position",
            {"db": db},
        )
    ]
    assert columns[columns.index("received_at") + 1] == "occurred_at"
    tables = await store.query(
        "SELECT name FROM system.tables WHERE database = {db:String} AND name = 'events_v2'",
        {"db": db},
    )
    assert tables == []


async def _assert_views_fire(store: ClickHouseStore) -> None:
    """A signal stored after the move still reaches the suppressions table through its view,
    and an event without occurred_at (written before it existed) gets its received_at."""
    signal = signal_event(
        site_id="demo",
        visitor_id="v1",
        name="leadback.suppressed",
        properties={"subject": "person:v1", "channel": "email", "reason": "unsubscribed"},
        now=1_790_000_000.0,
    )
    old = canonical(99, 1_790_000_000.0)  # no occurred_at: an old record on the topic
    body = orjson.dumps(signal) + b"\n" + orjson.dumps(old)
    await store.insert_json_rows("events", body, dedup_token="after")
    assert await count(store, "SELECT count() FROM {db}.suppressions WHERE active = 1") == 1
    rows = await store.query(
        f"SELECT event_id, occurred_at = received_at FROM {store.database}.events "
        "WHERE event_id IN ('crash-99', {s:String})",
        {"s": signal["event_id"]},
    )
    assert {str(r[0]): r[1] for r in rows} == {"crash-99": True, signal["event_id"]: True}


async def test_an_existing_table_moves_to_the_event_time_with_every_row(
    old_store: ClickHouseStore,
) -> None:
    assert await migrate(old_store) == FROM_4
    await _assert_moved(old_store)
    await _assert_views_fire(old_store)
    assert await migrate(old_store) == []


async def test_a_crash_before_the_swap_is_retried_from_the_start(
    old_store: ClickHouseStore,
) -> None:
    drop, create, copy, *_ = await _statements_of_0004(old_store)
    for statement in (drop, create, copy):  # died after the copy, before the swap
        await old_store.command(statement)
    await old_store.command(copy)  # ... or a copy ran twice: the work table is dropped first
    assert await migrate(old_store) == FROM_4
    await _assert_moved(old_store)
    await _assert_views_fire(old_store)


async def test_a_crash_after_the_swap_is_recorded_and_the_old_table_dropped(
    old_store: ClickHouseStore,
) -> None:
    *done, _drop_old = await _statements_of_0004(old_store)
    for statement in done:  # died after the swap, before dropping the old table
        await old_store.command(statement)
    assert await migrate(old_store) == FROM_4
    await _assert_moved(old_store)
    await _assert_views_fire(old_store)
    recorded = await old_store.query(
        f"SELECT version FROM {old_store.database}.schema_migrations FINAL ORDER BY version"
    )
    assert [int(r[0]) for r in recorded] == [m.version for m in available()]


def test_an_event_written_now_carries_its_event_time() -> None:
    """The new key sits right after received_at on the wire, as in the table."""
    keys = list(ev.CanonicalEvent.__annotations__)
    assert keys[keys.index("received_at") + 1] == "occurred_at"
