"""The example audiences of the docs, evaluated by the real ClickHouse engine with a set clock.

Events are written to ClickHouse as the segmenter writes them, then handed to the engine as a
batch; the timer pass runs with a manual clock, so "one hour later" takes no time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from leadback.audiences.engine import AudienceEngine
from leadback.audiences.rules import parse_audiences
from leadback.clock import ManualClock
from leadback.events import CanonicalEvent, format_ts
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate
from tests.integration.audience_kit import RecordingPublisher, encoded, event

pytestmark = pytest.mark.integration

H = 3600.0
D = 86_400.0

EXAMPLES = """
audiences:
  - id: cart_abandoners
    site: shop
    name: Cart abandoners
    rule:
      all:
        - then_not:
            did: {event: add_to_cart, within: 7d}
            then: {event: purchase}
        - idle: 1h
  - id: product_viewers
    site: shop
    products: {property: product_id}
    rule:
      all:
        - did: {event: product_view, count: {min: 2}, within: 3d}
        - not: {did: {event: purchase}}
  - id: lapsed_customers
    site: shop
    rule:
      all:
        - did: {event: purchase}
        - idle: 30d
  - id: purchasers_30d
    site: shop
    rule:
      did: {event: purchase, within: 30d}
  - id: high_intent
    site: shop
    rule:
      all:
        - did:
            event: checkout
            within: 1d
            where: [{property: value, op: gt, value: 100}]
        - not: {in_audience: purchasers_30d}
  - id: lead_form_no_submit
    site: shop
    rule:
      all:
        - did: {event: page_view, where: [{field: url, op: contains, value: /contact}]}
        - not: {did: {event: lead}}
