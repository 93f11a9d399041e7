"""The event steps of the feed as data: one fixed SQL expression tests any number of them.

ClickHouse analyses the feed's statement at every insert into ``events``, and a step written as
SQL (:func:`~.predicates.match_sql`) costs about 0.8 ms of that analysis: with 500 audiences, 73
distinct steps made 60 ms of every insert, and the cost grew with every audience added. Here
the steps are constants, one array per part (:data:`STEP_PARTS`: types, name, filters by
kind), and one lambda evaluates a step (the feed: the steps the row's site and type can pass).
What grows with the audiences is a constant, which ClickHouse reads far faster than it
analyses expressions.

The values filters read (*operands*: a property's text, number and presence, a field's) are
written once each, whatever the number of steps reading them, as three arrays a filter picks
from by position; each is computed only for the event types of the steps that read it (every
step tests the type before its filters, so another type never reads the default).

The answers are those of :func:`~.predicates.match_sql`, which stays the signal's identity and
the form ``explain`` shows; property tests hold both, and the Python tests of
:mod:`~.event_tests`, to the same answers on stored rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from leadback.audiences.predicates import as_text, json_string, literal
from leadback.audiences.rules import EventMatch, Filter

# Operations of a filter (the first element of its tuple).
TEXT_IN, TEXT_NOT_IN, CONTAINS, STARTS_WITH, EXISTS = 0, 1, 2, 3, 4
GT, GTE, LT, LTE, NUMBER_EQ, NUMBER_NE = 5, 6, 7, 8, 9, 10
_COMPARE = {"gt": GT, "gte": GTE, "lt": LT, "lte": LTE}

#: The steps as constants, one array per part (a test copies only the parts it reads): its
#: types, its name (none or one), and its filters by kind: text (operand, texts, negated),
#: contains and starts-with (operand, text), exists (operand), numbers (operand, value, and the
#: answer when the operand's number is below, equal to, above the value, or unordered: NaN).
STEP_PARTS = (
    "Array(String)",
    "Array(String)",
    "Array(Tuple(UInt16, Array(String), UInt8))",
    "Array(Tuple(UInt16, String))",
    "Array(Tuple(UInt16, String))",
    "Array(UInt16)",
    "Array(Tuple(UInt16, Float64, UInt8, UInt8, UInt8, UInt8))",
)
#: (below, equal, above, unordered) per numeric operation.
_ANSWERS = {
    GT: (0, 0, 1, 0),
    GTE: (0, 1, 1, 0),
    LT: (1, 0, 0, 0),
    LTE: (1, 1, 0, 0),
    NUMBER_EQ: (0, 1, 0, 0),
    NUMBER_NE: (1, 0, 1, 1),
}

#: (property or field, key): what a filter reads.
Operand = tuple[str, str]


@dataclass
class _Reads:
    """What the steps read of one operand: which forms, for which event types."""

    types: set[str] = field(default_factory=set)
    text: bool = False
    number: bool = False
    exists: bool = False


@dataclass(frozen=True)
class _Test:
    op: int
    operand: int
    texts: tuple[str, ...] = ()
    number: float = 0.0


def constant(value: object, type_: str) -> str:
    """``value`` as a ClickHouse constant of ``type_``, written as JSON in a string: a nested
    array written as SQL literals is analysed node by node (11 ms for the steps of 500
    audiences), the same in a string is one token, read once (1.4 ms). Numbers keep their
    double: both parsers round correctly."""
    return f"JSONExtract({literal(orjson.dumps(value).decode())}, {literal(type_)})"


class StepTable:
    """Distinct event steps as a constant, and the SQL that tests them on an ``events`` row.

    ``steps``: the steps in the order the feed numbers them (1-based positions)."""

    def __init__(self, steps: Sequence[EventMatch]) -> None:
        self._operands: dict[Operand, int] = {}
        self._reads: list[_Reads] = []
        self._rows: list[tuple[tuple[str, ...], tuple[str, ...], tuple[_Test, ...]]] = []
        for step in steps:
            tests = tuple(self._test(f, step.types) for f in step.where)
            name = () if step.name is None else (step.name,)
            self._rows.append((tuple(step.types), name, tests))

    def _operand(self, f: Filter, types: Sequence[str]) -> tuple[int, _Reads]:
        key: Operand = (
            ("property", f.property) if f.property is not None else ("field", f.field or "")
        )
        index = self._operands.get(key)
        if index is None:
            index = self._operands[key] = len(self._operands) + 1
            self._reads.append(_Reads())
        reads = self._reads[index - 1]
        reads.types.update(types)
        return index, reads

    def _test(self, f: Filter, types: Sequence[str]) -> _Test:
        index, reads = self._operand(f, types)
        value = f.value
        if f.op == "exists":
            reads.exists = True
            return _Test(EXISTS, index)
        if f.op in ("in", "not_in"):
            assert isinstance(value, list)
            reads.text = True
            op = TEXT_IN if f.op == "in" else TEXT_NOT_IN
            return _Test(op, index, tuple(as_text(v) for v in value))
        assert value is not None and not isinstance(value, list)
        if f.op in _COMPARE:
            assert isinstance(value, int | float) and not isinstance(value, bool)
            reads.exists = reads.number = True
            return _Test(_COMPARE[f.op], index, number=float(value))
        if f.op in ("contains", "starts_with"):
            reads.text = True
            return _Test(CONTAINS if f.op == "contains" else STARTS_WITH, index, (str(value),))
        if isinstance(value, int | float) and not isinstance(value, bool):
            reads.exists = reads.number = True
            return _Test(NUMBER_EQ if f.op == "eq" else NUMBER_NE, index, number=float(value))
        reads.text = True
        return _Test(TEXT_IN if f.op == "eq" else TEXT_NOT_IN, index, (as_text(value),))

    def columns(self) -> str:
        """The inner select's columns the tests read: the steps' parts ``_s1`` to ``_s7``
        (:data:`STEP_PARTS`) and :meth:`operand_columns`."""
        return f"{self.steps_columns()}, {self.operand_columns()}"

    def operand_columns(self) -> str:
        """``_t``, ``_n``, ``_h``: the operands' texts, numbers and presence for the row
        (``''``/0 where no step reads that form, or for event types no step reading it has)."""
        texts, numbers, present = [], [], []
        for (kind, key), reads in zip(self._operands, self._reads, strict=True):
            if kind == "property":
                args = ", ".join(literal(part) for part in key.split("."))
                text = json_string("properties", key)
                number = f"JSONExtractFloat(properties, {args})"
                exists = f"JSONHas(properties, {args})"
            else:
                text = f"toString({key})"  # tuple fields read as utm.source etc.
                number = f"toFloat64OrZero({key})"
                exists = f"toUInt8({key} != '')"
            types = ", ".join(literal(t) for t in sorted(reads.types))
            texts.append(f"if(type IN ({types}), {text}, '')" if reads.text else "''")
            numbers.append(
                f"if(type IN ({types}), {number}, toFloat64(0))" if reads.number else "toFloat64(0)"
            )
            present.append(
                f"if(type IN ({types}), {exists}, toUInt8(0))" if reads.exists else "toUInt8(0)"
            )
        if not texts:
            return "emptyArrayString() AS _t, emptyArrayFloat64() AS _n, emptyArrayUInt8() AS _h"
        return (
            f"[{', '.join(texts)}] AS _t, [{', '.join(numbers)}] AS _n, "
            f"[{', '.join(present)}] AS _h"
        )

    def steps_columns(self) -> str:
        """The steps as constants, one per part (:data:`STEP_PARTS`), ``_s1`` to ``_s7``."""
        rows = []
        for types, name, tests in self._rows:
            text = [
                [t.operand, list(t.texts), int(t.op == TEXT_NOT_IN)]
                for t in tests
                if t.op in (TEXT_IN, TEXT_NOT_IN)
            ]
            contains = [[t.operand, t.texts[0]] for t in tests if t.op == CONTAINS]
            starts = [[t.operand, t.texts[0]] for t in tests if t.op == STARTS_WITH]
            exists = [t.operand for t in tests if t.op == EXISTS]
            numbers = [[t.operand, t.number, *_ANSWERS[t.op]] for t in tests if t.op in _ANSWERS]
            rows.append([list(types), list(name), text, contains, starts, exists, numbers])
        return ", ".join(
            f"{constant([row[k] for row in rows], f'Array({part})')} AS _s{k + 1}"
            for k, part in enumerate(STEP_PARTS)
        )

    @staticmethod
    def test_sql(step: str, *, types: bool = True) -> str:
        """Whether the row passes step number ``step`` (an expression), over the row's
        ``type``, ``name`` and :meth:`columns`; ``types=False``: the row's type is known to be
        one of the step's (the feed's candidate lists), so it is not tested again."""
        type_test = f"has(_s1[{step}], type) AND " if types else ""
        return (
            f"({type_test}(empty(_s2[{step}]) OR name = _s2[{step}][1]) "
            f"AND arrayAll(f -> has(f.2, _t[f.1]) != f.3, _s3[{step}]) "
            f"AND arrayAll(f -> position(_t[f.1], f.2) > 0, _s4[{step}]) "
            f"AND arrayAll(f -> startsWith(_t[f.1], f.2), _s5[{step}]) "
            f"AND arrayAll(o -> _h[o] = 1, _s6[{step}]) "
            f"AND arrayAll(f -> _h[f.1] = 1 AND multiIf(_n[f.1] < f.2, f.3, _n[f.1] = f.2, f.4, "
            f"_n[f.1] > f.2, f.5, f.6) = 1, _s7[{step}]))"
        )
