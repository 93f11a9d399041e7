"""Audience rules -> ClickHouse SQL over signal times. Evaluation happens in ClickHouse, never
row by row in Python.

A rule compiles to one boolean expression over, per person (or per person and product), the
sorted-or-not arrays of the times of the events that matched each *signal* of the rule
(:mod:`leadback.audiences.signals`), plus the time of the person's latest event:

* ``did`` ``{count, within}``: how many of the signal's times lie in ``(now - within, now]``;
* ``then_not``: a ``did`` time with no ``then`` time after it (within ``within`` of it);
* ``sequence``: greedy, from each time of step 1 the earliest later time of each next step;
* ``idle`` / ``seen_within``: the latest event's time against ``now``.

The arrays hold each event once (a retried event is the same ``(time, event hash)`` pair), so
the answers are those of the rules read over the raw events; only the windows' edges are times,
never buckets. Times are Unix milliseconds of ``occurred_at``; ``{now:Int64}`` is the evaluation
time, so a test can set it. The statements around the expressions are :mod:`~.query`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from leadback.audiences.predicates import match_sql
from leadback.audiences.rules import (
    AllCond,
    AnyCond,
    AudienceSpec,
    Condition,
    DidCond,
    EventMatch,
    IdleCond,
    InAudienceCond,
    NotCond,
    SeenWithinCond,
    SequenceCond,
    ThenNotCond,
    children,
)
from leadback.audiences.signals import Signal, any_event
from leadback.errors import InvalidInputError

#: Larger than any timestamp: "no such event" in sequence matching.
NEVER = 9_000_000_000_000_000_000
NOW = "{now:Int64}"


@dataclass(frozen=True)
class Need:
    """What the rules read of a signal's times (up to now): ``everything``, or only those in
    the last ``window`` ms and the ``latest`` few. The evaluation keeps just that much of each
    person's times, so a long history costs no more than a short one."""

    everything: bool
    window: int
    latest: int

    def merge(self, other: Need) -> Need:
        return Need(
            self.everything or other.everything,
            max(self.window, other.window),
            max(self.latest, other.latest),
        )


NOTHING = Need(False, 0, 0)


@dataclass
class _Context:
    """What compiling one audience needs: the site's audiences (for ``in_audience``), and what
    it collects: the signals and time thresholds the rule uses."""

    site: str
    product_key: str | None
    audiences: dict[str, AudienceSpec]
    stack: list[str] = field(default_factory=list)
    thresholds: set[int] = field(default_factory=set)
    signals: set[Signal] = field(default_factory=set)
    needs: dict[Signal, Need] = field(default_factory=dict)
    var: int = 0

    def need(self, match: EventMatch, *, window: int | None = None, latest: int = 0) -> None:
        """Record what a use reads of ``match``'s times: those in ``window`` (``None`` with no
        ``latest``: all of them), and the ``latest`` few."""
        signal = Signal(self.site, match_sql(match), self.product_key, times=True, match=match)
        use = Need(everything=window is None and latest == 0, window=window or 0, latest=latest)
        self.needs[signal] = self.needs.get(signal, NOTHING).merge(use)

    def fresh(self) -> str:
        self.var += 1
        return f"x{self.var}"

    def times(self, match: EventMatch) -> str:
        """The column holding the times of the events ``match`` selects."""
        signal = Signal(self.site, match_sql(match), self.product_key, times=True, match=match)
        self.signals.add(signal)
        return signal.column

    def last(self) -> str:
        """The column holding the time of the latest event."""
        signal = any_event(self.site, self.product_key)
        self.signals.add(signal)
        return signal.column

    def _in_window(self, x: str, within: int | None) -> str:
        if within is None:
            return f"{x} <= {NOW}"
        self.thresholds.add(within)
        return f"{x} > {NOW} - {within} AND {x} <= {NOW}"

    def within(self, match: EventMatch, within: int | None) -> str:
        """The times of ``match`` in ``(now - within, now]`` (all up to now without one)."""
        x = self.fresh()
        return f"arrayFilter({x} -> {self._in_window(x, within)}, {self.times(match)})"

    def count(self, match: EventMatch, within: int | None) -> str:
        """How many times of ``match`` lie in ``(now - within, now]`` (no array is built)."""
        x = self.fresh()
        return f"arrayCount({x} -> {self._in_window(x, within)}, {self.times(match)})"


