"""Who gets nothing and when: quiet hours, caps across campaigns, holdout, consent,
unsubscribes and erasure, on the real broker and engine with a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from leadback.dispatcher.policy import held_out
from leadback.ingest.signals import signal_event
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from tests.integration.audience_kit import event
from tests.integration.dispatch_kit import FakeChannel, Harness, fake_channels, harness
from tests.integration.test_dispatcher import AUDIENCES, HOUR

pytestmark = pytest.mark.integration

# 2027-01-15T19:00:00Z: a cart now makes a step due at 21:00:01Z, 22:00:01 in Berlin.
EVENING = 1_800_039_600.0

CAMPAIGNS = """
destinations:
  - {id: hook, kind: webhook, name: hook}
  - {id: other, kind: webhook, name: other}
policies:
  - site: demo
    timezone: Europe/Berlin
    quiet_hours: {start: "21:00", end: "08:00"}
    channel_caps:
      webhook: {max: 1, per: 24h}
campaigns:
  - id: cart-a
    site: demo
    audience: cart_abandoners
    steps: [{wait: 1h, destination: hook}]
  - id: cart-b
    site: demo
    audience: cart_abandoners
    steps: [{wait: 1h, destination: other}]
"""

HOLDOUT = """
destinations:
  - {id: hook, kind: webhook, name: hook}
campaigns:
  - id: split
    site: demo
    audience: cart_abandoners
    holdout: 50
    steps: [{wait: 0s, destination: hook}]
"""


@pytest.fixture
async def evening(topics: Settings, store: ClickHouseStore) -> AsyncIterator[Harness]:
    with fake_channels():
        async with harness(topics, store, start=EVENING) as hh:
            await hh.apply_audiences(AUDIENCES)
            await hh.apply_campaigns(CAMPAIGNS)
            yield hh


def sent(h: Harness) -> list[tuple[str, str]]:
    channels: dict[str, FakeChannel] = {
        d: h.dispatcher.book.channel(d)  # type: ignore[misc]
        for d in ("hook", "other")
        if d in h.dispatcher.book.destinations
    }
    return sorted((name, m.person_id) for name, ch in channels.items() for m in ch.messages)


async def abandon(h: Harness, *visitors: str, consent: str = "granted") -> None:
    events = [event("demo", v, "add_to_cart", h.clock.now()) for v in visitors]
    for e in events:
        e["consent"]["status"] = consent  # type: ignore[typeddict-item]
        e["consent"]["purposes"] = ["all"] if consent == "granted" else []
    before = h.dispatcher.stats.changes_seen
    await h.send(*events)
    await h.later(HOUR + 1)
    await h.planned(before + len(visitors))


async def test_quiet_hours_hold_sends_and_a_channel_cap_spans_campaigns(evening: Harness) -> None:
    h = evening
    await abandon(h, "v1")
    await h.later(HOUR)  # 22:00 in Berlin: quiet
    await h.settle()
    assert sent(h) == []
    await h.later(9 * HOUR)  # 07:00 in Berlin: still quiet
    await h.settle()
    assert sent(h) == []
    await h.later(HOUR)  # 08:00: one of the two campaigns sends, the cap skips the other
    await h.settle()
    assert len(sent(h)) == 1
    statuses = {c: await h.statuses(c) for c in ("cart-a", "cart-b")}
    assert sorted(next(iter(s)) for s in statuses.values()) == ["capped", "sent"]


async def test_no_marketing_consent_means_no_message(evening: Harness) -> None:
    h = evening
    await abandon(h, "v2", consent="denied")
    await h.later(11 * HOUR)
    await h.settle()
    assert sent(h) == []
    assert (await h.statuses("cart-a")) == {"no_consent": [("v2", 0)]}


async def test_an_unsubscribe_signal_suppresses_the_person(evening: Harness) -> None:
    h = evening
    await abandon(h, "v3")
    signal = signal_event(
        site_id="demo",
        visitor_id="v3",
        name="leadback.suppressed",
        properties={"subject": "person:v3", "channel": "all", "reason": "unsubscribed"},
        now=h.clock.now(),
    )
    await h.send(signal)  # as the segmenter writes it: the view makes the suppression
    await h.later(11 * HOUR)
    await h.settle()
    assert sent(h) == []
    assert (await h.statuses("cart-a")) == {"suppressed": [("v3", 0)]}


async def test_erasure_cancels_pending_steps_and_suppresses(evening: Harness) -> None:
    h = evening
    await abandon(h, "v4")
    assert (await h.statuses("cart-a")) == {}
    pending = await h.store.query(f"SELECT count() FROM {h.store.database}.campaign_steps")
    assert pending[0][0] == 2  # cart-a and cart-b
    await h.engine.erase("demo", visitor_id="v4", user_id=None)
    await h.planned(2)  # the erasure's exit
    for table in ("campaign_steps", "deliveries"):  # nothing of theirs is kept
        rows = await h.store.query(f"SELECT count() FROM {h.store.database}.{table}")
        assert rows[0][0] == 0, table
    await abandon(h, "v4")  # back after the erasure: a new membership
    await h.later(11 * HOUR)
    await h.settle()
    assert sent(h) == []
    statuses = await h.statuses("cart-a")
    assert statuses["suppressed"] == [("v4", 0)]


async def test_the_holdout_share_gets_nothing_and_is_recorded(
    topics: Settings, store: ClickHouseStore
) -> None:
    with fake_channels():
        async with harness(topics, store) as h:
            await h.apply_audiences(AUDIENCES)
            await h.apply_campaigns(HOLDOUT)
            people = [f"p{i:03d}" for i in range(60)]
            await abandon(h, *people)
            await h.later(1)
            await h.settle()
            expected_held = sorted(p for p in people if held_out(p, "split", 50))
            statuses = await h.statuses("split")
            assert [p for p, _ in statuses["held_out"]] == expected_held
            assert sorted(p for _, p in sent(h)) == sorted(set(people) - set(expected_held))
            assert 10 < len(expected_held) < 50
