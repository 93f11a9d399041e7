"""The dispatcher end to end on the real broker and engine: audience changes -> steps ->
messages, on a manual clock (a fake channel stands in for the provider; each real channel is
tested against its provider's fake in its own tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from leadback.destinations.base import DestinationRejected, DestinationUnavailable, Message
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore
from tests.integration.audience_kit import event
from tests.integration.dispatch_kit import FakeChannel, Harness, fake_channels, harness
from tests.integration.helpers import read_topic

pytestmark = pytest.mark.integration

AUDIENCES = """
audiences:
  - id: cart_abandoners
    site: demo
    rule:
      all:
        - then_not: {did: {event: add_to_cart, within: 7d}, then: {event: purchase}}
        - idle: 1h
"""

CAMPAIGNS = """
destinations:
  - {id: hook, kind: webhook, name: hook}
  - {id: other, kind: webhook, name: other}
campaigns:
  - id: cart-recovery
    site: demo
    audience: cart_abandoners
    steps:
      - {wait: 1h, destination: hook, data: {hello: "{{ products | length }}"}}
      - {wait: 24h, destination: hook}
"""

HOUR = 3600.0


@pytest.fixture
async def h(topics: Settings, store: ClickHouseStore) -> AsyncIterator[Harness]:
    with fake_channels():
        async with harness(topics, store) as hh:
            await hh.apply_audiences(AUDIENCES)
            await hh.apply_campaigns(CAMPAIGNS)
            yield hh


def hook(h: Harness) -> FakeChannel:
    return h.dispatcher.book.channel("hook")  # type: ignore[return-value]


async def abandon(h: Harness, *visitors: str) -> None:
    now = h.clock.now()
    await h.send(*(event("demo", v, "add_to_cart", now) for v in visitors))
    await h.later(HOUR + 1)  # idle 1 h: they enter
    await h.planned(len(visitors))


async def test_an_abandoned_cart_gets_exactly_one_message_per_step(h: Harness) -> None:
    await abandon(h, "v1")
    await h.settle()
    assert not hook(h).messages  # the first step waits 1 h after entering
    await h.later(HOUR)
    await h.settle()
    assert [(m.person_id, m.step) for m in hook(h).messages] == [("v1", 0)]
    first = hook(h).messages[0]
    assert first.content.data == {"hello": "0"}
    for _ in range(3):  # more passes send nothing again
        await h.later(60)
        await h.settle()
    assert len(hook(h).messages) == 1
    await h.later(24 * HOUR)
    await h.settle()
    assert [(m.person_id, m.step) for m in hook(h).messages] == [("v1", 0), ("v1", 1)]
    assert (await h.statuses("cart-recovery")) == {"sent": [("v1", 0), ("v1", 1)]}
    # The delivery id is stable per (campaign, person, membership version, step).
    assert len({m.delivery_id for m in hook(h).messages}) == 2


async def test_a_purchase_before_the_second_step_cancels_it(h: Harness) -> None:
    await abandon(h, "v1", "v2")
    await h.later(HOUR)
    await h.settle()
    assert sorted(m.person_id for m in hook(h).messages) == ["v1", "v2"]
    await h.send(event("demo", "v1", "purchase", h.clock.now()))
    await h.planned(3)  # v1's exit
    await h.later(24 * HOUR)
    await h.settle()
    assert sorted((m.person_id, m.step) for m in hook(h).messages) == [
        ("v1", 0),
        ("v2", 0),
        ("v2", 1),
    ]
    statuses = await h.statuses("cart-recovery")
    assert statuses["cancelled"] == [("v1", 1)]


async def test_transient_failures_are_retried_and_permanent_ones_go_dead(h: Harness) -> None:
    calls: dict[str, int] = {}

    def answer(m: Message) -> object:
        calls[m.person_id] = calls.get(m.person_id, 0) + 1
        if m.person_id == "v1" and calls["v1"] < 3:
            return DestinationUnavailable("http_429", status=429, retry_after=120)
        if m.person_id == "v2":
            return DestinationRejected("http_400", "bad request", status=400, response="nope")
        from leadback.destinations.base import Delivered

        return Delivered()

    await abandon(h, "v1", "v2")
    hook(h).answer = answer  # type: ignore[assignment]
    await h.later(HOUR)
    await h.settle()
    assert (await h.statuses("cart-recovery")) == {
        "failed": [("v2", 0)],
        "retrying": [("v1", 0)],
    }
    await h.later(60)  # before Retry-After: nothing
    await h.settle()
    assert calls["v1"] == 1
    for _ in range(3):
        await h.later(h.settings.dispatcher.backoff_max_s)
        await h.settle()
    assert calls["v1"] == 3
    statuses = await h.statuses("cart-recovery")
    assert statuses["sent"] == [("v1", 0)]
    dead = await read_topic(h.settings.kafka.bootstrap, h.settings.kafka.topic_dead)
    assert [(d["person_id"], d["reason"], d["http_status"], d["response"]) for d in dead] == [
        ("v2", "http_400", 400, "nope")
    ]


async def test_a_slow_failing_destination_does_not_delay_the_others(h: Harness) -> None:
    await h.apply_campaigns(
        CAMPAIGNS
        + """
  - id: slow-one
    site: demo
    audience: cart_abandoners
    steps: [{wait: 1h, destination: other}]
"""
    )
    other = h.dispatcher.book.channel("other")
    assert isinstance(other, FakeChannel)
    other.delay_s = 5.0
    other.answer = lambda m: DestinationUnavailable("http_503", status=503)
    people = [f"v{i}" for i in range(30)]
    await abandon(h, *people)
    h.clock.advance(HOUR)
    await h.engine.tick()
    started = asyncio.get_running_loop().time()
    await h.dispatcher.scheduler.run_pass()
    while len(hook(h).messages) < len(people):
        assert asyncio.get_running_loop().time() - started < 2.0, "the fast destination waited"
        await asyncio.sleep(0.02)
    assert not other.messages  # still stuck in its own call
    assert h.dispatcher.scheduler.backlog("other") == len(people)
