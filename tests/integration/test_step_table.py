"""The feed's steps as data answer what the steps written as SQL answer, on stored rows.

``step_table.StepTable`` tests every step through one lambda over constants; ``match_sql``
writes each step as its own expression (and stays the signal's identity). Events and filters
draw their values from one small pool, so thresholds and stored values meet often: equal
numbers, numbers written as strings, missing keys, booleans, nulls, fields set or empty.
"""

from __future__ import annotations

import itertools
from typing import Any, get_args

import orjson
from hypothesis import given
from hypothesis import strategies as st

from leadback.audiences.compiler import compile_rule
from leadback.audiences.engine import AudienceEngine
from leadback.audiences.event_tests import SignalTests
from leadback.audiences.predicates import match_sql
from leadback.audiences.rules import EventMatch, Filter, parse_audience
from leadback.audiences.signals import FEED_PREFIX, OLDER_FEED_LAYOUTS, feed_name, feed_sql
from leadback.audiences.step_table import StepTable
from leadback.clock import ManualClock
from leadback.store.client import ClickHouseStore
from tests.conftest import store_examples
from tests.integration.audience_kit import RecordingPublisher, encoded, event
from tests.integration.test_backfill import BUYERS, NOW
from tests.integration.test_event_tests import rule_steps, valid_filter

POOL: list[Any] = [0, 1, 99, 100, 101, 100.5, -0.0, "100", "1e2", "abc", "", True, False, None]
NUMBERS = [0, 1, 99, 100, 101, 100.5, -0.5]
KEYS = ["x", "y", "x.z"]
_ids = itertools.count()

pooled = st.sampled_from(POOL)
texts = st.sampled_from(["100", "abc", "", "1e2", "ab", "https://x.example/c"])


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    props: dict[str, Any] = draw(st.dictionaries(st.sampled_from(["x", "y"]), pooled, max_size=2))
    if draw(st.booleans()):
        props["x"] = {"z": draw(pooled)}
    e: dict[str, Any] = dict(
        event(
            "s",
            "v1",
            draw(st.sampled_from(["page_view", "product_view", "custom"])),
            1_800_000_000.0,
            properties=props,
            url=draw(st.one_of(st.none(), texts)),
        )
    )
    e["event_id"] = f"st{next(_ids)}"
    e["name"] = draw(st.one_of(st.none(), st.sampled_from(["video_play", "x"])))
    e["utm"] = {**e["utm"], "source": draw(st.one_of(st.none(), texts))}
    return e


@st.composite
def filters(draw: st.DrawFn) -> Filter:
    on: dict[str, Any] = (
        {"property": draw(st.sampled_from(KEYS))}
        if draw(st.booleans())
        else {"field": draw(st.sampled_from(["url", "utm.source", "name"]))}
    )
    op = draw(st.sampled_from(get_args(Filter.model_fields["op"].annotation)))
    if op in ("in", "not_in"):
        value: Any = draw(st.lists(pooled.filter(lambda v: v is not None), min_size=1, max_size=3))
    elif op == "exists":
        value = None
    elif op in ("gt", "gte", "lt", "lte"):
        value = draw(st.sampled_from(NUMBERS))
    elif op in ("contains", "starts_with"):
        value = draw(texts)
    else:
        value = draw(pooled.filter(lambda v: v is not None))
    return valid_filter({**on, "op": op, "value": value})


steps = rule_steps(filters(), 3)


async def _both(
    db: ClickHouseStore, batch: list[dict[str, Any]], tests: list[EventMatch]
) -> dict[str, tuple[list[int], list[int]]]:
    bodies = [orjson.dumps(e) for e in batch]
    await db.insert_json_rows("events", b"\n".join(bodies), dedup_token=batch[0]["event_id"])
    table = StepTable(tests)
    written = ", ".join(f"toUInt8({match_sql(m)})" for m in tests)
    rows = await db.query(
        f"SELECT event_id, [{written}], "
        f"arrayMap(i -> toUInt8({StepTable.test_sql('i')}), range(1, {len(tests) + 1})) "
        f"FROM (SELECT *, {table.columns()} FROM {db.database}.events "
        "WHERE event_id IN {ids:Array(String)})",
        {"ids": [e["event_id"] for e in batch]},
    )
    return {str(r[0]): (list(r[1]), list(r[2])) for r in rows}


