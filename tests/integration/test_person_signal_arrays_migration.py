"""Migration 0007 rebuilds ``person_signals`` with its times as plain arrays: every visitor's
times kept (each event once), the old feed view dropped, the new one installed when the engine
starts, and the audiences live at once (no backfill)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from leadback.audiences.backfill import SignalBackfill
from leadback.audiences.compiler import compile_rule
from leadback.audiences.engine import AudienceEngine
from leadback.audiences.rules import parse_audience
from leadback.audiences.signals import FEED_PREFIX, feed_sql, state_select
from leadback.clock import ManualClock
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import available, migrate
from tests.integration.audience_kit import RecordingPublisher, encoded, event
from tests.integration.helpers import migrate_before
from tests.integration.test_backfill import BUYERS, NOW, members, store_history

pytestmark = pytest.mark.integration

ARRAYS = 7  # the migration under test
LATER = [m.version for m in available() if m.version > ARRAYS]  # applied with it
SPEC = parse_audience({"id": "buyers", "site": "shop", **BUYERS})


def _old_feed(db: str) -> str:
    """The feed as 0006 wrote it: a ``groupUniqArray`` state per row."""
    signals = list(compile_rule(SPEC, {SPEC.id: SPEC}).signals)
    # Before 0011 the feed wrote into `person_signals` itself.
    new = feed_sql(db, signals).replace(f"TO {db}.signal_rows", f"TO {db}.person_signals")
    return new.replace(new.split(" TO ")[0].split()[-1], f"{db}.{FEED_PREFIX}old").replace(
        "groupUniqArrayIf(", "groupUniqArrayStateIf("
    )


@pytest.fixture
async def old_store(make_settings: Callable[..., Settings]) -> AsyncIterator[ClickHouseStore]:
    """A database as the release before 0007 left it: the audience live, its feed filling
    ``groupUniqArray`` states from two inserts that share events (retried with another token)."""
    store = ClickHouseStore(make_settings().clickhouse)
    await migrate_before(store, ARRAYS)
    db = store.database
    await store.command(_old_feed(db))
    await store_history(store, groups=2, per_group=40)
    _, again = encoded([event("shop", "v00000", "purchase", NOW - 10 * 86_400.0)])
    await store.insert_json_rows("events", b"\n".join(again), dedup_token="retried")
    try:
        yield store
    finally:
        await store.command(f"DROP DATABASE IF EXISTS {db}")
        await store.close()


async def _times(store: ClickHouseStore, merged: str) -> dict[tuple[Any, ...], Any]:
    rows = await store.query(
        f"SELECT visitor_id, signal, product, arraySort({merged}), max(last_t) "
        f"FROM {store.database}.person_signals GROUP BY visitor_id, signal, product"
    )
    return {tuple(r[:3]): (list(r[3]), r[4]) for r in rows}


async def _views(store: ClickHouseStore) -> list[str]:
    rows = await store.query(
        "SELECT name FROM system.tables WHERE database = {db:String} "
        "AND startsWith(name, {p:String})",
        {"db": store.database, "p": FEED_PREFIX},
    )
    return sorted(str(r[0]) for r in rows)


async def _type_of_times(store: ClickHouseStore) -> str:
    rows = await store.query(
        "SELECT type FROM system.columns WHERE database = {db:String} "
        "AND table = 'person_signals' AND name = 'times'",
        {"db": store.database},
    )
    return str(rows[0][0])


def _kept(times: dict[tuple[Any, ...], Any]) -> Sequence[int]:
    return sorted(len(t) for t, _ in times.values())


async def test_every_time_is_kept_once_and_the_old_feed_replaced(
    old_store: ClickHouseStore,
) -> None:
    before = await _times(old_store, "groupUniqArrayMerge(times)")
    assert len(before) > 40 and max(_kept(before)) >= 1
    assert await _views(old_store) == [f"{FEED_PREFIX}old"]

    assert await migrate(old_store) == [ARRAYS, *LATER]
    assert (await _type_of_times(old_store)).startswith("SimpleAggregateFunction(groupUniqArray")
    assert await _times(old_store, "arrayDistinct(groupArrayArray(times))") == before
    assert await _views(old_store) == []  # dropped: it wrote the old type
    assert await migrate(old_store) == []

    # The backfill records still say every signal is complete: nothing is filled again, the
    # engine only installs the new feed; the audience reads the copied history at once.
    signals = list(compile_rule(SPEC, {SPEC.id: SPEC}).signals)
    await SignalBackfill(old_store)._record(signals, "done")  # as the old release left them
    engine = AudienceEngine(old_store, RecordingPublisher(), clock=ManualClock(NOW))
    stored, _ = await engine.repository.put(SPEC)
    await engine.repository.mark_evaluated("shop", "buyers", stored.version)
    await engine.start()
    try:
        assert len(await _views(old_store)) == 1
        assert engine.not_live() == 0
        fresh = [event("shop", "newcomer", "purchase", NOW - 60)]
        keys, values = encoded(fresh)
        await old_store.insert_json_rows("events", b"\n".join(values), dedup_token="fresh")
        await engine.on_batch(keys, values, "fresh")
        assert await members(old_store, "buyers") == {"newcomer"}
        # Everyone of the site over the copied state: who bought within 90 days.
        await engine._evaluator.persons("shop", {str(k[0]) for k in before}, token="all")
        expected = await _expected(old_store)
        assert await members(old_store, "buyers") == expected | {"newcomer"}
    finally:
        await engine.close()


async def _expected(store: ClickHouseStore) -> set[str]:
    """Who qualifies, computed from the events (the feed's own statement)."""
    signals = list(compile_rule(SPEC, {SPEC.id: SPEC}).signals)
    purchase = [s for s in signals if "purchase" in s.predicate]
    lead = [s for s in signals if "'lead'" in s.predicate]
    rows = await store.query(
        f"SELECT visitor_id, signal, max(last_t) FROM ({state_select(store.database, signals)}) "
        "GROUP BY visitor_id, signal"
    )
    bought = {str(v) for v, s, t in rows if s == purchase[0].id and t > (NOW - 90 * 86_400) * 1000}
    led = {str(v) for v, s, _ in rows if s == lead[0].id}
    return bought - led


async def test_a_crash_before_the_swap_is_retried_and_after_it_recorded(
    old_store: ClickHouseStore,
) -> None:
    before = await _times(old_store, "groupUniqArrayMerge(times)")
    (migration,) = [m for m in available() if m.version == ARRAYS]
    drop, create, copy, _swap, _drop_old = migration.statements(
        db=old_store.database, ttl_days=3650, dedup_window=1000
    )
    await old_store.command(f"DROP VIEW {old_store.database}.{FEED_PREFIX}old")
    for statement in (drop, create, copy, copy):  # died after a copy that ran twice
        await old_store.command(statement)
    assert await migrate(old_store) == [ARRAYS, *LATER]
    assert await _times(old_store, "arrayDistinct(groupArrayArray(times))") == before

    # Died after the swap, before dropping the old table: found done, recorded.
    await old_store.command(
        f"ALTER TABLE {old_store.database}.schema_migrations DELETE WHERE version = {ARRAYS}"
    )
    assert await migrate(old_store) == [ARRAYS]
    assert await _times(old_store, "arrayDistinct(groupArrayArray(times))") == before
