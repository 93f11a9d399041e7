"""Audience rules -> ClickHouse SQL. Evaluation happens in ClickHouse, never row by row in Python.

One query per site evaluates every audience being checked, for a set of visitors (or all of
them), and compares the result with the stored memberships in the same statement:

* ``ev``: the candidates' events (bots, visitors without consent to be recognised and
  channel signals left out), each mapped to its *person* through ``identities``. Not read
  with ``FINAL`` (it costs more than the whole evaluation on small sets): a retried event is a
  duplicate row, so counts are ``uniqExact(event_id)`` and every other aggregate (max, exists)
  ignores duplicates;
* person-level audiences: one ``GROUP BY person`` whose columns are the compiled rules, turned
  into (audience, person, member) rows with ``ARRAY JOIN``;
* product-level audiences: the events carrying product ids, ``ARRAY JOIN``-ed by product and
  grouped by (person, product); a member carries the products that qualify;
* the result ``FULL OUTER JOIN`` the current memberships gives, per (audience, person), the new
  state and the change to emit (``enter``, ``exit``, ``update`` of the product list), with the
  membership TTL applied. Only rows that change come back to Python;
* a pseudo-audience ``''`` row per person carries the next moment a time condition could flip
  (``due``), for the timer pass.

Times are Unix milliseconds (``t``); ``{now:Int64}`` is the evaluation time, so a test can set it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leadback.audiences.rules import (
    AllCond,
    AnyCond,
    AudienceSpec,
    Condition,
    DidCond,
    EventMatch,
    Filter,
    IdleCond,
    InAudienceCond,
    NotCond,
    SeenWithinCond,
    SequenceCond,
    ThenNotCond,
    children,
)
from leadback.errors import InvalidInputError

#: Larger than any timestamp: "no such event" in sequence matching.
NEVER = 9_000_000_000_000_000_000
NOW = "{now:Int64}"


def literal(value: str | float | bool) -> str:
    """A SQL literal. Strings are quoted with ClickHouse's escaping rules."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(float(value))
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _path_args(key: str) -> str:
    return ", ".join(literal(part) for part in key.split("."))


def json_string(doc: str, key: str) -> str:
    """A JSON value as text: strings as they are, numbers and others in their JSON form."""
    args = _path_args(key)
    return (
        f"if(JSONType({doc}, {args}) = 'String', JSONExtractString({doc}, {args}), "
        f"JSONExtractRaw({doc}, {args}))"
    )


def _filter_sql(f: Filter) -> str:
    if f.property is not None:
        args = _path_args(f.property)
        text = json_string("properties", f.property)
        number = f"JSONExtractFloat(properties, {args})"
        exists = f"JSONHas(properties, {args})"
    else:
        assert f.field is not None
        text = f.field  # tuple fields read as utm.source etc.
        number = f"toFloat64OrZero({text})"
        exists = f"({text} != '')"
    value = f.value
    if f.op == "exists":
        return exists
    if f.op in ("in", "not_in"):
        assert isinstance(value, list)
        items = ", ".join(literal(_as_text(v)) for v in value)
        neg = "NOT " if f.op == "not_in" else ""
        return f"({text} {neg}IN ({items}))"
    assert value is not None and not isinstance(value, list)
    if f.op in ("gt", "gte", "lt", "lte"):
        sym = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[f.op]
        return f"({exists} AND {number} {sym} {literal(value)})"
    if f.op == "contains":
        return f"(position({text}, {literal(str(value))}) > 0)"
    if f.op == "starts_with":
        return f"startsWith({text}, {literal(str(value))})"
    sym = "=" if f.op == "eq" else "!="
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"({exists} AND {number} {sym} {literal(value)})"
    return f"({text} {sym} {literal(_as_text(value))})"