@store_examples(150)
@given(batch=st.lists(events(), min_size=1, max_size=6), tests=st.lists(steps, min_size=1))
async def test_steps_as_data_answer_like_steps_as_sql(
    db: ClickHouseStore, batch: list[dict[str, Any]], tests: list[EventMatch]
) -> None:
    found = await _both(db, batch, tests)
    assert len(found) == len(batch)
    for event_id, (written, data) in found.items():
        assert written == data, (event_id, tests)


async def test_every_operator_at_its_boundary(db: ClickHouseStore) -> None:
    """Each operator on a property equal to, below and above its threshold, missing, and
    written as a string; and on a field."""
    values: list[Any] = [99, 100, 101, "100", "abc", None, True]
    batch = []
    for v in values:
        e = dict(
            event("s", "v1", "custom", 1_800_000_000.0, properties={} if v is None else {"x": v})
        )
        e["event_id"] = f"b{next(_ids)}"
        e["url"] = "" if v is None else str(v)
        batch.append(e)
    tests = [
        EventMatch.model_validate({"event": "custom", "where": [{**on, "op": op, "value": value}]})
        for on in ({"property": "x"}, {"field": "url"})
        for op, value in [
            ("eq", 100),
            ("ne", 100),
            ("gt", 100),
            ("gte", 100),
            ("lt", 100),
            ("lte", 100),
            ("eq", "100"),
            ("ne", "100"),
            ("in", [100, "abc"]),
            ("not_in", ["abc"]),
            ("contains", "10"),
            ("starts_with", "ab"),
            ("exists", None),
            ("eq", True),
        ]
    ]
    found = await _both(db, batch, tests)
    assert len(found) == len(values)
    for written, data in found.values():
        assert written == data
    # The boundaries were met: below, at and above the threshold answer differently.
    assert len({tuple(d) for _, d in found.values()}) >= 5


async def test_a_feed_of_an_older_layout_is_replaced_at_start(db: ClickHouseStore) -> None:
    """A database whose feed was made by the previous statement layout: the engine's start
    creates the new view and drops the old one, and an insert is fed once."""
    spec = parse_audience({"id": "buyers", "site": "shop", **BUYERS})
    signals = list(compile_rule(spec, {spec.id: spec}).signals)
    old = feed_name(signals, OLDER_FEED_LAYOUTS[-1])
    new = feed_name(signals)
    # The old view's statement: any feed of these signals (what matters is the name).
    await db.command(feed_sql(db.database, signals).replace(new, old))
    engine = AudienceEngine(db, RecordingPublisher(), clock=ManualClock(NOW))
    await engine.start()
    try:
        await engine.repository.put(spec)
        await engine.tick()
        views = await db.query(
            "SELECT name FROM system.tables WHERE database = {db:String} "
            "AND startsWith(name, {p:String})",
            {"db": db.database, "p": FEED_PREFIX},
        )
        assert [str(r[0]) for r in views] == [new]
        bought = event("shop", "v9", "purchase", NOW - 5)
        _, values = encoded([bought])
        await db.insert_json_rows("events", b"\n".join(values), dedup_token="once")
        rows = await db.query(
            f"SELECT sum(length(v)) FROM {db.database}.person_state WHERE visitor_id = 'v9'"
        )
        entries = SignalTests(signals).entries(orjson.loads(values[0]))
        assert len(entries) >= 1 and int(rows[0][0]) == len(entries)
    finally:
        await engine.close()