"""


class Harness:
    def __init__(
        self,
        store: ClickHouseStore,
        engine: AudienceEngine,
        clock: ManualClock,
        publisher: RecordingPublisher,
    ) -> None:
        self.store = store
        self.engine = engine
        self.clock = clock
        self.publisher = publisher
        self.batches = 0

    @property
    def now(self) -> float:
        return self.clock.now()

    async def send(self, *events: CanonicalEvent) -> None:
        """Insert like the segmenter does, then evaluate the batch."""
        self.batches += 1
        token = f"test-batch-{self.batches}"
        keys, values = encoded(events)
        await self.store.insert_json_rows("events", b"\n".join(values), dedup_token=token)
        await self.engine.on_batch(keys, values, token)

    async def later(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.engine.tick()

    async def apply(self, text: str) -> None:
        for spec in parse_audiences(yaml.safe_load(text)):
            await self.engine.repository.put(spec)
        await self.engine.tick()

    def changes(self, audience: str) -> list[tuple[str, str, int]]:
        return [
            (r["visitor_id"], r["change"], r["version"])
            for r in self.publisher.records
            if r["audience_id"] == audience
        ]

    def last(self, audience: str) -> dict[str, Any]:
        return dict([r for r in self.publisher.records if r["audience_id"] == audience][-1])

    async def members(self, audience: str) -> dict[str, list[str]]:
        rows = await self.store.query(
            f"SELECT person_id, products FROM {self.store.database}.memberships FINAL "
            "WHERE audience_id = {a:String} AND state = 'in'",
            {"a": audience},
        )
        return {str(r[0]): list(r[1]) for r in rows}


@pytest.fixture
async def h(store: ClickHouseStore) -> AsyncIterator[Harness]:
    await migrate(store)
    clock = ManualClock(1_800_000_000.0)
    publisher = RecordingPublisher()
    engine = AudienceEngine(store, publisher, clock=clock)
    await engine.start()
    harness = Harness(store, engine, clock, publisher)
    await harness.apply(EXAMPLES)
    yield harness


async def test_cart_abandoner_enters_an_hour_after_the_cart_and_exits_on_purchase(
    h: Harness,
) -> None:
    t = h.now
    await h.send(
        event("shop", "ann", "add_to_cart", t, properties={"product_id": "p1"}),
        event("shop", "bob", "add_to_cart", t),
        event("shop", "bob", "purchase", t + 1),
        event("shop", "cid", "page_view", t),
    )
    assert await h.members("cart_abandoners") == {}
    await h.later(30 * 60)  # not idle long enough yet
    assert h.changes("cart_abandoners") == []
    await h.later(30 * 60)  # one hour: the timer pass finds ann due
    assert h.changes("cart_abandoners") == [("ann", "enter", 1)]
    assert set(await h.members("cart_abandoners")) == {"ann"}

    await h.send(event("shop", "ann", "purchase", h.now))
    assert h.changes("cart_abandoners")[-1] == ("ann", "exit", 2)
    exit_record = h.last("cart_abandoners")
    assert exit_record["reason"] == "no_longer_qualifies"
    assert await h.members("cart_abandoners") == {}


async def test_cart_abandoner_window_of_seven_days(h: Harness) -> None:
    t = h.now
    await h.send(event("shop", "dan", "add_to_cart", t))
    await h.later(2 * H)
    assert h.changes("cart_abandoners") == [("dan", "enter", 1)]
    await h.later(7 * D)  # the cart leaves the 7-day window: the timer exits dan
    assert h.changes("cart_abandoners") == [("dan", "enter", 1), ("dan", "exit", 2)]


async def test_windows_are_measured_on_event_time_not_arrival(h: Harness) -> None:
    # Both carts arrive now; one was queued offline for eight days, one happened two hours ago.
    late = event("shop", "late", "add_to_cart", h.now)
    late["occurred_at"] = format_ts(h.now - 8 * D)
    recent = event("shop", "recent", "add_to_cart", h.now)
    recent["occurred_at"] = format_ts(h.now - 2 * H)
    await h.send(late, recent)
    # Idle for an hour already, cart inside the 7-day window: in at once. The late cart is
    # outside the window: never in.
    assert h.changes("cart_abandoners") == [("recent", "enter", 1)]
    await h.later(2 * H)
    assert h.changes("cart_abandoners") == [("recent", "enter", 1)]


async def test_product_viewers_carry_the_products_viewed_twice_and_not_bought(
    h: Harness,
) -> None:
    t = h.now
    await h.send(
        event("shop", "eve", "product_view", t - 2 * H, properties={"product_id": "p1"}),
        event("shop", "eve", "product_view", t - 1 * H, properties={"product_id": "p1"}),
        event("shop", "eve", "product_view", t - 1 * H, properties={"product_id": "p2"}),
        event("shop", "eve", "product_view", t - 3 * H, properties={"product_id": 33}),
        event("shop", "eve", "product_view", t - 2 * H, properties={"product_id": 33}),
        event("shop", "eve", "purchase", t, properties={"items": [{"product_id": 33, "qty": 1}]}),
        event("shop", "fay", "product_view", t, properties={"product_id": "p2"}),
    )
    assert await h.members("product_viewers") == {"eve": ["p1"]}
    enter = [r for r in h.publisher.records if r["audience_id"] == "product_viewers"]
    assert [(r["visitor_id"], r["change"], r["products"]) for r in enter] == [
        ("eve", "enter", ["p1"])
    ]
    await h.send(event("shop", "eve", "product_view", h.now, properties={"product_id": "p2"}))
    assert await h.members("product_viewers") == {"eve": ["p1", "p2"]}
    assert h.last("product_viewers")["change"] == "update"
    assert h.last("product_viewers")["products"] == ["p1", "p2"]
    await h.later(3 * D)  # both products' views leave the 3-day window
    assert await h.members("product_viewers") == {}
    assert h.changes("product_viewers")[-1] == ("eve", "exit", 3)


async def test_lapsed_customers_after_thirty_quiet_days(h: Harness) -> None:
    t = h.now
    await h.send(event("shop", "gus", "purchase", t), event("shop", "hal", "page_view", t))
    await h.later(29 * D)
    assert h.changes("lapsed_customers") == []
    await h.later(1 * D)
    assert h.changes("lapsed_customers") == [("gus", "enter", 1)]
    await h.send(event("shop", "gus", "page_view", h.now))
    assert h.changes("lapsed_customers")[-1] == ("gus", "exit", 2)


async def test_high_intent_checkout_over_100_not_a_recent_purchaser(h: Harness) -> None:
    t = h.now
    await h.send(
        event("shop", "ivy", "checkout", t, properties={"value": 150.0, "currency": "EUR"}),
        event("shop", "jon", "checkout", t, properties={"value": 50}),
        event("shop", "kim", "checkout", t, properties={"value": 250}),
        event("shop", "kim", "purchase", t - D, properties={"value": 80}),
    )
    assert set(await h.members("high_intent")) == {"ivy"}
    assert set(await h.members("purchasers_30d")) == {"kim"}
    await h.later(31 * D)  # kim's purchase is older than 30 days, but the checkout too (1 d)
    assert await h.members("high_intent") == {}
    await h.send(event("shop", "kim", "checkout", h.now, properties={"value": 101}))
    assert set(await h.members("high_intent")) == {"kim"}


async def test_lead_form_visitors_who_never_submitted(h: Harness) -> None:
    t = h.now
    await h.send(
        event("shop", "lea", "page_view", t, url="https://shop.example/contact?x=1"),
        event("shop", "max", "page_view", t - 5, url="https://shop.example/contact"),
        event("shop", "max", "lead", t),
        event("shop", "ned", "page_view", t, url="https://shop.example/home"),
    )
    assert set(await h.members("lead_form_no_submit")) == {"lea"}
    await h.send(event("shop", "lea", "lead", h.now))
    assert await h.members("lead_form_no_submit") == {}


async def test_bots_and_unrecognised_visitors_are_never_members(h: Harness) -> None:
    t = h.now
    await h.send(
        event("shop", "bot1", "page_view", t, url="https://shop.example/contact", bot=True),
        event("shop", None, "page_view", t, url="https://shop.example/contact"),
        event("shop", "vic", "page_view", t, url="https://shop.example/contact"),  # evaluated
    )
    assert set(await h.members("lead_form_no_submit")) == {"vic"}


async def test_a_rule_change_re_evaluates_members_with_new_versions(h: Harness) -> None:
    t = h.now
    await h.send(
        event("shop", "oli", "page_view", t, url="https://shop.example/contact"),
        event("shop", "pam", "page_view", t, url="https://shop.example/contact/sales"),
    )
    assert set(await h.members("lead_form_no_submit")) == {"oli", "pam"}
    await h.apply(
        """