def _as_text(value: str | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def match_sql(m: EventMatch) -> str:
    """Row predicate: the event is of one of the types, has the name, passes every filter."""
    types = ", ".join(literal(t) for t in m.types)
    parts = [f"type IN ({types})" if len(m.types) > 1 else f"type = {literal(m.types[0])}"]
    if m.name is not None:
        parts.append(f"name = {literal(m.name)}")
    parts.extend(_filter_sql(f) for f in m.where)
    return "(" + " AND ".join(parts) + ")"


def _window(within: int | None) -> str:
    if within is None:
        return f"t <= {NOW}"
    return f"t > {NOW} - {within} AND t <= {NOW}"


@dataclass
class _Context:
    """What compiling one audience needs: the site's audiences (for ``in_audience``)."""

    audiences: dict[str, AudienceSpec]
    stack: list[str] = field(default_factory=list)
    thresholds: set[int] = field(default_factory=set)
    var: int = 0

    def fresh(self) -> str:
        self.var += 1
        return f"x{self.var}"


def _cond(c: Condition, ctx: _Context) -> str:
    if isinstance(c, DidCond):
        d = c.did
        if d.within is not None:
            ctx.thresholds.add(d.within)
        n = f"uniqExactIf(event_id, {match_sql(d)} AND {_window(d.within)})"
        lo = f"{n} >= {d.count.min}" if d.count.min > 0 else "1"
        if d.count.max is None:
            return f"({lo})"
        return f"({lo} AND {n} <= {d.count.max})"
    if isinstance(c, ThenNotCond):
        tn = c.then_not
        if tn.did.within is not None:
            ctx.thresholds.add(tn.did.within)
        first = f"{match_sql(tn.did)} AND {_window(tn.did.within)}"
        then = f"{match_sql(tn.then)} AND t <= {NOW}"
        enough = (
            f"uniqExactIf(event_id, {first}) >= {tn.did.count.min}"
            if tn.did.count.min > 1
            else f"maxIf(t, {first}) > 0"
        )
        if tn.within is None:
            return f"({enough} AND maxIf(t, {first}) > maxIf(t, {then}))"
        ctx.thresholds.add(tn.within)
        x, y = ctx.fresh(), ctx.fresh()
        return (
            f"({enough} AND arrayExists({x} -> {x} <= {NOW} - {tn.within} AND NOT arrayExists("
            f"{y} -> {y} >= {x} AND {y} <= {x} + {tn.within}, groupArrayIf(t, {then})), "
            f"groupArrayIf(t, {first})))"
        )
    if isinstance(c, SequenceCond):
        return _sequence(c, ctx)
    if isinstance(c, IdleCond):
        ctx.thresholds.add(c.idle)
        return f"(maxIf(t, t <= {NOW}) <= {NOW} - {c.idle})"
    if isinstance(c, SeenWithinCond):
        ctx.thresholds.add(c.seen_within)
        return f"(maxIf(t, t <= {NOW}) > {NOW} - {c.seen_within})"
    if isinstance(c, InAudienceCond):
        return _inline(c.in_audience, ctx)
    if isinstance(c, AllCond):
        return "(" + " AND ".join(_cond(x, ctx) for x in c.all) + ")"
    if isinstance(c, AnyCond):
        return "(" + " OR ".join(_cond(x, ctx) for x in c.any) + ")"
    if isinstance(c, NotCond):
        return f"(NOT {_cond(c.not_, ctx)})"
    raise AssertionError(f"unknown condition {c!r}")


def _sequence(c: SequenceCond, ctx: _Context) -> str:
    """Greedy: from each occurrence of step 1, the earliest later occurrence of each next step."""
    seq = c.sequence
    arrays = [f"arraySort(groupArrayIf(t, {match_sql(s)} AND t <= {NOW}))" for s in seq.steps]
    start = ctx.fresh()
    prev = start
    for arr in arrays[1:]:
        v = ctx.fresh()
        prev = f"arrayMin(arrayConcat(arrayFilter({v} -> {v} > {prev}, {arr}), [toInt64({NEVER})]))"
    last = prev
    ok = f"{last} < {NEVER}"
    if seq.within is not None:
        ok += f" AND {last} - {start} <= {seq.within}"
    return f"arrayExists({start} -> {ok}, {arrays[0]})"


def _inline(audience_id: str, ctx: _Context) -> str:
    target = ctx.audiences.get(audience_id)
    if target is None:
        raise InvalidInputError(
            "invalid_audience", f"in_audience: no audience {audience_id!r} on this site"
        )
    if target.products is not None:
        raise InvalidInputError(
            "invalid_audience",
            f"in_audience: {audience_id!r} is product-level; refer to person-level audiences",
        )
    if audience_id in ctx.stack:
        cycle = " -> ".join([*ctx.stack, audience_id])
        raise InvalidInputError("invalid_audience", f"in_audience cycle: {cycle}")
    ctx.stack.append(audience_id)
    try:
        return _cond(target.rule, ctx)
    finally:
        ctx.stack.pop()


@dataclass(frozen=True)
class CompiledRule:
    """One audience's rule as a SQL boolean over a group of events, plus its time thresholds."""

    audience_id: str
    expression: str
    thresholds: frozenset[int]


def compile_rule(spec: AudienceSpec, site_audiences: dict[str, AudienceSpec]) -> CompiledRule:
    """Compile ``spec`` (``in_audience`` resolved against ``site_audiences``)."""
    ctx = _Context(audiences={**site_audiences, spec.id: spec}, stack=[spec.id])
    expression = _cond(spec.rule, ctx)
    if spec.ttl is not None:
        ctx.thresholds.add(spec.ttl)
    return CompiledRule(spec.id, expression, frozenset(ctx.thresholds))


def product_ids_sql(key: str) -> str:
    """The product ids an event is about: ``properties.<key>`` and ``properties.items[].<key>``."""
    item = json_string("i", key)
    return (
        f"arrayDistinct(arrayFilter(p -> p != '', arrayConcat([{json_string('properties', key)}], "
        f"arrayMap(i -> {item}, JSONExtractArrayRaw(properties, 'items')))))"
    )


def trigger_types(
    spec: AudienceSpec, site_audiences: dict[str, AudienceSpec]
) -> frozenset[str] | None:
    """Event types whose arrival can change ``spec``'s result (``None``: any event can, as with
    ``idle``). Events of other types leave it as it was; only time can change it then, and the
    timer pass sees to that."""
    found: set[str] = set()
    stack: list[Condition] = [spec.rule]
    seen = {spec.id}
    while stack:
        c = stack.pop()
        if isinstance(c, IdleCond | SeenWithinCond):
            return None
        if isinstance(c, DidCond):
            found.update(c.did.types)
        elif isinstance(c, ThenNotCond):
            found.update(c.then_not.did.types)
            found.update(c.then_not.then.types)
        elif isinstance(c, SequenceCond):
            for step in c.sequence.steps:
                found.update(step.types)
        elif isinstance(c, InAudienceCond):
            target = site_audiences.get(c.in_audience)
            if target is None:
                return None
            if target.id not in seen:
                seen.add(target.id)
                stack.append(target.rule)
        stack.extend(children(c))
    return frozenset(found)
