"""An evaluation program: what evaluating a set of audiences of one site runs, compiled once per
definition set — the fixed state statement with its parameters (:mod:`~.state_read`) and a
rule function per audience (:mod:`~.rule_functions`).

:meth:`EvaluationProgram.members` gives the same answers as the SQL statement of
:func:`leadback.audiences.query.build_evaluation`: the qualifying (audience, person) pairs
with their products, and each person's next due time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from leadback.audiences.compiler import NEVER, Need, compile_rule
from leadback.audiences.query import VersionedAudience
from leadback.audiences.rule_functions import SignalState, Test, rule_function
from leadback.audiences.rules import AudienceSpec
from leadback.audiences.signals import Signal, any_event
from leadback.audiences.state_read import Keep, PersonStates, keep_of

Key = tuple[str, str]
#: (audience id, test, the signal ids its rule reads)
PersonTest = tuple[str, Test, frozenset[int]]
#: (audience id, the any-event signal of its product key, test, the signal ids it reads)
ProductTest = tuple[str, int, Test, frozenset[int]]
#: The tests a set of changed signals can change the answer of, their audiences, and the
#: signals those read.
Chosen = tuple[list[PersonTest], list[ProductTest], frozenset[str], frozenset[int]]


@dataclass(frozen=True)
class EvaluationProgram:
    """``keep``: what the audiences read of a person's state (:mod:`~.state_read`); a test per
    audience."""

    keep: Keep
    person_tests: tuple[PersonTest, ...]
    product_tests: tuple[ProductTest, ...]
    thresholds: frozenset[int]
    signals: frozenset[Signal]
    _memo: dict[frozenset[int] | None, Chosen] = field(
        default_factory=dict, compare=False, repr=False
    )

    def affected(self, changed: frozenset[int]) -> tuple[frozenset[str], frozenset[int]]:
        """The audiences that read a signal of ``changed`` (the only ones a person's answers
        can change in, when those are the signals their new events changed: time-driven
        changes are the timer pass's), and the signals they read."""
        _, _, audiences, reads = self._tests_of(changed)
        return audiences, reads

    def _tests_of(self, changed: frozenset[int] | None) -> Chosen:
        found = self._memo.get(changed)
        if found is None:
            person = [
                t for t in self.person_tests if changed is None or not changed.isdisjoint(t[2])
            ]
            product = [
                t for t in self.product_tests if changed is None or not changed.isdisjoint(t[3])
            ]
            ids = frozenset(t[0] for t in person) | frozenset(t[0] for t in product)
            reads = frozenset().union(*(t[2] for t in person), *(t[3] for t in product))
            reads |= {t[1] for t in product}  # a product state needs its anchor
            found = self._memo[changed] = (person, product, ids, reads)
        return found

    def members(
        self,
        states: PersonStates,
        now: int,
        changed: Mapping[str, frozenset[int]] | None = None,
    ) -> dict[Key, tuple[str, ...]]:
        """The qualifying (audience, person) pairs with their products (empty for
        person-level audiences); for a person in ``changed``, only among the audiences
        :meth:`affected` by their changed signals.

        A rule reads only its own signals, and a signal a state lacks reads as empty: a state
        with none of them gets the answer of the empty state, computed once per audience
        (with 25 audiences a site, most persons have the signals of a few)."""
        found: dict[Key, tuple[str, ...]] = {}
        empty = SignalState()
        blanks = {a: t(empty, now) for a, t, _ in self.person_tests}
        blanks.update({a: t(empty, now) for a, _, t, _ in self.product_tests})
        changed = changed or {}
        everything = self._tests_of(None)
        if self.person_tests:
            for person, state in states.persons.items():
                held = state.last.keys()
                signals = changed.get(person)
                tests = everything[0] if signals is None else self._tests_of(signals)[0]
                for audience_id, test, ids in tests:
                    if test(state, now) if not held.isdisjoint(ids) else blanks[audience_id]:
                        found[(audience_id, person)] = ()
        if self.product_tests:
            chosen: dict[Key, list[str]] = {}
            for (person, product), state in states.products.items():
                held = state.last.keys()
                signals = changed.get(person)
                products = everything[1] if signals is None else self._tests_of(signals)[1]
                for audience_id, anchor, test, ids in products:
                    if anchor not in held:
                        continue
                    if test(state, now) if not held.isdisjoint(ids) else blanks[audience_id]:
                        chosen.setdefault((audience_id, person), []).append(product)
            for key, products_of in chosen.items():
                found[key] = tuple(sorted(products_of))
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
    person_tests: list[PersonTest] = []
    product_tests: list[ProductTest] = []
    for a, rule in zip(evaluate, rules, strict=True):
        test = rule_function(a.spec, site_audiences)
        ids = frozenset(s.id for s in rule.reads)
        if a.spec.products is None:
            person_tests.append((a.spec.id, test, ids))
        else:
            anchor = any_event(a.spec.site, a.spec.products.property).id
            product_tests.append((a.spec.id, anchor, test, ids))
    return EvaluationProgram(
        keep=keep_of(signals, needs, thresholds),
        person_tests=tuple(person_tests),
        product_tests=tuple(product_tests),
        thresholds=thresholds,
        signals=signals,
    )
