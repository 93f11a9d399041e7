"""The per-person signal state gives the same answers as the rules read over the raw events.

Random rules (every condition kind, windows, counts, filters, product-level audiences) and
random event histories: the evaluation statement reading ``person_state`` (filled by the feed
view as events are stored, or merged from a backfill over stored events) returns exactly the rows —
members, products and due times — of the same statement computed from ``events``.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from leadback.audiences.backfill import SignalBackfill
from leadback.audiences.compiler import compile_rule
from leadback.audiences.predicates import match_sql
from leadback.audiences.program import EvaluationProgram, build_program
from leadback.audiences.query import VersionedAudience, build_evaluation
from leadback.audiences.rules import (
    AudienceSpec,
    EventMatch,
    parse_audience,
)
from leadback.audiences.signals import Signal
from leadback.audiences.state_read import (
    STATE_WIDTH,
    PersonStates,
    group_states,
    keys_sql,
    site_params,
    state_keys,
    state_sql,
)
from leadback.store.client import ClickHouseStore
from leadback.store.literals import string_pairs
from tests.audience_reference import greedy, reference, rule_conditions, types
from tests.conftest import store_examples
from tests.integration.audience_kit import encoded, event

DAY = 86_400.0
T0 = 1_800_000_000.0
_sites = itertools.count()

conditions = rule_conditions(windows=["1h", "2d", "7d"], durations=["1h", "1d", "5d"])


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


@store_examples(60)
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
    program = build_program(db.database, versioned, by_id)
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
    # Moments on a window's edge too: an event exactly 1h or 2d old.
    edges = [history[0][2] + 3600, history[-1][2] + 2 * DAY] if history else []
    for now in (T0 + 2 * DAY, T0 + 9.5 * DAY, T0 + 30 * DAY, *edges):
        found = await _rows(db, on_state.members, site, now)
        assert found == await _rows(db, on_events.members, site, now)
        # And both are what the rules say, read the slow way in Python.
        members = {(a, p, pr) for a, p, pr, _ in found if a}
        assert members == reference(specs, history, int(now * 1000))
        # The engine's way: the fixed state statement, the rules as Python functions.
        dues = {(p, d) for a, p, _, d in found if not a}
        assert await _program_answer(db, program, site, now) == (members, dues)


async def _program_answer(
    store: ClickHouseStore, program: EvaluationProgram, site: str, now: float
) -> tuple[set[tuple[str, str, tuple[str, ...]]], set[tuple[str, int]]]:
    at = int(now * 1000)
    params = {
        **site_params({site: program.params}),
        "now": at,
        "since": 0,
    }
    persons = [(site, v) for v in ("v1", "v2", "v3")]
    found = await store.query(keys_sql(store.database, string_pairs(persons)))
    sql = state_sql(store.database, state_keys(persons, found))
    columns = await store.query_columns(sql, params, width=STATE_WIDTH)
    states = group_states(zip(*columns, strict=True)).get(site, PersonStates())
    members = {(a, p, pr) for (a, p), pr in program.members(states, at).items()}
    return members, set(program.dues(states).items())


@store_examples(150)
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
    assert bool(rows[0][0]) == greedy(ms, None if within is None else within * 1000, now * 1000)


async def test_the_feed_of_many_sites_writes_what_each_signal_alone_would(
    db: ClickHouseStore,
) -> None:
    """Sites sharing predicates (each written once in the feed), two product keys, a predicate
    kept as times on one site and as latest time on another: what the feed stores per visitor is
    what a statement per signal, with nothing shared, computes from the events."""
    sites = ["fa", "fb", "fc"]
    matches = [
        EventMatch(event=["add_to_cart"]),
        EventMatch(event=["purchase"]),
        EventMatch.model_validate(
            {
                "event": "product_view",
                "where": [{"property": "category", "op": "eq", "value": "shoes"}],
            }
        ),
    ]
    signals: list[Signal] = []
    for n, site in enumerate(sites):
        for i, m in enumerate(matches[: n + 1]):
            signals.append(Signal(site, match_sql(m), None, times=(i + n) % 2 == 0, match=m))
        signals.append(
            Signal(site, match_sql(matches[0]), "product_id", times=True, match=matches[0])
        )
        signals.append(Signal(site, "1", "sku" if n else "product_id", times=False))
    await SignalBackfill(db).install_feed(signals)
    history = []
    for k in range(60):
        site = sites[k % 3]
        etype = ["add_to_cart", "purchase", "product_view", "page_view"][k % 4]
        props = {
            "product_id": f"p{k % 5}",
            "sku": f"s{k % 2}",
            "category": ["shoes", "bags"][k % 2],
        }
        history.append(event(site, f"v{k % 7}", etype, T0 + k * 60, properties=props))
    _, values = encoded(history)
    await db.insert_json_rows("events", b"\n".join(values), dedup_token="many-sites")
    stored = await db.query(
        f"SELECT site_id, visitor_id, e.1, e.2, arraySort(e.3), e.4 "
        f"FROM {db.database}.person_state ARRAY JOIN v AS e ORDER BY ALL"
    )
    expected = []
    for s in signals:
        ids = "if(empty(_p), [''], _p)" if s.product_key is None else "_p"
        product = (
            "emptyArrayString()"
            if s.product_key is None
            else f"arrayDistinct(arrayFilter(p -> p != '', arrayConcat("
            f"[JSONExtractString(properties, '{s.product_key}')], "
            f"arrayMap(i -> JSONExtractString(i, '{s.product_key}'), "
            f"JSONExtractArrayRaw(properties, 'items')))))"
        )
        keep = "1" if s.times else "0"
        expected += await db.query(
            f"SELECT site_id, visitor_id, toUInt64({s.id}) AS signal, product, "
            f"arraySort(groupUniqArrayIf((toUnixTimestamp64Milli(occurred_at), "
            f"cityHash64(event_id)), {keep} = 1)), max(toUnixTimestamp64Milli(occurred_at)) "
            f"FROM (SELECT *, {product} AS _p FROM {db.database}.events "
            f"WHERE site_id = '{s.site}' AND {s.predicate}) ARRAY JOIN {ids} AS product "
            "GROUP BY site_id, visitor_id, product"
        )
    assert len(stored) > 60
    assert [tuple(r) for r in stored] == sorted(tuple(r) for r in expected)