def _cond(c: Condition, ctx: _Context) -> str:
    if isinstance(c, DidCond):
        d = c.did
        if d.within is not None:
            ctx.need(d, window=d.within)
        else:  # a count: the latest max(min, max + 1) say whether it is in bounds
            bound = d.count.max + 1 if d.count.max is not None else 0
            ctx.need(d, latest=max(d.count.min, bound, 1))
        n = ctx.count(d, d.within)
        lo = f"{n} >= {d.count.min}" if d.count.min > 0 else "1"
        if d.count.max is None:
            return f"({lo})"
        return f"({lo} AND {n} <= {d.count.max})"
    if isinstance(c, ThenNotCond):
        tn = c.then_not
        if tn.within is None:  # how many did, and the last did and then
            if tn.did.within is not None:
                ctx.need(tn.did, window=tn.did.within)
            else:
                ctx.need(tn.did, latest=max(tn.did.count.min, 1))
            ctx.need(tn.then, latest=1)
        else:  # every did of the window, and the thens after them
            ctx.need(tn.did, window=tn.did.within)
            ctx.need(tn.then, window=tn.did.within)
        first = ctx.within(tn.did, tn.did.within)
        then = ctx.within(tn.then, None)
        enough = f"{ctx.count(tn.did, tn.did.within)} >= {max(tn.did.count.min, 1)}"
        if tn.within is None:
            return f"({enough} AND arrayMax({first}) > arrayMax({then}))"
        ctx.thresholds.add(tn.within)
        x, y = ctx.fresh(), ctx.fresh()
        return (
            f"({enough} AND arrayExists({x} -> {x} <= {NOW} - {tn.within} AND NOT arrayExists("
            f"{y} -> {y} >= {x} AND {y} <= {x} + {tn.within}, {then}), {first}))"
        )
    if isinstance(c, SequenceCond):
        return _sequence(c, ctx)
    if isinstance(c, IdleCond):
        ctx.thresholds.add(c.idle)
        return f"({ctx.last()} <= {NOW} - {c.idle})"
    if isinstance(c, SeenWithinCond):
        ctx.thresholds.add(c.seen_within)
        return f"({ctx.last()} > {NOW} - {c.seen_within})"
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
    """Greedy: from each occurrence of step 1, the earliest later occurrence of each next step.

    For every start at once, in linear passes over sorted arrays (a heavy visitor has thousands
    of starts: a scan per start was quadratic): the starts and the next step's times are merged
    in time order (a step's time before a start at the same millisecond: it must be strictly
    later), and ``arrayReverseFill`` gives each start the first step time after it."""
    seq = c.sequence
    for step in seq.steps:
        ctx.need(step)
    arrays = [f"arraySort({ctx.within(s, None)})" for s in seq.steps]
    reached = arrays[0]
    for arr in arrays[1:]:
        reached = _next_after(reached, arr, ctx)
    x, e = ctx.fresh(), ctx.fresh()
    ok = f"{e} < {NEVER}"
    if seq.within is not None:
        ok += f" AND {e} - {x} <= {seq.within}"
    return f"arrayExists(({e}, {x}) -> {ok}, {reached}, {arrays[0]})"


def _next_after(positions: str, times: str, ctx: _Context) -> str:
    """For each of the sorted ``positions``, the first of the sorted ``times`` strictly after
    it (``NEVER`` when there is none), in the positions' order."""
    v, w, f, m = ctx.fresh(), ctx.fresh(), ctx.fresh(), ctx.fresh()
    merged = (
        f"arraySort(arrayConcat(arrayMap({v} -> ({v}, 0), {times}), "
        f"arrayMap({w} -> ({w}, 1), {positions})))"
    )
    filled = f"arrayReverseFill({f} -> {f}.2 = 0, {merged})"
    return (
        f"arrayMap({f} -> if({f}.2 = 0, {f}.1, toInt64({NEVER})), "
        f"arrayFilter(({f}, {m}) -> {m}.2 = 1, {filled}, {merged}))"
    )


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
    """One audience's rule as a SQL boolean over signal columns, the signals it reads, and its
    time thresholds (where a result can flip with no new event)."""

    audience_id: str
    expression: str
    thresholds: frozenset[int]
    signals: frozenset[Signal]
    needs: tuple[tuple[Signal, Need], ...] = ()
    #: The signals the rule itself reads (``signals`` also has the any-event one, always).
    reads: frozenset[Signal] = frozenset()


def compile_rule(spec: AudienceSpec, site_audiences: dict[str, AudienceSpec]) -> CompiledRule:
    """Compile ``spec`` (``in_audience`` resolved against ``site_audiences``)."""
    key = spec.products.property if spec.products is not None else None
    ctx = _Context(spec.site, key, audiences={**site_audiences, spec.id: spec}, stack=[spec.id])
    expression = _cond(spec.rule, ctx)
    if spec.ttl is not None:
        ctx.thresholds.add(spec.ttl)
    reads = frozenset(ctx.signals)
    # Every evaluated person has some event: the any-event signal is what makes them a row.
    ctx.last()
    return CompiledRule(
        spec.id,
        expression,
        frozenset(ctx.thresholds),
        frozenset(ctx.signals),
        tuple(ctx.needs.items()),
        reads,
    )


def trigger_types(
    spec: AudienceSpec, site_audiences: dict[str, AudienceSpec]
) -> frozenset[str] | None:
    """Event types whose arrival can change ``spec``'s result (``None``: any event can, as with
    ``idle``, or a rule that holds for a person with no events at all: ``not`` a purchase holds
    for anyone's first page view). Events of other types leave it as it was; only time can
    change it then, and the timer pass sees to that."""
    if holds_without_events(spec.rule, site_audiences, {spec.id}):
        return None
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


def holds_without_events(
    c: Condition, site_audiences: dict[str, AudienceSpec], seen: set[str] | None = None
) -> bool:
    """Whether ``c`` holds for a person (or product) with no events at all: a new visitor
    qualifies with their first event, whatever its type."""
    seen = seen if seen is not None else set()
    if isinstance(c, DidCond):
        return c.did.count.min < 1
    if isinstance(c, IdleCond):
        return True
    if isinstance(c, ThenNotCond | SequenceCond | SeenWithinCond):
        return False
    if isinstance(c, InAudienceCond):
        target = site_audiences.get(c.in_audience)
        if target is None or target.id in seen:
            return False
        return holds_without_events(target.rule, site_audiences, seen | {target.id})
    if isinstance(c, AllCond):
        return all(holds_without_events(x, site_audiences, seen) for x in c.all)
    if isinstance(c, AnyCond):
        return any(holds_without_events(x, site_audiences, seen) for x in c.any)
    if isinstance(c, NotCond):
        return not holds_without_events(c.not_, site_audiences, seen)
    raise AssertionError(f"unknown condition {c!r}")
