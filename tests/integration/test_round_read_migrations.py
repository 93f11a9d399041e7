"""Migrations 0009 and 0010 rebuild the two tables a round reads per person: ``person_signals``
in 256-row granules, ``memberships`` sorted by person before audience. Every row is kept, the
feed comes back when the engine starts, and the audiences go on from the stored memberships
(an enter is not repeated, a member can still exit). A database that ran the reverted
``stored_at`` experiment (version 8) moves too."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from leadback.audiences.engine import AudienceEngine
from leadback.audiences.rules import parse_audience
from leadback.audiences.signals import FEED_PREFIX
from leadback.clock import ManualClock
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import available, migrate
from tests.integration.audience_kit import RecordingPublisher, encoded, event
from tests.integration.helpers import migrate_before, with_person_state
from tests.integration.test_backfill import BUYERS, NOW, members, store_history

pytestmark = pytest.mark.integration

GRANULES, ORDER = 9, 10  # the migrations under test
LATER = [m.version for m in available() if m.version > ORDER]  # applied with them
SPEC = parse_audience({"id": "buyers", "site": "shop", **BUYERS})


@pytest.fixture
async def old_store(make_settings: Callable[..., Settings]) -> AsyncIterator[ClickHouseStore]:
    """A database as the release before 0009 left it, with the experiment's version 8: the
    audience live over a stored history, its members written."""
    store = ClickHouseStore(make_settings().clickhouse)
    await migrate_before(store, GRANULES)
    db = store.database
    await store.command(
        f"ALTER TABLE {db}.person_signals ADD COLUMN stored_at "
        "SimpleAggregateFunction(max, Int64) DEFAULT 0"
    )
    await store.command(
        f"INSERT INTO {db}.schema_migrations (version, name) VALUES (8, 'person_signal_stored_at')"
    )
    async with with_person_state(store):
        engine = AudienceEngine(store, RecordingPublisher(), clock=ManualClock(NOW))
        await engine.start()
        await store_history(store, groups=2, per_group=40)
        await engine.repository.put(SPEC)
        await engine.tick()
        await engine.close()
    try:
        yield store
    finally:
        await store.command(f"DROP DATABASE IF EXISTS {db}")
        await store.close()


async def _signals(store: ClickHouseStore) -> dict[tuple[Any, ...], Any]:
    rows = await store.query(
        "SELECT visitor_id, signal, product, arraySort(arrayDistinct(groupArrayArray(times))), "
        f"max(last_t) FROM {store.database}.person_signals GROUP BY visitor_id, signal, product"
    )
    return {tuple(r[:3]): (list(r[3]), r[4]) for r in rows}


async def _memberships(store: ClickHouseStore) -> set[tuple[Any, ...]]:
    rows = await store.query(
        "SELECT site_id, audience_id, person_id, state, version, products, entered_at, "
        f"changed_at, audience_version FROM {store.database}.memberships FINAL"
    )
    return {(*r[:5], tuple(r[5]), *r[6:]) for r in rows}


async def _table(store: ClickHouseStore, name: str) -> tuple[str, str]:
    rows = await store.query(
        "SELECT create_table_query, sorting_key FROM system.tables "
        "WHERE database = {db:String} AND name = {t:String}",
        {"db": store.database, "t": name},
    )
    return str(rows[0][0]), str(rows[0][1])


async def _feed_views(store: ClickHouseStore) -> int:
    rows = await store.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} "
        "AND startsWith(name, {p:String})",
        {"db": store.database, "p": FEED_PREFIX},
    )
    return int(rows[0][0])


async def test_both_tables_move_with_every_row_and_audiences_go_on(
    old_store: ClickHouseStore,
) -> None:
    signals, memberships = await _signals(old_store), await _memberships(old_store)
    assert len(signals) > 40 and sum(m[3] == "in" for m in memberships) >= 5
    assert await _feed_views(old_store) == 1

    assert await migrate(old_store) == [GRANULES, ORDER, *LATER]
    signals_table, _ = await _table(old_store, "person_signals")
    assert "index_granularity = 256" in signals_table and "stored_at" not in signals_table
    memberships_table, sorting = await _table(old_store, "memberships")
    assert sorting == "site_id, person_id, audience_id"
    assert "index_granularity = 256" in memberships_table
    assert await _signals(old_store) == signals
    assert await _memberships(old_store) == memberships
    assert await _feed_views(old_store) == 0  # dropped for the copy, installed at start
    assert await migrate(old_store) == []

    publisher = RecordingPublisher()
    engine = AudienceEngine(old_store, publisher, clock=ManualClock(NOW))
    await engine.start()
    try:
        assert await _feed_views(old_store) == 1
        assert engine.not_live() == 0
        before = await members(old_store, "buyers")
        leaver = sorted(before)[0]
        fresh = [
            event("shop", "newcomer", "purchase", NOW - 60),
            event("shop", leaver, "lead", NOW - 30),
            event("shop", sorted(before)[1], "page_view", NOW - 30),  # stays: no new enter
        ]
        keys, values = encoded(fresh)
        await old_store.insert_json_rows("events", b"\n".join(values), dedup_token="fresh")
        await engine.on_batch(keys, values, "fresh")
        assert await members(old_store, "buyers") == (before - {leaver}) | {"newcomer"}
        changes = {(c["visitor_id"], c["change"]) for c in publisher.records}
        assert changes == {("newcomer", "enter"), (leaver, "exit")}
    finally:
        await engine.close()


async def test_a_crash_before_or_after_the_memberships_swap_is_recovered(
    old_store: ClickHouseStore,
) -> None:
    memberships = await _memberships(old_store)
    (migration,) = [m for m in available() if m.version == ORDER]
    drop, create, copy, swap, _drop_old = migration.statements(
        db=old_store.database, ttl_days=3650, dedup_window=1000
    )
    for statement in (drop, create, copy, copy):  # died after a copy that ran twice
        await old_store.command(statement)
    assert await migrate(old_store) == [GRANULES, ORDER, *LATER]
    assert await _memberships(old_store) == memberships

    # Died after the swap, before dropping the old table: found done, recorded.
    await old_store.command(
        f"ALTER TABLE {old_store.database}.schema_migrations DELETE WHERE version = {ORDER}"
    )
    assert await migrate(old_store) == [ORDER]
    assert await _memberships(old_store) == memberships
    assert swap.startswith("EXCHANGE TABLES")
