"""An evaluation program: what evaluating a set of audiences of one site runs, compiled once per
definition set — the fixed state statement with its parameters (:mod:`~.state_read`) and a
rule function per audience (:mod:`~.rule_functions`).

:meth:`EvaluationProgram.members` gives the same answers as the SQL statement of
:func:`leadback.audiences.query.build_evaluation`: the qualifying (audience, person) pairs
with their products, and each person's next due time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from leadback.audiences.compiler import NEVER, Need, compile_rule
from leadback.audiences.query import VersionedAudience
from leadback.audiences.rule_functions import (
    Required,
    SignalState,
    Test,
    required_signals,
    rule_function,
)
from leadback.audiences.rules import AudienceSpec
from leadback.audiences.signals import Signal, any_event
from leadback.audiences.state_read import PersonStates, state_params

Key = tuple[str, str]
#: (tests any state runs, signal -> (minus the windows, largest first; the tests requiring
#: a time of it in that window)), positions in the tests: :func:`_index`.
TestIndexMap = dict[int, tuple[tuple[int, ...], tuple[int, ...]]]
TestIndex = tuple[tuple[int, ...], TestIndexMap]


def _index(required: Sequence[Required | None]) -> TestIndex:
    """Tests run for every state (no required signals), and per signal the tests a recent
    enough time of it lets run."""
    free = tuple(i for i, r in enumerate(required) if r is None)
    by_signal: dict[int, list[tuple[int, int]]] = {}
    for i, r in enumerate(required):
        for signal, window in sorted(r or ()):
            by_signal.setdefault(signal, []).append((window, i))
    index: TestIndexMap = {}
    for signal, tests in by_signal.items():
        tests.sort(key=lambda wi: -wi[0])
        index[signal] = (tuple(-w for w, _ in tests), tuple(i for _, i in tests))
    return free, index


def _chosen(
    state: SignalState, now: int, free: tuple[int, ...], index: TestIndexMap
) -> Iterable[int]:
    """Positions of the tests ``state`` runs: the free ones, and those whose required signal
    it holds a time of within the window (times are sorted: the last is the latest)."""
    hits = []
    for signal, times in state.times.items():
        if times:
            found = index.get(signal)
            if found is not None:
                # Tests whose window reaches the latest time: window > now - latest.
                n = bisect_left(found[0], times[-1] - now)
                if n:
                    hits.append(found[1][:n])
    if not hits:
        return free
    if len(hits) == 1 and not free:
        return hits[0]
    return set(free).union(*hits)


@dataclass(frozen=True)
class EvaluationProgram:
    """``params``: the audiences' parameters of the state statement
    (:func:`~.state_read.state_sql`); a test per audience."""

    params: dict[str, Any]
    #: (audience id, test, the signal ids its rule reads)
    person_tests: tuple[tuple[str, Test, frozenset[int]], ...]
    #: (audience id, the any-event signal of its product key, test, the signal ids it reads)
    product_tests: tuple[tuple[str, int, Test, frozenset[int]], ...]
    thresholds: frozenset[int]
    signals: frozenset[Signal]
    #: Which tests a state runs (:func:`_index`), of the person tests and of the product tests.
    person_index: TestIndex
    product_index: TestIndex

    def members(self, states: PersonStates, now: int) -> dict[Key, tuple[str, ...]]:
        """The qualifying (audience, person) pairs with their products (empty for
        person-level audiences).

        A rule reads only its own signals, and a signal a state lacks reads as empty: a state
        with none of them gets the answer of the empty state, computed once per audience
        (with 25 audiences a site, most persons have the signals of a few). A rule that needs
        a time of some signals (:func:`~.rule_functions.required_signals`) runs only for the
        states holding one: a person's old products, their times trimmed away, run none."""
        found: dict[Key, tuple[str, ...]] = {}
        empty = SignalState()
        if self.person_tests:
            person_tests = [(a, t, ids, t(empty, now)) for a, t, ids in self.person_tests]
            free, index = self.person_index
            for person, state in states.persons.items():
                held = state.last.keys()
                for i in _chosen(state, now, free, index):
                    audience_id, test, ids, blank = person_tests[i]
                    if test(state, now) if not held.isdisjoint(ids) else blank:
                        found[(audience_id, person)] = ()
        if self.product_tests:
            product_tests = [(a, k, t, ids, t(empty, now)) for a, k, t, ids in self.product_tests]
            free, index = self.product_index
            chosen: dict[Key, list[str]] = {}
            for (person, product), state in states.products.items():
                held = state.last.keys()
                for i in _chosen(state, now, free, index):
                    audience_id, anchor, test, ids, blank = product_tests[i]
                    if anchor not in held:
                        continue
                    if test(state, now) if not held.isdisjoint(ids) else blank:
                        chosen.setdefault((audience_id, person), []).append(product)
            for key, products in chosen.items():
                found[key] = tuple(sorted(products))
        return found

    def dues(self, states: PersonStates) -> dict[str, int]:
        """Each person's next due time (persons with none left out)."""
        if not self.thresholds:
            return {}
        return {p: d for p, d in states.due.items() if d < NEVER}


def build_program(
    db: str,
    evaluate: Sequence[VersionedAudience],
    site_audiences: dict[str, AudienceSpec],
) -> EvaluationProgram:
    """The program evaluating ``evaluate`` (audiences of one site)."""
    rules = [compile_rule(a.spec, site_audiences) for a in evaluate]
    thresholds: frozenset[int] = frozenset().union(*(r.thresholds for r in rules))
    signals: frozenset[Signal] = frozenset().union(*(r.signals for r in rules))
    needs: dict[Signal, Need] = {}
    for rule in rules:
        for signal, need in rule.needs:
            needs[signal] = needs.get(signal, need).merge(need)
    person_tests: list[tuple[str, Test, frozenset[int]]] = []
    product_tests: list[tuple[str, int, Test, frozenset[int]]] = []
    person_required: list[Required | None] = []
    product_required: list[Required | None] = []
    for a, rule in zip(evaluate, rules, strict=True):
        test = rule_function(a.spec, site_audiences)
        required = required_signals(a.spec, site_audiences)
        ids = frozenset(s.id for s in rule.reads)
        if a.spec.products is None:
            person_tests.append((a.spec.id, test, ids))
            person_required.append(required)
        else:
            anchor = any_event(a.spec.site, a.spec.products.property).id
            product_tests.append((a.spec.id, anchor, test, ids))
            product_required.append(required)
    return EvaluationProgram(
        params=state_params(signals, needs, thresholds),
        person_tests=tuple(person_tests),
        product_tests=tuple(product_tests),
        thresholds=thresholds,
        signals=signals,
        person_index=_index(person_required),
        product_index=_index(product_required),
    )
