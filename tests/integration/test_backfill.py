"""A new audience over stored history: its signals backfilled range by range, everyone of the
site evaluated range by range, the enters published, the progress visible; a signal that left
the feed and comes back is filled again."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from leadback.audiences.engine import AudienceEngine
from leadback.audiences.refresh import refresh_statuses, state_of
from leadback.audiences.rules import parse_audience
from leadback.clock import ManualClock
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate
from tests.integration.audience_kit import RecordingPublisher, encoded, event

pytestmark = pytest.mark.integration

DAY = 86_400.0
NOW = 1_800_000_000.0
BUYERS = {
    "rule": {
        "all": [
            {"did": {"event": "purchase", "within": "90d"}},
            {"not": {"did": {"event": "lead"}}},
        ]
    }
}


@pytest.fixture
async def engine(store: ClickHouseStore) -> AsyncIterator[AudienceEngine]:
    await migrate(store)
    engine = AudienceEngine(store, RecordingPublisher(), clock=ManualClock(NOW))
    engine.backfill.rows_per_range = 150
    engine.refresher.events_per_range = 100
    engine.refresher.visitors_per_evaluation = 25
    await engine.start()
    yield engine
    await engine.close()


async def store_history(store: ClickHouseStore, groups: int = 4, per_group: int = 60) -> set[str]:
    """Visitors in ``groups`` inserts (parts starting at different visitor ids); every third
    bought 10-200 days ago, every seventh of those also left a lead. Returns who qualifies."""
    expected = set()
    for g in range(groups):
        events = []
        for i in range(per_group):
            visitor = f"v{g:02d}{i:03d}"
            age = 10 + (i * 37 % 190)
            events.append(event("shop", visitor, "page_view", NOW - (age + 1) * DAY))
            if i % 3 == 0:
                events.append(event("shop", visitor, "purchase", NOW - age * DAY))
                if i % 7 == 0:
                    events.append(event("shop", visitor, "lead", NOW - 5 * DAY))
                elif age < 90:
                    expected.add(visitor)
        _, values = encoded(events)
        await store.insert_json_rows("events", b"\n".join(values), dedup_token=f"history-{g}")
    return expected


async def put(engine: AudienceEngine, audience_id: str, body: dict[str, object]) -> None:
    await engine.repository.put(parse_audience({"id": audience_id, "site": "shop", **body}))


async def members(store: ClickHouseStore, audience: str) -> set[str]:
    rows = await store.query(
        f"SELECT person_id FROM {store.database}.memberships FINAL "
        "WHERE audience_id = {a:String} AND state = 'in'",
        {"a": audience},
    )
    return {str(r[0]) for r in rows}


async def test_a_new_audience_is_backfilled_over_history_by_ranges(
    engine: AudienceEngine, store: ClickHouseStore
) -> None:
    expected = await store_history(store)
    assert 10 < len(expected) < 240
    await put(engine, "buyers", BUYERS)
    await engine.tick()

    assert await members(store, "buyers") == expected
    publisher = engine._outbox._publisher  # type: ignore[attr-defined]
    enters = {r["visitor_id"] for r in publisher.records if r["change"] == "enter"}
    assert enters == expected
    [status] = await refresh_statuses(store, "shop")
    assert (status.audience_id, status.phase, status.done) == ("buyers", "done", status.total)
    assert status.total > 1  # everyone of the site was evaluated in several ranges
    assert status.rows_read >= 300
    stored = await engine.repository.get("shop", "buyers")
    evaluated = (await engine.repository.evaluated_versions())[("shop", "buyers")]
    assert state_of(stored, evaluated, status) == "live"
    # The history was read in several ranges, cut from the index of the events table.
    assert len(await engine.backfill.ranges("events", "shop", 150)) > 1


async def test_new_events_reach_the_audience_through_the_feed(
    engine: AudienceEngine, store: ClickHouseStore
) -> None:
    await store_history(store, groups=1, per_group=10)
    await put(engine, "buyers", BUYERS)
    await engine.tick()
    before = await members(store, "buyers")
    fresh = [event("shop", "newcomer", "purchase", NOW - 60)]
    keys, values = encoded(fresh)
    await store.insert_json_rows("events", b"\n".join(values), dedup_token="fresh")
    await engine.on_batch(keys, values, "fresh")
    assert await members(store, "buyers") == before | {"newcomer"}


async def test_a_signal_back_in_the_feed_is_filled_again(
    engine: AudienceEngine, store: ClickHouseStore
) -> None:
    await put(engine, "buyers", BUYERS)
    await engine.tick()
    _, values = encoded([event("shop", "early", "purchase", NOW - DAY)])
    await store.insert_json_rows("events", b"\n".join(values), dedup_token="early")
    fed = f"SELECT count() FROM {store.database}.person_state WHERE visitor_id = 'early'"
    assert (await store.query(fed))[0][0] == 1
    await engine.repository.delete("shop", "buyers")
    await engine.tick()
    # Bought while no audience wanted purchases: the feed did not keep them.
    expected = await store_history(store, groups=1, per_group=30) | {"early"}
    await put(engine, "buyers", BUYERS)
    await engine.tick()
    assert await members(store, "buyers") == expected
