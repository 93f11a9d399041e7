"""A destination whose sends hang must not hold back the others, however many of its steps are
in flight (the timer pass reads due steps oldest first, a page at a time)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from leadback.dispatcher import scheduler
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from tests.integration.audience_kit import event
from tests.integration.dispatch_kit import Harness, fake_channels, harness

pytestmark = pytest.mark.integration

AUDIENCES = """
audiences:
  - id: carts
    site: demo
    rule: {did: {event: add_to_cart, within: 7d}}
"""

# The stuck destination's steps come due first, so they are the oldest due rows of every pass.
CAMPAIGNS = """
destinations:
  - {id: stuck, kind: webhook, name: stuck}
  - {id: fast, kind: webhook, name: fast}
campaigns:
  - {id: first, site: demo, audience: carts, steps: [{wait: 1h, destination: stuck}]}
  - {id: second, site: demo, audience: carts, steps: [{wait: 2h, destination: fast}]}
"""

HOUR = 3600.0
PEOPLE = [f"v{i}" for i in range(6)]


async def drained(h: Harness, destination: str) -> None:
    """Wait until ``destination``'s queue is empty, then write the outcomes."""
    for _ in range(100):
        if not h.dispatcher.scheduler.backlog(destination):
            break
        await asyncio.sleep(0.02)
    await h.dispatcher.scheduler.outcomes.flush()


@pytest.fixture
async def h(
    topics: Settings, store: ClickHouseStore, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    monkeypatch.setattr(scheduler, "PASS_LIMIT", 4)  # fewer than the steps stuck in flight
    with fake_channels():
        async with harness(topics, store) as hh:
            await hh.apply_audiences(AUDIENCES)
            await hh.apply_campaigns(CAMPAIGNS)
            yield hh


async def test_steps_stuck_in_flight_do_not_starve_other_destinations(h: Harness) -> None:
    stuck = h.dispatcher.book.channel("stuck")
    fast = h.dispatcher.book.channel("fast")
    stuck.delay_s = 3600  # type: ignore[attr-defined]  # never answers during the test
    await h.send(*(event("demo", v, "add_to_cart", h.clock.now()) for v in PEOPLE))
    await h.planned(len(PEOPLE))
    for _ in range(3):  # the stuck steps come due and are handed to their queue
        await h.later(HOUR / 2)
    assert len(h.dispatcher.scheduler.in_flight) == len(PEOPLE)
    for _ in range(4):  # the fast steps come due, behind the stuck ones
        await h.later(HOUR / 2)
        await drained(h, "fast")
    assert sorted(m.person_id for m in fast.messages) == PEOPLE  # type: ignore[attr-defined]
