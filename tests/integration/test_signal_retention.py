"""Events past the TTL stop counting: the per-person state follows the events TTL, in what an
evaluation reads at once and in what ClickHouse keeps; a changed TTL reaches every table."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import yaml

from leadback.audiences.engine import AudienceEngine
from leadback.audiences.person_state import ensure_ttl, ensure_view
from leadback.audiences.rules import parse_audiences
from leadback.clock import ManualClock
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate
from tests.integration.audience_kit import RecordingPublisher, encoded, event
from tests.integration.test_backfill import members

pytestmark = pytest.mark.integration

DAY = 86_400.0
NOW = 1_800_000_000.0
TTL_DAYS = 30
AUDIENCES = """
audiences:
  - id: buyers
    site: shop
    rule: {did: {event: purchase}}
  - id: repeat_buyers
    site: shop
    rule: {did: {event: purchase, count: 2}}
"""


@pytest.fixture
async def short_ttl(make_settings: Callable[..., Settings]) -> AsyncIterator[ClickHouseStore]:
    store = ClickHouseStore(make_settings(clickhouse={"events_ttl_days": TTL_DAYS}).clickhouse)
    await migrate(store)
    try:
        yield store
    finally:
        await store.command(f"DROP DATABASE IF EXISTS {store.database}")
        await store.close()


async def _ttl_days(store: ClickHouseStore, table: str) -> str:
    rows = await store.query(
        "SELECT create_table_query FROM system.tables WHERE database = {db:String} "
        "AND name = {t:String}",
        {"db": store.database, "t": table},
    )
    return str(rows[0][0]).split("toIntervalDay(")[1].split(")")[0]


async def _state_ttl_s(store: ClickHouseStore) -> int:
    rows = await store.query(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} "
        "AND name = 'person_state'",
        {"db": store.database},
    )
    return int(str(rows[0][0]).split("EmbeddedRocksDB(")[1].split(")")[0])


async def test_times_past_the_ttl_do_not_count(short_ttl: ClickHouseStore) -> None:
    # Stored while they were young: the feed keeps them, the TTL has not run yet.
    engine = AudienceEngine(short_ttl, RecordingPublisher(), clock=ManualClock(NOW))
    await engine.start()
    try:
        for spec in parse_audiences(yaml.safe_load(AUDIENCES)):
            await engine.repository.put(spec)
        await engine.tick()
        history = [
            event("shop", "old_and_new", "purchase", NOW - 40 * DAY),
            event("shop", "old_and_new", "purchase", NOW - 10 * DAY),
            event("shop", "twice_recent", "purchase", NOW - 9 * DAY),
            event("shop", "twice_recent", "purchase", NOW - 8 * DAY),
            event("shop", "only_old", "purchase", NOW - 45 * DAY),
        ]
        keys, values = encoded(history)
        await short_ttl.insert_json_rows("events", b"\n".join(values), dedup_token="h")
        await engine.on_batch(keys, values, "h")
        assert await members(short_ttl, "buyers") == {"old_and_new", "twice_recent"}
        assert await members(short_ttl, "repeat_buyers") == {"twice_recent"}
    finally:
        await engine.close()


async def _memtable_writes(store: ClickHouseStore) -> set[str]:
    """The key-value tables whose writes go to RocksDB's memtable (migration 0015)."""
    rows = await store.query(
        "SELECT name FROM system.tables WHERE database = {db:String} "
        "AND engine = 'EmbeddedRocksDB' AND engine_full LIKE '%optimize_for_bulk_insert = 0%'",
        {"db": store.database},
    )
    return {str(r[0]) for r in rows}


async def test_the_ttl_follows_the_setting_on_both_tables(
    make_settings: Callable[..., Settings], short_ttl: ClickHouseStore
) -> None:
    assert await _ttl_days(short_ttl, "events") == str(TTL_DAYS)
    assert await _ttl_days(short_ttl, "person_signals") == str(TTL_DAYS)
    longer = ClickHouseStore(
        make_settings(clickhouse={"events_ttl_days": 90, "database": short_ttl.database}).clickhouse
    )
    try:
        assert await migrate(longer) == []
        assert await _ttl_days(longer, "events") == "90"
        assert await _ttl_days(longer, "person_signals") == "90"
        # The key-value state: remade by the segmenter's start, its values and view kept.
        assert await _state_ttl_s(longer) == TTL_DAYS * 86_400
        body = b'{"site_id":"shop","visitor_id":"v","signal":1,"product":"","times":[],"last_t":1}'
        await ensure_view(longer)
        await longer.insert_json_rows("signal_rows", body, dedup_token="before")
        assert await _memtable_writes(longer) == {"person_state", "person_memberships"}
        await ensure_ttl(longer)
        assert await _state_ttl_s(longer) == 90 * 86_400
        assert await _memtable_writes(longer) == {"person_state", "person_memberships"}
        await longer.insert_json_rows(
            "signal_rows", body.replace(b":1}", b":2}"), dedup_token="after"
        )
        rows = await longer.query(f"SELECT v FROM {longer.database}.person_state")
        assert [r[0] for r in rows] == [[(1, "", [], 2)]]
        await ensure_ttl(longer)  # unchanged now: nothing to do
        assert await _state_ttl_s(longer) == 90 * 86_400
    finally:
        await longer.close()
    # A row whose latest event is past the TTL is deleted when its part is merged.
    await short_ttl.command(
        f"INSERT INTO {short_ttl.database}.person_signals "
        "VALUES ('shop', 'gone', 1, '', [(1000, 1)], 1000), "
        "('shop', 'kept', 1, '', [(1000, 1)], toUnixTimestamp64Milli(now64()))"
    )
    await short_ttl.command(f"OPTIMIZE TABLE {short_ttl.database}.person_signals FINAL")
    rows = await short_ttl.query(f"SELECT visitor_id FROM {short_ttl.database}.person_signals")
    assert [str(r[0]) for r in rows] == ["kept"]
