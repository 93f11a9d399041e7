"""The state cache changes no answer: an engine keeping its persons' state in memory publishes
the very changes of one reading every person's state whole, through rounds, timer passes,
identity merges, events sent again, late events and evictions from a cache too small to hold
everyone. Each engine has a database of its own; both see the same events at the same times.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from leadback.audiences.engine import AudienceEngine
from leadback.audiences.rules import parse_audiences
from leadback.clock import ManualClock
from leadback.events import CanonicalEvent, format_ts
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate
from tests.integration.audience_kit import RecordingPublisher, encoded, event
from tests.integration.test_audiences import EXAMPLES

pytestmark = pytest.mark.integration

MORE = """
audiences:
  - id: browsers
    site: shop
    rule:
      all:
        - did: {event: page_view, count: {min: 3}, within: 1d}
        - seen_within: 2h
  - id: funnel
    site: shop
    rule:
      sequence:
        steps: [{event: product_view}, {event: add_to_cart}, {event: checkout}]
        within: 2d
"""

VISITORS = [f"v{i}" for i in range(14)]
TYPES = ["page_view", "page_view", "product_view", "add_to_cart", "checkout", "purchase"]
STEPS = [30.0, 600.0, 3600.0, 3 * 3600.0, 86_400.0, 4 * 86_400.0]


class Twin:
    """One engine on a database of its own."""

    def __init__(self, store: ClickHouseStore, cache: int) -> None:
        self.store = store
        self.clock = ManualClock(1_800_000_000.0)
        self.publisher = RecordingPublisher()
        self.engine = AudienceEngine(store, self.publisher, clock=self.clock, state_cache=cache)

    async def start(self) -> None:
        await migrate(self.store)
        await self.engine.start()
        for text in (EXAMPLES, MORE):
            for spec in parse_audiences(yaml.safe_load(text)):
                await self.engine.repository.put(spec)
        await self.engine.tick()

    def published(self) -> list[tuple[Any, ...]]:
        return [
            (
                r["visitor_id"],
                r["audience_id"],
                r["change"],
                r["reason"],
                r["version"],
                tuple(r["products"]),
            )
            for r in self.publisher.records
        ]


@pytest.fixture
async def twins(store: ClickHouseStore, topics: Settings) -> AsyncIterator[tuple[Twin, Twin]]:
    other = ClickHouseStore(
        topics.clickhouse.model_copy(update={"database": topics.clickhouse.database + "_c"})
    )
    reference, cached = Twin(store, 0), Twin(other, 4)
    await reference.start()
    await cached.start()
    yield reference, cached
    await other.command(f"DROP DATABASE IF EXISTS {other.database}")
    await other.close()


def _events(rng: random.Random, now: float, sent: list[CanonicalEvent]) -> list[CanonicalEvent]:
    out: list[CanonicalEvent] = []
    for _ in range(rng.randint(1, 6)):
        if sent and rng.random() < 0.1:
            out.append(rng.choice(sent))  # the client sent it again
            continue
        visitor = rng.choice(VISITORS)
        if rng.random() < 0.08:  # a login: links the visitor to a user (merges persons)
            e = event("shop", visitor, "identify", now, user_id=f"u{rng.randint(0, 4)}")
        else:
            etype = rng.choice(TYPES)
            props: dict[str, Any] = {"product_id": f"p{rng.randint(0, 2)}"}
            if etype == "checkout":
                props["value"] = rng.choice([50, 150])
            url = "https://x.example/contact" if rng.random() < 0.2 else None
            e = event("shop", visitor, etype, now, properties=props, url=url)
        if rng.random() < 0.15:  # queued offline: it happened a while ago
            e["occurred_at"] = format_ts(now - rng.choice([600.0, 7200.0, 3 * 86_400.0]))
        out.append(e)
    sent.extend(out)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_the_cache_publishes_what_reading_whole_states_does(
    twins: tuple[Twin, Twin], seed: int
) -> None:
    reference, cached = twins
    rng = random.Random(seed)
    sent: list[CanonicalEvent] = []
    for step in range(40):
        if rng.random() < 0.35:
            seconds = rng.choice(STEPS)
            for twin in twins:
                twin.clock.advance(seconds)
                await twin.engine.tick()
            continue
        batch = _events(rng, reference.clock.now(), sent)
        keys, values = encoded(batch)
        for twin in twins:
            token = f"{seed}-{step}"
            await twin.store.insert_json_rows("events", b"\n".join(values), dedup_token=token)
            await twin.engine.on_batch(keys, values, token)
    assert cached.engine.state_cache.hits > 0
    assert reference.published(), "the script should make members"
    assert cached.published() == reference.published()