id: lead_form_no_submit
site: shop
rule:
  all:
    - did: {event: page_view, where: [{field: url, op: contains, value: /contact/sales}]}
    - not: {did: {event: lead}}
"""
    )
    assert set(await h.members("lead_form_no_submit")) == {"pam"}
    last = h.last("lead_form_no_submit")
    assert (last["visitor_id"], last["change"], last["reason"], last["version"]) == (
        "oli",
        "exit",
        "rule_changed",
        2,
    )
    assert last["audience_version"] == 2
    stored = await h.engine.repository.get("shop", "lead_form_no_submit")
    assert stored.version == 2


async def test_a_rule_true_without_events_takes_each_visitor_at_their_first_event(
    h: Harness,
) -> None:
    # "Never bought": true for a visitor with no purchase. A round of page views alone must
    # bring its visitors in, whatever else the round holds (it used to take them only when
    # some purchase, anyone's, was in the same round).
    await h.apply(
        """
id: never_bought
site: shop
rule:
  not: {did: {event: purchase}}
"""
    )
    await h.send(event("shop", "rae", "page_view", h.now))
    assert set(await h.members("never_bought")) == {"rae"}
    await h.send(event("shop", "sol", "page_view", h.now), event("shop", "rae", "purchase", h.now))
    assert set(await h.members("never_bought")) == {"sol"}


async def test_deleting_an_audience_exits_every_member(h: Harness) -> None:
    await h.send(event("shop", "quin", "page_view", h.now, url="https://x.example/contact"))
    assert set(await h.members("lead_form_no_submit")) == {"quin"}
    await h.engine.repository.delete("shop", "lead_form_no_submit")
    await h.engine.tick()
    last = h.last("lead_form_no_submit")
    assert (last["visitor_id"], last["change"], last["reason"]) == (
        "quin",
        "exit",
        "audience_deleted",
    )


async def test_cart_on_the_phone_purchase_on_the_laptop_is_no_abandoner(h: Harness) -> None:
    t = h.now
    # Phone: anonymous cart. Laptop: signs in as user 42 and buys.
    await h.send(event("shop", "phone", "add_to_cart", t))
    await h.send(
        event("shop", "laptop", "identify", t + 60, user_id="42"),
        event("shop", "laptop", "purchase", t + 120, user_id="42"),
    )
    await h.later(2 * H)
    assert h.changes("cart_abandoners") == [("phone", "enter", 1)]
    # The phone signs in too: both devices are one person, who bought after the cart.
    await h.send(event("shop", "phone", "identify", h.now, user_id="42"))
    assert await h.members("cart_abandoners") == {}
    assert h.changes("cart_abandoners")[-1] == ("phone", "exit", 2)
    persons = await h.engine.identity.persons_of("shop", ["phone", "laptop", "u:42"])
    assert persons == {"phone": "u:42", "laptop": "u:42", "u:42": "u:42"}


async def test_alias_merges_two_users_into_one_person(h: Harness) -> None:
    t = h.now
    await h.send(
        event("shop", "dev1", "add_to_cart", t, user_id="old-7"),
        event("shop", None, "purchase", t + 5, user_id="new-9"),
    )
    await h.later(2 * H)
    assert [c[:2] for c in h.changes("cart_abandoners")] == [("u:old-7", "enter")]
    alias: Any = event("shop", None, "alias", h.now, user_id="new-9")
    alias["properties"] = {"previous_id": "old-7"}
    await h.send(alias)
    assert await h.members("cart_abandoners") == {}
    persons = await h.engine.identity.persons_of("shop", ["dev1", "u:old-7"])
    assert persons == {"dev1": "u:new-9", "u:old-7": "u:new-9"}


async def test_membership_ttl_expires_and_does_not_re_enter_until_requalified(
    h: Harness,
) -> None:
    await h.apply(
        """
