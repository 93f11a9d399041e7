"""Rounds and timer passes keep every audience as its rules say over the raw events.

Whatever the rules (every condition kind, person- and product-level) and the rounds of events
(several visitors and types, hours or days apart), after each round and the timer pass of the
same moment, every audience holds exactly the members the rules give over all the events so
far (:func:`tests.audience_reference.reference`). It found that a rule holding for a person
with no events at all (``not`` a purchase) was entered by a visitor only when someone else's
event of the rule's types happened to be in the same round.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from leadback.audiences.engine import AudienceEngine
from leadback.audiences.rules import parse_audience
from leadback.clock import ManualClock
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate
from tests.audience_reference import reference, rule_conditions, types
from tests.conftest import store_examples
from tests.integration.audience_kit import RecordingPublisher, encoded, event

T0 = 1_800_000_000.0
_sites = itertools.count()

conditions = rule_conditions(windows=["1h", "2d"], durations=["1h", "1d"], max_leaves=3)
properties = st.fixed_dictionaries(
    {
        "product_id": st.sampled_from(["p1", "p2"]),
        "price": st.sampled_from([10, 60, 200]),
        "category": st.sampled_from(["shoes", "bags"]),
    }
)
rounds = st.lists(
    st.tuples(
        st.sampled_from([0, 600, 3600, 5 * 3600, 30 * 3600]),  # seconds since the last round
        st.lists(
            st.tuples(st.sampled_from(["v1", "v2", "v3"]), types, properties),
            min_size=1,
            max_size=5,
        ),
    ),
    min_size=1,
    max_size=5,
)


async def _members(db: ClickHouseStore, site: str) -> set[tuple[str, str, tuple[str, ...]]]:
    rows = await db.query(
        f"SELECT audience_id, person_id, products FROM {db.database}.memberships FINAL "
        "WHERE site_id = {s:String} AND state = 'in'",
        {"s": site},
    )
    return {(str(a), str(p), tuple(pr)) for a, p, pr in rows}


@store_examples(25)
@given(
    rules=st.lists(st.tuples(conditions, st.booleans()), min_size=2, max_size=4),
    played=rounds,
)
async def test_rounds_and_due_passes_keep_every_audience_as_the_rules_say(
    db: ClickHouseStore,
    rules: list[tuple[dict[str, Any], bool]],
    played: list[tuple[int, list[tuple[str, str, dict[str, Any]]]]],
) -> None:
    await migrate(db)
    n = next(_sites)
    site = f"pt{n}"
    specs = [
        parse_audience(
            {"id": f"a{i}", "site": site, "rule": rule, **({"products": {}} if per_product else {})}
        )
        for i, (rule, per_product) in enumerate(rules)
    ]
    # Each example at its own moments: a timer pass's writes are named after its time, and
    # two examples' passes at the same millisecond would be one write to the store.
    clock = ManualClock(T0 + n * 30 * 86_400)
    engine = AudienceEngine(db, RecordingPublisher(), clock=clock)
    for spec in specs:  # stored first: the start brings them live
        await engine.repository.put(spec)
    await engine.start()
    try:
        await engine.tick()
        history: list[tuple[str, str, float, dict[str, Any]]] = []
        for k, (gap, events) in enumerate(played):
            clock.advance(gap)
            now = clock.now()
            # Events of the round's moment; page views carry no product.
            sent = [(v, t, {} if t == "page_view" else p) for v, t, p in events]
            history += [(v, t, now, p) for v, t, p in sent]
            keys, values = encoded([event(site, v, t, now, properties=p) for v, t, p in sent])
            token = f"{site}-round-{k}"  # as the segmenter: the insert, then the round
            await db.insert_json_rows("events", b"\n".join(values), dedup_token=token)
            await engine.on_batch(keys, values, token)
            await engine.tick()  # the timer pass of this moment: the due persons
            expected = reference(specs, history, int(now * 1000))
            assert await _members(db, site) == expected, f"after round {k}"
    finally:
        await engine.close()
