"""The per-person signal state gives the same answers as the rules read over the raw events.

Random rules (every condition kind, windows, counts, filters, product-level audiences) and
random event histories: the evaluation statement reading ``person_signals`` (filled by the feed
view as events are stored, or by a backfill over stored events) returns exactly the rows —
members, products and due times — of the same statement computed from ``events``.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadback.audiences.backfill import SignalBackfill
from leadback.audiences.compiler import NEVER, compile_rule
from leadback.audiences.predicates import match_sql
from leadback.audiences.query import VersionedAudience, build_evaluation
from leadback.audiences.rules import (
    AllCond,
    AnyCond,
    AudienceSpec,
    DidCond,
    EventMatch,
    IdleCond,
    NotCond,
    SeenWithinCond,
    SequenceCond,
    ThenNotCond,
    parse_audience,
)
from leadback.audiences.signals import Signal
from leadback.store.client import ClickHouseStore
from leadback.store.migrations import migrate
from tests.integration.audience_kit import encoded, event

DAY = 86_400.0
T0 = 1_800_000_000.0
TYPES = ["page_view", "product_view", "add_to_cart", "purchase", "lead"]
_sites = itertools.count()

types = st.sampled_from(TYPES)
windows = st.sampled_from([None, "1h", "2d", "7d"])
filters = st.sampled_from(
    [
        [],
        [{"property": "price", "op": "gt", "value": 50}],
        [{"property": "category", "op": "eq", "value": "shoes"}],
        [{"property": "product_id", "op": "in", "value": ["p1", "p2"]}],
    ]
)


@st.composite
def did(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"event": draw(types), "where": draw(filters)}
    if (w := draw(windows)) is not None:
        body["within"] = w
    lo = draw(st.integers(0, 3))
    count: dict[str, int] = {"min": lo}
    if draw(st.booleans()):
        count["max"] = lo + draw(st.integers(0, 2))
    body["count"] = count
    return {"did": body}


@st.composite
def then_not(draw: st.DrawFn) -> dict[str, Any]:
    first: dict[str, Any] = {"event": draw(types)}
    if (w := draw(windows)) is not None:
        first["within"] = w
    body: dict[str, Any] = {"did": first, "then": {"event": draw(types), "where": draw(filters)}}
    if (w := draw(windows)) is not None:
        body["within"] = w
    return {"then_not": body}


@st.composite
def sequence(draw: st.DrawFn) -> dict[str, Any]:
    steps = [{"event": draw(types)} for _ in range(draw(st.integers(2, 3)))]
    body: dict[str, Any] = {"steps": steps}
    if (w := draw(windows)) is not None:
        body["within"] = w
    return {"sequence": body}


durations = st.sampled_from(["1h", "1d", "5d"])
leaves = st.one_of(
    did(),
    then_not(),
    sequence(),
    durations.map(lambda d: {"idle": d}),
    durations.map(lambda d: {"seen_within": d}),
)
conditions = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"all": xs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"any": xs}),
        inner.map(lambda x: {"not": x}),
    ),
    max_leaves=4,
)


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, str, float, dict[str, Any]]]:
    found = []
    for visitor in ("v1", "v2", "v3"):
        for _ in range(draw(st.integers(0, 24))):
            etype = draw(types)
            at = T0 + draw(st.integers(0, 20 * 24)) * 3600.0 + draw(st.integers(0, 59))
            props: dict[str, Any] = {}
            if etype != "page_view":
                props = {
                    "product_id": draw(st.sampled_from(["p1", "p2", "p3"])),
                    "price": draw(st.sampled_from([10, 60, 200])),
                    "category": draw(st.sampled_from(["shoes", "bags"])),
                }
            found.append((visitor, etype, at, props))
    return found


async def _rows(store: ClickHouseStore, sql: str, site: str, now: float) -> list[tuple[Any, ...]]:
    rows = await store.query(sql, {"site": site, "now": int(now * 1000)})
    return sorted((str(a), str(p), tuple(pr), int(d)) for a, p, pr, d in rows)


@pytest.fixture
async def db(store: ClickHouseStore) -> ClickHouseStore:
    await migrate(store)
    return store


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rules=st.lists(st.tuples(conditions, st.booleans()), min_size=1, max_size=3),
    history=histories(),
    fed=st.booleans(),
)
async def test_signal_state_answers_like_the_raw_events(
    db: ClickHouseStore,
    rules: list[tuple[dict[str, Any], bool]],
    history: list[tuple[str, str, float, dict[str, Any]]],
    fed: bool,
) -> None:
    site = f"s{next(_sites)}"
    specs: list[AudienceSpec] = [
        parse_audience(
            {"id": f"a{i}", "site": site, "rule": rule, **({"products": {}} if per_product else {})}
        )
        for i, (rule, per_product) in enumerate(rules)
    ]
    by_id = {s.id: s for s in specs}
    versioned = [VersionedAudience(s, 1) for s in specs]
    on_state = build_evaluation(db.database, versioned, by_id, incremental=False, materialize=fed)
    on_events = build_evaluation(db.database, versioned, by_id, incremental=False, source="events")
    backfill = SignalBackfill(db)
    signals = list(on_state.signals)
    if fed:  # the feed view sees the events as they are stored
        await backfill.install_feed(signals)
    _, values = encoded([event(site, v, t, at, properties=p) for v, t, at, p in history])
    if values:
        await db.insert_json_rows(
            "events", b"\n".join(values), dedup_token=orjson.dumps([site, fed]).decode()
        )
    if not fed:  # a backfill over the events already stored
        await backfill.fill(site, signals, since_ms=int(T0 * 1000), rows_per_range=5)
    for now in (T0 + 2 * DAY, T0 + 9.5 * DAY, T0 + 30 * DAY):
        found = await _rows(db, on_state.members, site, now)
        assert found == await _rows(db, on_events.members, site, now)
        # And both are what the rules say, read the slow way in Python.
        members = {(a, p, pr) for a, p, pr, _ in found if a}
        assert members == _reference(specs, history, int(now * 1000))


Event = tuple[int, str, dict[str, Any]]  # (time ms, type, properties)


def _matches(m: EventMatch, e: Event) -> bool:
    if e[1] not in m.event:
        return False
    for f in m.where:
        value = e[2].get(f.property or "")
        if value is None:
            return False
        if f.op == "gt" and not (isinstance(value, int | float) and value > float(f.value)):  # type: ignore[arg-type]
            return False
        if f.op == "eq" and str(value) != str(f.value):
            return False
        if f.op == "in" and str(value) not in [str(v) for v in f.value]:  # type: ignore[union-attr]
            return False
    return True


def _times(m: EventMatch, events: list[Event], now: int, within: int | None = None) -> list[int]:
    lo = -1 if within is None else now - within
    return sorted(e[0] for e in events if lo < e[0] <= now and _matches(m, e))


def _holds(c: Any, events: list[Event], now: int) -> bool:
    """A rule over one person's (or one product's) events, as the docs define it."""
    if isinstance(c, DidCond):
        n = len(_times(c.did, events, now, c.did.within))
        return n >= c.did.count.min and (c.did.count.max is None or n <= c.did.count.max)
    if isinstance(c, ThenNotCond):
        tn = c.then_not
        first = _times(tn.did, events, now, tn.did.within)
        then = _times(tn.then, events, now)
        if len(first) < max(tn.did.count.min, 1):
            return False
        if tn.within is None:
            return max(first) > max(then, default=0)
        w = tn.within
        return any(x <= now - w and not any(x <= y <= x + w for y in then) for x in first)
    if isinstance(c, SequenceCond):
        steps = [_times(m, events, now) for m in c.sequence.steps]
        return _greedy(steps, c.sequence.within, now)
    if isinstance(c, IdleCond | SeenWithinCond):
        last = max(e[0] for e in events)
        if isinstance(c, IdleCond):
            return last <= now - c.idle
        return last > now - c.seen_within
    if isinstance(c, AllCond):
        return all(_holds(x, events, now) for x in c.all)
    if isinstance(c, AnyCond):
        return any(_holds(x, events, now) for x in c.any)
    if isinstance(c, NotCond):
        return not _holds(c.not_, events, now)
    raise AssertionError(c)


def _reference(
    specs: list[AudienceSpec], history: list[tuple[str, str, float, dict[str, Any]]], now: int
) -> set[tuple[str, str, tuple[str, ...]]]:
    by_visitor: dict[str, list[Event]] = {}
    for visitor, etype, at, props in history:
        by_visitor.setdefault(visitor, []).append((int(at * 1000), etype, props))
    found = set()
    for spec in specs:
        for visitor, events in by_visitor.items():
            if spec.products is None:
                if _holds(spec.rule, events, now):
                    found.add((spec.id, visitor, ()))
                continue
            products = sorted({str(e[2]["product_id"]) for e in events if "product_id" in e[2]})
            good = tuple(
                p
                for p in products
                if _holds(spec.rule, [e for e in events if e[2].get("product_id") == p], now)
            )
            if good:
                found.add((spec.id, visitor, good))
    return found


def _greedy(steps: list[list[int]], within: int | None, now: int) -> bool:
    """The sequence rule as the docs define it, step by step in Python."""
    arrays = [sorted(t for t in ts if t <= now) for ts in steps]
    for start in arrays[0]:
        prev = start
        for arr in arrays[1:]:
            prev = min((v for v in arr if v > prev), default=NEVER)
        if prev < NEVER and (within is None or prev - start <= within):
            return True
    return False


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(st.lists(st.integers(0, 40), max_size=12), min_size=2, max_size=4),
    within=st.one_of(st.none(), st.integers(1, 20)),
    now=st.integers(10, 45),
)
async def test_sequences_match_the_greedy_definition(
    db: ClickHouseStore, steps: list[list[int]], within: int | None, now: int
) -> None:
    types = ["page_view", "product_view", "add_to_cart", "checkout"][: len(steps)]
    body: dict[str, Any] = {"steps": [{"event": t} for t in types]}
    if within is not None:
        body["within"] = f"{within}s"
    spec = parse_audience({"id": "seq", "site": "s", "rule": {"sequence": body}})
    rule = compile_rule(spec, {})
    columns = {
        Signal("s", match_sql(EventMatch(event=[t])), None, times=True).column: ts
        for t, ts in zip(types, steps, strict=True)
    }
    bindings = ", ".join(f"{{{c}:Array(Int64)}} AS {c}" for c in columns)
    rows = await db.query(
        f"WITH {bindings} SELECT toUInt8({rule.expression})",
        {**{c: [t * 1000 for t in ts] for c, ts in columns.items()}, "now": now * 1000},
    )
    ms = [[t * 1000 for t in ts] for ts in steps]
    assert bool(rows[0][0]) == _greedy(ms, None if within is None else within * 1000, now * 1000)