id: contact_page_24h
site: shop
ttl: 1d
rule:
  did: {event: page_view, where: [{field: url, op: contains, value: /contact}]}
"""
    )
    await h.send(event("shop", "rae", "page_view", h.now, url="https://x.example/contact"))
    assert h.changes("contact_page_24h") == [("rae", "enter", 1)]
    await h.later(D)
    assert h.changes("contact_page_24h") == [("rae", "enter", 1), ("rae", "exit", 2)]
    assert h.last("contact_page_24h")["reason"] == "ttl_expired"
    evaluations = h.engine.stats.evaluations
    await h.send(event("shop", "rae", "page_view", h.now, url="https://x.example/contact"))
    assert h.engine.stats.evaluations > evaluations  # the batch was evaluated, and yet:
    assert len(h.changes("contact_page_24h")) == 2  # expired stays expired while it qualifies


async def test_erasure_removes_events_memberships_and_emits_exits(h: Harness) -> None:
    await h.send(
        event("shop", "sam", "page_view", h.now, url="https://x.example/contact"),
        event("shop", "sam", "identify", h.now, user_id="u-sam", traits={"email_sha256": "ab"}),
        event("shop", "tia", "add_to_cart", h.now),
    )
    assert set(await h.members("lead_form_no_submit")) == {"u:u-sam"}
    erased = await h.engine.erase("shop", visitor_id=None, user_id="u-sam")
    assert erased.exits == 1
    assert set(erased.visitors) == {"sam", "u:u-sam"}
    last = h.last("lead_form_no_submit")
    assert (last["visitor_id"], last["change"], last["reason"]) == ("u:u-sam", "exit", "erased")
    db = h.store.database
    for table in ("events", "contacts", "person_signals", "person_state"):
        rows = await h.store.query(f"SELECT count() FROM {db}.{table} WHERE visitor_id = 'sam'")
        assert rows[0][0] == 0, table
    kept = await h.store.query(f"SELECT count() FROM {db}.person_state WHERE visitor_id = 'tia'")
    assert kept[0][0] == 1  # the other visitors' state stays
    gone = await h.store.query(
        f"SELECT count() FROM {db}.person_memberships WHERE person_id = 'u:u-sam'"
    )
    assert gone[0][0] == 0
    assert await h.members("lead_form_no_submit") == {}


async def test_replayed_batch_changes_nothing_twice(h: Harness) -> None:
    e = event("shop", "tom", "page_view", h.now, url="https://x.example/contact")
    await h.send(e)
    keys, values = encoded([e])
    await h.engine.on_batch(keys, values, "test-batch-1")  # the same batch again
    assert h.changes("lead_form_no_submit") == [("tom", "enter", 1)]


async def test_timer_pass_is_cheap_when_nothing_is_due(h: Harness) -> None:
    await h.send(event("shop", "uma", "add_to_cart", h.now))
    before = h.engine.stats.evaluations
    await h.later(60)
    await h.later(60)
    assert h.engine.stats.evaluations == before  # nothing due: no evaluation ran
    await h.later(H)  # idle for an hour: now uma is due, and the pass evaluates
    assert h.engine.stats.evaluations > before
    assert h.changes("cart_abandoners") == [("uma", "enter", 1)]


async def test_while_rounds_run_the_next_round_evaluates_the_due_persons(h: Harness) -> None:
    """The timer of a running segmenter hands the persons it finds due to the next round (one
    evaluation instead of two); with no round for a while it evaluates them itself."""
    await h.send(event("shop", "uma", "add_to_cart", h.now))
    h.clock.advance(H + 60)  # uma is due: idle for an hour
    await h.send(event("shop", "vic", "page_view", h.now))  # a round just ran
    await h.engine.tick(hand_over=True)
    assert h.changes("cart_abandoners") == []  # handed over, not evaluated apart
    await h.send(event("shop", "wes", "page_view", h.now))
    assert h.changes("cart_abandoners") == [("uma", "enter", 1)]
    tokens = await h.store.query(
        f"SELECT token FROM {h.store.database}.audience_changes "
        "WHERE audience_id = 'cart_abandoners' AND person_id = 'uma'"
    )
    assert [str(r[0]) for r in tokens] == [f"test-batch-{h.batches}"]  # by that round

    # No round for longer than a timer interval: the pass evaluates what it finds itself.
    await h.send(event("shop", "xia", "add_to_cart", h.now))
    h.clock.advance(H + 60)
    await h.engine.tick(hand_over=True)
    assert ("xia", "enter", 1) in h.changes("cart_abandoners")


async def test_one_round_evaluates_every_site_apart(h: Harness) -> None:
    """A batch of two sites is read in one statement, and nothing crosses between them: the same
    visitor id on both, a sign-in on one."""
    await h.apply(
        """
