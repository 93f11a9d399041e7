"""Audience rules read the slow, obvious way in Python over raw events (the docs' definitions),
and hypothesis strategies for random rules: what the evaluation paths are checked against."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from leadback.audiences.compiler import NEVER
from leadback.audiences.rules import (
    AllCond,
    AnyCond,
    AudienceSpec,
    Condition,
    DidCond,
    EventMatch,
    IdleCond,
    NotCond,
    SeenWithinCond,
    SequenceCond,
    ThenNotCond,
    children,
)

TYPES = ["page_view", "product_view", "add_to_cart", "purchase", "lead"]
Event = tuple[int, str, dict[str, Any]]  # (time ms, type, properties)

types = st.sampled_from(TYPES)
filters = st.sampled_from(
    [
        [],
        [{"property": "price", "op": "gt", "value": 50}],
        [{"property": "category", "op": "eq", "value": "shoes"}],
        [{"property": "product_id", "op": "in", "value": ["p1", "p2"]}],
    ]
)


def rule_conditions(
    windows: list[str], durations: list[str], max_leaves: int = 4, event_types: list[str] = TYPES
) -> st.SearchStrategy[Any]:
    """Random rules (every condition kind, up to ``max_leaves`` of them combined) with windows,
    durations and event types drawn from those given."""
    window = st.sampled_from([None, *windows])
    types = st.sampled_from(event_types)

    @st.composite
    def did(draw: st.DrawFn) -> dict[str, Any]:
        body: dict[str, Any] = {"event": draw(types), "where": draw(filters)}
        if (w := draw(window)) is not None:
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
        if (w := draw(window)) is not None:
            first["within"] = w
        then = {"event": draw(types), "where": draw(filters)}
        body: dict[str, Any] = {"did": first, "then": then}
        if (w := draw(window)) is not None:
            body["within"] = w
        return {"then_not": body}

    @st.composite
    def sequence(draw: st.DrawFn) -> dict[str, Any]:
        steps = [{"event": draw(types)} for _ in range(draw(st.integers(2, 3)))]
        body: dict[str, Any] = {"steps": steps}
        if (w := draw(window)) is not None:
            body["within"] = w
        return {"sequence": body}

    duration = st.sampled_from(durations)
    leaves = st.one_of(
        did(),
        then_not(),
        sequence(),
        duration.map(lambda d: {"idle": d}),
        duration.map(lambda d: {"seen_within": d}),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"all": xs}),
            st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"any": xs}),
            inner.map(lambda x: {"not": x}),
        ),
        max_leaves=max_leaves,
    )


def matches(m: EventMatch, e: Event) -> bool:
    """Whether event ``e`` is one ``m`` selects (the filters the strategies draw)."""
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


def times_of(m: EventMatch, events: list[Event], now: int, within: int | None = None) -> list[int]:
    """The sorted times of ``m``'s events in ``(now - within, now]`` (all up to now)."""
    lo = -1 if within is None else now - within
    return sorted(e[0] for e in events if lo < e[0] <= now and matches(m, e))


def event_matches(c: Condition) -> list[EventMatch]:
    """Every event test in a rule."""
    found: list[EventMatch] = []
    stack = [c]
    while stack:
        x = stack.pop()
        if isinstance(x, DidCond):
            found.append(x.did)
        elif isinstance(x, ThenNotCond):
            found += [x.then_not.did, x.then_not.then]
        elif isinstance(x, SequenceCond):
            found += list(x.sequence.steps)
        stack.extend(children(x))
    return found


def holds(c: Any, events: list[Event], now: int) -> bool:
    """A rule over one person's (or one product's) events, as the docs define it."""
    if isinstance(c, DidCond):
        n = len(times_of(c.did, events, now, c.did.within))
        return n >= c.did.count.min and (c.did.count.max is None or n <= c.did.count.max)
    if isinstance(c, ThenNotCond):
        tn = c.then_not
        first = times_of(tn.did, events, now, tn.did.within)
        then = times_of(tn.then, events, now)
        if len(first) < max(tn.did.count.min, 1):
            return False
        if tn.within is None:
            return max(first) > max(then, default=0)
        w = tn.within
        return any(x <= now - w and not any(x <= y <= x + w for y in then) for x in first)
    if isinstance(c, SequenceCond):
        steps = [times_of(m, events, now) for m in c.sequence.steps]
        return greedy(steps, c.sequence.within, now)
    if isinstance(c, IdleCond | SeenWithinCond):
        last = max(e[0] for e in events)
        if isinstance(c, IdleCond):
            return last <= now - c.idle
        return last > now - c.seen_within
    if isinstance(c, AllCond):
        return all(holds(x, events, now) for x in c.all)
    if isinstance(c, AnyCond):
        return any(holds(x, events, now) for x in c.any)
    if isinstance(c, NotCond):
        return not holds(c.not_, events, now)
    raise AssertionError(c)


def reference(
    specs: list[AudienceSpec], history: list[tuple[str, str, float, dict[str, Any]]], now: int
) -> set[tuple[str, str, tuple[str, ...]]]:
    """(audience, visitor, products) of every member, each visitor its own person."""
    by_visitor: dict[str, list[Event]] = {}
    for visitor, etype, at, props in history:
        by_visitor.setdefault(visitor, []).append((int(at * 1000), etype, props))
    found = set()
    for spec in specs:
        for visitor, events in by_visitor.items():
            if spec.products is None:
                if holds(spec.rule, events, now):
                    found.add((spec.id, visitor, ()))
                continue
            products = sorted({str(e[2]["product_id"]) for e in events if "product_id" in e[2]})
            good = tuple(
                p
                for p in products
                if holds(spec.rule, [e for e in events if e[2].get("product_id") == p], now)
            )
            if good:
                found.add((spec.id, visitor, good))
    return found


def greedy(steps: list[list[int]], within: int | None, now: int) -> bool:
    """The sequence rule as the docs define it, step by step in Python."""
    arrays = [sorted(t for t in ts if t <= now) for ts in steps]
    for start in arrays[0]:
        prev = start
        for arr in arrays[1:]:
            prev = min((v for v in arr if v > prev), default=NEVER)
        if prev < NEVER and (within is None or prev - start <= within):
            return True
    return False
