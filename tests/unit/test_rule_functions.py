"""The rules as Python functions (what the engine runs) answer like the docs' definitions, on
times drawn on a small grid so that window edges, ties and empty signals come up often."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from leadback.audiences.predicates import match_sql
from leadback.audiences.program import build_program
from leadback.audiences.query import VersionedAudience
from leadback.audiences.rule_functions import SignalState, required_signals, rule_function
from leadback.audiences.rules import AudienceSpec, parse_audience
from leadback.audiences.signals import Signal, any_event
from leadback.audiences.state_read import PersonStates
from tests.audience_reference import (
    TYPES,
    Event,
    event_matches,
    holds,
    rule_conditions,
    times_of,
)

# Few types, short windows, times on a second grid close to now: window edges, ties and
# empty signals come up often. Single conditions half of the time: combined ones often hide
# an edge behind another leaf.
_TYPES = TYPES[:3]
_windows, _durations = ["3s", "6s"], ["3s", "6s"]
conditions = st.one_of(
    rule_conditions(_windows, _durations, max_leaves=1, event_types=_TYPES),
    rule_conditions(_windows, _durations, max_leaves=4, event_types=_TYPES),
)


def _state(spec: AudienceSpec, events: list[Event], now: int) -> SignalState:
    """Every time up to now of each of the rule's event tests (the state before trimming)."""
    key = spec.products.property if spec.products is not None else None
    state = SignalState()
    for m in event_matches(spec.rule):
        sig = Signal(spec.site, match_sql(m), key, times=True).id
        state.times[sig] = times_of(m, events, now)
    if events:
        state.last[any_event(spec.site, key).id] = max(e[0] for e in events)
    return state


events = st.lists(
    st.tuples(
        st.integers(0, 12),
        st.sampled_from(_TYPES),
        st.fixed_dictionaries(
            {
                "product_id": st.sampled_from(["p1", "p2"]),
                "price": st.sampled_from([10, 60]),
                "category": st.sampled_from(["shoes", "bags"]),
            }
        ),
    ),
    min_size=1,
    max_size=16,
)


@settings(max_examples=1500, deadline=None)
@given(rule=conditions, history=events, now=st.integers(3, 15))
def test_rule_functions_answer_like_the_definitions(
    rule: dict[str, Any], history: list[tuple[int, str, dict[str, Any]]], now: int
) -> None:
    spec = parse_audience({"id": "a", "site": "s", "rule": rule})
    evs: list[Event] = [(t * 1000, etype, props) for t, etype, props in history]
    test = rule_function(spec, {})
    assert test(_state(spec, evs, now * 1000), now * 1000) == holds(spec.rule, evs, now * 1000)


def test_then_not_within_counts_a_did_exactly_span_ago() -> None:
    """A cart exactly 6 s old with no purchase after it has waited the whole span: member."""
    spec = parse_audience(
        {
            "id": "a",
            "site": "s",
            "rule": {
                "then_not": {
                    "did": {"event": "add_to_cart"},
                    "then": {"event": "purchase"},
                    "within": "6s",
                }
            },
        }
    )
    evs: list[Event] = [(10_000, "add_to_cart", {})]
    state = _state(spec, evs, 16_000)
    assert holds(spec.rule, evs, 16_000)
    assert rule_function(spec, {})(state, 16_000)
    assert not rule_function(spec, {})(state, 15_999)


@settings(max_examples=1000, deadline=None)
@given(rule=conditions, history=events, now=st.integers(3, 15))
def test_a_rule_holds_only_with_a_time_of_its_required_signals(
    rule: dict[str, Any], history: list[tuple[int, str, dict[str, Any]]], now: int
) -> None:
    """What lets evaluation skip a rule: whenever it holds, the state has a time of one of its
    required signals within that signal's window (or it requires none)."""
    spec = parse_audience({"id": "a", "site": "s", "rule": rule})
    evs: list[Event] = [(t * 1000, etype, props) for t, etype, props in history]
    state = _state(spec, evs, now * 1000)
    required = required_signals(spec, {})
    if rule_function(spec, {})(state, now * 1000) and required is not None:
        assert any(
            t > now * 1000 - window for sig, window in required for t in state.times.get(sig, [])
        )


@settings(max_examples=2000, deadline=None)
@given(
    rules=st.lists(conditions, min_size=1, max_size=4),
    histories=st.lists(
        st.tuples(events, st.lists(st.booleans(), min_size=8, max_size=8)), min_size=1, max_size=3
    ),
    now=st.integers(3, 15),
    products=st.booleans(),
)
def test_a_program_answers_like_each_rule_alone(
    rules: list[dict[str, Any]],
    histories: list[tuple[list[tuple[int, str, dict[str, Any]]], list[bool]]],
    now: int,
    products: bool,
) -> None:
    """The program skips the rules a person holds none of the signals of (their answer is the
    empty state's), and those requiring a time of signals the state holds none of: the members
    are those of every rule called on every person's (or product's) state, where a state
    holds only the signals that matched an event, some with their times trimmed away (as the
    state read returns them)."""
    extra: dict[str, Any] = {"products": {"property": "product_id"}} if products else {}
    specs = [
        parse_audience({"id": f"a{i}", "site": "s", "rule": r, **extra})
        for i, r in enumerate(rules)
    ]
    by_id = {s.id: s for s in specs}
    program = build_program("db", [VersionedAudience(s, 1) for s in specs], by_id)
    states = PersonStates()
    for i, (history, trimmed) in enumerate(histories):
        evs: list[Event] = [(t * 1000, etype, props) for t, etype, props in history]
        state = SignalState()
        for spec in specs:
            for sig, ts in _state(spec, evs, now * 1000).times.items():
                if ts:
                    state.times[sig], state.last[sig] = ts, max(ts)
                    if trimmed[sig % len(trimmed)]:
                        state.times[sig] = []  # its times outside what the rules read
        anchor = any_event("s", "product_id" if products else None).id
        state.times[anchor], state.last[anchor] = [], max(e[0] for e in evs)
        if products:
            states.products[(f"p{i}", "x")] = state
        else:
            states.persons[f"p{i}"] = state
    held = states.products.items() if products else states.persons.items()
    expected = {
        (spec.id, person[0] if products else person): ("x",) if products else ()
        for spec in specs
        for person, state in held
        if rule_function(spec, by_id)(state, now * 1000)
    }
    assert program.members(states, now * 1000) == expected


def test_a_program_runs_a_windowed_rule_for_a_time_just_inside_its_window() -> None:
    """The window edges of the skip: a time 1 ms inside the window runs the rule (a member),
    one exactly at its start does not need to (the rule counts times after it)."""
    spec = parse_audience(
        {"id": "a", "site": "s", "rule": {"did": {"event": "page_view", "within": "3s"}}}
    )
    program = build_program("db", [VersionedAudience(spec, 1)], {"a": spec})
    required = required_signals(spec, {})
    assert required is not None
    ((sig, window),) = required
    assert window == 3000
    inside = SignalState({sig: [7001]}, {sig: 7001})
    edge = SignalState({sig: [7000]}, {sig: 7000})
    states = PersonStates(persons={"in": inside, "edge": edge})
    assert program.members(states, 10_000) == {("a", "in"): ()}
    assert rule_function(spec, {})(inside, 10_000) and not rule_function(spec, {})(edge, 10_000)