audiences:
  - id: purchasers_30d
    site: blog
    rule: {did: {event: purchase, within: 30d}}
  - id: readers
    site: blog
    rule: {did: {event: page_view}}
"""
    )
    t = h.now
    await h.send(
        event("shop", "laptop", "identify", t - 4, user_id="42"),
        event("shop", "laptop", "purchase", t - 3, user_id="42"),
        event("blog", "laptop", "page_view", t - 2),
        event("blog", "other", "purchase", t - 1),
    )
    rows = await h.store.query(
        f"SELECT site_id, audience_id, person_id FROM {h.store.database}.memberships FINAL "
        "WHERE state = 'in' AND audience_id IN ('purchasers_30d', 'readers')"
    )
    assert sorted(tuple(map(str, r)) for r in rows) == [
        ("blog", "purchasers_30d", "other"),
        ("blog", "readers", "laptop"),
        ("shop", "purchasers_30d", "u:42"),
    ]


async def test_identity_links_and_timer_pass_of_several_sites_at_once(h: Harness) -> None:
    """One round links visitors on two sites (the same ids on both, each merged into its own
    site's user) and saves each site's traits; one timer pass then exits both sites' members."""
    await h.apply(
        """
audiences:
  - id: blog_readers_1h
    site: blog
    rule: {did: {event: page_view, within: 1h}}
  - id: shop_viewers_1h
    site: shop
    rule: {did: {event: page_view, within: 1h}}
"""
    )
    t = h.now
    await h.send(
        event("shop", "laptop", "page_view", t - 5),
        event("blog", "laptop", "page_view", t - 5),
        event("blog", "phone", "page_view", t - 5),
        event("shop", "laptop", "identify", t - 4, user_id="42", traits={"email_sha256": "aa"}),
        event("blog", "laptop", "identify", t - 4, user_id="7", traits={"email_sha256": "bb"}),
        event("blog", "phone", "page_view", t - 3, user_id="7"),
    )
    assert set(await h.members("shop_viewers_1h")) == {"u:42"}
    assert set(await h.members("blog_readers_1h")) == {"u:7"}
    persons = await h.engine.identity.persons_of_sites(
        {"shop": ["laptop"], "blog": ["laptop", "phone"]}
    )
    assert persons == {"shop": {"laptop": "u:42"}, "blog": {"laptop": "u:7", "phone": "u:7"}}
    rows = await h.store.query(
        f"SELECT site_id, visitor_id, JSONExtractString(argMax(traits, updated_at), "
        f"'email_sha256') FROM {h.store.database}.contacts GROUP BY site_id, visitor_id "
        "ORDER BY site_id"
    )
    assert [tuple(map(str, r)) for r in rows] == [
        ("blog", "laptop", "bb"),
        ("shop", "laptop", "aa"),
    ]
    await h.later(2 * H)  # both windows close: one pass finds both sites' persons due
    assert h.changes("shop_viewers_1h")[-1][:2] == ("u:42", "exit")
    assert h.changes("blog_readers_1h")[-1][:2] == ("u:7", "exit")


async def test_a_round_of_thousands_of_visitors(h: Harness) -> None:
    """Their ids are written into the round's statements: far past ClickHouse's default limit
    on a query's text (256 KiB)."""
    t = h.now
    visitors = [f"visitor-{i:05d}-{'x' * 40}" for i in range(8_000)]
    await h.send(*(event("shop", v, "purchase", t - 60) for v in visitors))
    assert sorted(await h.members("purchasers_30d")) == visitors


async def test_a_key_value_membership_a_crash_left_behind_is_copied_by_the_sweep(
    h: Harness,
) -> None:
    """Killed after a memberships insert and before its view wrote ``person_memberships`` (the
    change logged, not published): the sweep copies the persons of unpublished changes from
    ``memberships``, so the next evaluation does not issue the version again."""
    contact = "https://x.example/contact"
    await h.send(event("shop", "kim", "page_view", h.now, url=contact))
    assert h.changes("lead_form_no_submit") == [("kim", "enter", 1)]
    db = h.store.database
    token = (await h.store.query(f"SELECT token FROM {db}.audience_changes"))[0][0]
    await h.store.command(f"DELETE FROM {db}.person_memberships WHERE person_id = 'kim'")
    await h.store.command(
        f"DELETE FROM {db}.audience_changes_published WHERE token = {{t:String}}", {"t": token}
    )
    await h.engine._outbox.sweep()  # as at the restarted process's start
    await h.send(event("shop", "kim", "page_view", h.now + 1, url=contact))
    # The republished enter, and no second decision about kim.
    assert h.changes("lead_form_no_submit") == [("kim", "enter", 1)] * 2
    assert len({r["at"] for r in h.publisher.records}) == 1
