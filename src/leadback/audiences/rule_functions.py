"""Audience rules -> Python functions over one person's (or one person and product's) signal
times, the same answers as the SQL of :mod:`leadback.audiences.compiler`.

Why in Python: ClickHouse plans a statement holding every audience's expressions anew for each
evaluation (about 2 ms per audience, whatever the number of persons), and its lambdas over the
few times of a few hundred persons cost more in set-up than in work. The state a round needs is
read by one fixed statement (:mod:`~.state_read`: the kept times per signal, already trimmed
and sorted), and each audience is a function compiled once per definition that answers in a
few microseconds with binary searches. The SQL compiler stays the definition the tests and
``explain`` check this against (``tests/integration/test_signal_equivalence.py``).

Semantics, as the SQL's: ``times`` hold the times up to ``now`` a rule reads, sorted; a
signal's ``last`` is the time of its latest event (0 when there is none).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from leadback.audiences.compiler import NEVER
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
)
from leadback.audiences.signals import Signal, any_event
from leadback.errors import InvalidInputError

_EMPTY: tuple[int, ...] = ()


@dataclass(slots=True)
class SignalState:
    """One person's (or one person and product's) state: per signal id, the kept times up to
    now (sorted) and the latest time."""

    times: dict[int, Sequence[int]] = field(default_factory=dict)
    last: dict[int, int] = field(default_factory=dict)


Test = Callable[[SignalState, int], bool]


@dataclass
class _Context:
    site: str
    product_key: str | None
    audiences: dict[str, AudienceSpec]
    stack: list[str] = field(default_factory=list)

    def signal(self, match: EventMatch) -> int:
        return Signal(self.site, match_sql(match), self.product_key, times=True).id

    def last(self) -> int:
        return any_event(self.site, self.product_key).id


def _count(sig: int, within: int | None) -> Callable[[SignalState, int], int]:
    if within is None:
        return lambda s, now: len(s.times.get(sig, _EMPTY))

    def count(s: SignalState, now: int) -> int:
        ts = s.times.get(sig, _EMPTY)
        return len(ts) - bisect_right(ts, now - within)

    return count


def _did(c: DidCond, ctx: _Context) -> Test:
    d = c.did
    count = _count(ctx.signal(d), d.within)
    lo, hi = d.count.min, d.count.max
    if hi is None:
        return lambda s, now: count(s, now) >= lo
    return lambda s, now: lo <= count(s, now) <= hi


def _then_not(c: ThenNotCond, ctx: _Context) -> Test:
    tn = c.then_not
    did, then = ctx.signal(tn.did), ctx.signal(tn.then)
    count = _count(did, tn.did.within)
    enough = max(tn.did.count.min, 1)
    span = tn.within
    if span is None:

        def ever_since(s: SignalState, now: int) -> bool:
            if count(s, now) < enough:
                return False
            thens = s.times.get(then, _EMPTY)
            return s.times[did][-1] > (thens[-1] if thens else 0)

        return ever_since
    start_of = (lambda now: now - tn.did.within) if tn.did.within is not None else None

    def within(s: SignalState, now: int) -> bool:
        if count(s, now) < enough:
            return False
        dids = s.times[did]
        first = bisect_right(dids, start_of(now)) if start_of is not None else 0
        thens = s.times.get(then, _EMPTY)
        for x in dids[first:]:
            if x > now - span:
                break
            i = bisect_left(thens, x)
            if i == len(thens) or thens[i] > x + span:
                return True
        return False

    return within


def _sequence(c: SequenceCond, ctx: _Context) -> Test:
    """Greedy: from each time of step 1, the earliest later time of each next step (the
    SQL's ``_next_after`` passes)."""
    steps = [ctx.signal(m) for m in c.sequence.steps]
    span = c.sequence.within

    def holds(s: SignalState, now: int) -> bool:
        arrays = [s.times.get(sig, _EMPTY) for sig in steps]
        for start in arrays[0]:
            at = start
            for arr in arrays[1:]:
                i = bisect_right(arr, at)
                if i == len(arr):
                    return False  # no later start can finish either
                at = arr[i]
            if span is None or at - start <= span:
                return True
        return False

    return holds


def _cond(c: Condition, ctx: _Context) -> Test:
    if isinstance(c, DidCond):
        return _did(c, ctx)
    if isinstance(c, ThenNotCond):
        return _then_not(c, ctx)
    if isinstance(c, SequenceCond):
        return _sequence(c, ctx)
    if isinstance(c, IdleCond):
        last, idle = ctx.last(), c.idle
        return lambda s, now: s.last.get(last, 0) <= now - idle
    if isinstance(c, SeenWithinCond):
        last, seen = ctx.last(), c.seen_within
        return lambda s, now: s.last.get(last, 0) > now - seen
    if isinstance(c, InAudienceCond):
        return _inline(c.in_audience, ctx)
    if isinstance(c, AllCond):
        return _all([_cond(x, ctx) for x in c.all])
    if isinstance(c, AnyCond):
        return _any([_cond(x, ctx) for x in c.any])
    if isinstance(c, NotCond):
        inner = _cond(c.not_, ctx)
        return lambda s, now: not inner(s, now)
    raise AssertionError(f"unknown condition {c!r}")


def _all(parts: list[Test]) -> Test:
    # Chained ``and`` for the common sizes: a generator per call cost more than the tests
    # (rules run for tens of thousands of product states a round).
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts
        return lambda s, now: a(s, now) and b(s, now)
    if len(parts) == 3:
        a, b, c = parts
        return lambda s, now: a(s, now) and b(s, now) and c(s, now)
    return lambda s, now: all(p(s, now) for p in parts)


def _any(parts: list[Test]) -> Test:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        a, b = parts
        return lambda s, now: a(s, now) or b(s, now)
    if len(parts) == 3:
        a, b, c = parts
        return lambda s, now: a(s, now) or b(s, now) or c(s, now)
    return lambda s, now: any(p(s, now) for p in parts)


def _inline(audience_id: str, ctx: _Context) -> Test:
    target = ctx.audiences.get(audience_id)
    if target is None or target.products is not None or audience_id in ctx.stack:
        raise InvalidInputError(
            "invalid_audience", f"in_audience {audience_id!r} cannot be resolved"
        )
    ctx.stack.append(audience_id)
    try:
        return _cond(target.rule, ctx)
    finally:
        ctx.stack.pop()


#: A required signal: (signal id, window ms): a time of it newer than ``now - window`` (a
#: window of :data:`ANY_TIME`: any time it holds).
Required = frozenset[tuple[int, int]]
ANY_TIME = 1 << 62


def _required(c: Condition, ctx: _Context) -> Required | None:
    if isinstance(c, DidCond):
        if c.did.count.min < 1:
            return None
        return frozenset({(ctx.signal(c.did), c.did.within or ANY_TIME)})
    if isinstance(c, ThenNotCond):
        did = c.then_not.did  # at least one `did` time in its window, always
        return frozenset({(ctx.signal(did), did.within or ANY_TIME)})
    if isinstance(c, SequenceCond):
        return frozenset({(ctx.signal(c.sequence.steps[0]), ANY_TIME)})
    if isinstance(c, InAudienceCond):
        target = ctx.audiences.get(c.in_audience)
        if target is None or c.in_audience in ctx.stack:
            return None
        ctx.stack.append(c.in_audience)
        try:
            return _required(target.rule, ctx)
        finally:
            ctx.stack.pop()
    if isinstance(c, AllCond):
        # Every part must hold: any one part's requirement is the whole's; the one with the
        # shortest windows rules out the most states.
        found = [r for r in (_required(x, ctx) for x in c.all) if r is not None]
        return min(found, key=lambda r: (max(w for _, w in r), len(r))) if found else None
    if isinstance(c, AnyCond):
        parts = [_required(x, ctx) for x in c.any]
        if any(r is None for r in parts):
            return None
        return frozenset().union(*(r for r in parts if r is not None))
    return None  # not, idle, seen_within: true with no times at all


def required_signals(
    spec: AudienceSpec, site_audiences: dict[str, AudienceSpec]
) -> Required | None:
    """What a state must hold for ``spec``'s rule to be true: a time of one of these signals
    within its window (``None``: the rule can hold with no times at all, e.g. ``not`` or
    ``idle``). Evaluation skips the rule for a state holding none: its answer there is false."""
    key = spec.products.property if spec.products is not None else None
    ctx = _Context(spec.site, key, {**site_audiences, spec.id: spec}, stack=[spec.id])
    return _required(spec.rule, ctx)


def rule_function(spec: AudienceSpec, site_audiences: dict[str, AudienceSpec]) -> Test:
    """``spec``'s rule as a function of a :class:`SignalState` and ``now`` (ms)."""
    key = spec.products.property if spec.products is not None else None
    ctx = _Context(spec.site, key, {**site_audiences, spec.id: spec}, stack=[spec.id])
    return _cond(spec.rule, ctx)


__all__ = [
    "ANY_TIME",
    "NEVER",
    "Required",
    "SignalState",
    "Test",
    "required_signals",
    "rule_function",
]
