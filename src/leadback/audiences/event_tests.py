"""The event steps of audience rules as Python tests over one canonical event.

The twin of :mod:`leadback.audiences.predicates`, which writes the same tests as SQL over a
stored ``events`` row: for every event and every step, both answer the same (a property test
runs both against ClickHouse), and :class:`SignalTests` makes the feed view's entries for an
event. An evaluation that keeps its persons' signal state in memory would test a round's
events here instead of reading back what the feed wrote; the engine does not yet (the user
today is ``bench.memory_round``, which measures that idea).

Where the answers come from (ClickHouse's semantics, reproduced):

* a property's *text* is ``JSONExtractString`` for a JSON string and ``JSONExtractRaw``
  otherwise: ClickHouse prints the value again, compact, with its own number format (the
  shortest digits of the double, plain from 1e-6 up to below 1e21 and ``1e21``/``1e-7``
  beyond: ``1.50`` reads ``1.5``, ``1e2`` reads ``100``), control characters escaped in
  capital hex and ``\\u2028``/``\\u2029`` escaped; a missing key reads ``''`` and a JSON
  ``null`` reads ``null``; an item of ``properties.items`` is printed and read again first;
* a property's *number* is ``JSONExtractFloat``: numbers as they are, a string holding only a
  number (``"12"``, ``"1e2"``, ``"-.5"``, ``"inf"``; not ``" 5"``) parsed, anything else 0;
  a field's is ``toFloat64OrZero`` of its text, the same parse;
* a property *exists* when the key is there (``JSONHas``, even for ``null``); a field when its
  text is not empty (a missing field is stored as ``''``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson

from leadback.audiences.predicates import as_text
from leadback.audiences.rules import EventMatch, Filter
from leadback.audiences.signals import Signal, by_id

#: A canonical event as decoded from its JSON.
EventRow = Mapping[str, Any]
EventTest = Callable[[EventRow], bool]

_MISSING = object()
_NUMBER = re.compile(
    r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|infinity|nan)", re.I | re.ASCII
)


def clickhouse_float(text: str) -> float:
    """``toFloat64OrZero(text)``: the number a string holds entirely, else 0."""
    if not _NUMBER.fullmatch(text):
        return 0.0
    return float(text)


def _double_text(value: float) -> str:
    """A double as ClickHouse prints it in JSON."""
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    # repr: the shortest digits that read back as the same double.
    shortest = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, shortest.digits))
    exponent = len(digits) - 1 + int(shortest.exponent)  # of the first digit
    sign = "-" if value < 0 else ""
    if -7 < exponent < 21:
        if exponent >= 0:
            head = digits[: exponent + 1].ljust(exponent + 1, "0")
            tail = digits[exponent + 1 :]
        else:
            head, tail = "0", "0" * (-exponent - 1) + digits
        return sign + head + ("." + tail if tail else "")
    return f"{sign}{digits[0]}{'.' + digits[1:] if len(digits) > 1 else ''}e{exponent}"


# An escaped backslash, or a control character's escape (ClickHouse writes its hex in capitals).
_ESCAPE = re.compile(r"\\\\|\\u00[0-9a-f]{2}")


def _capital_escape(m: re.Match[str]) -> str:
    text = m.group(0)
    return text if len(text) == 2 else "\\u" + text[2:].upper()


def _json_string(value: str) -> str:
    """A string as ClickHouse writes it in JSON."""
    text = _ESCAPE.sub(_capital_escape, orjson.dumps(value).decode())
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def raw_text(value: Any) -> str:
    """``JSONExtractRaw`` of a decoded JSON value."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _double_text(value)
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_json_string(k)}:{raw_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(raw_text(v) for v in value) + "]"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def json_text(value: Any) -> str:
    """What ``predicates.json_string`` reads for a value (``_MISSING``: no such key)."""
    if value is _MISSING:
        return ""
    if isinstance(value, str):
        return value
    return raw_text(value)


def json_number(value: Any) -> float:
    """``JSONExtractFloat`` of a value (``_MISSING``: no such key)."""
    if isinstance(value, bool) or value is _MISSING or value is None:
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return clickhouse_float(value)
    return 0.0


def _lookup(doc: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(doc, Mapping) or part not in doc:
            return _MISSING
        doc = doc[part]
    return doc


_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1


def _reparsed(value: Any) -> Any:
    """A value as ClickHouse reads it back after printing it (``JSONExtractArrayRaw`` hands
    on each item as text): a double printed as a whole number comes back as an integer, or
    beyond 64 bits as a string of its digits."""
    if isinstance(value, float):
        text = _double_text(value)
        if "." in text or "e" in text:
            return value
        whole = int(text)  # read back as an integer: -0.0 becomes 0
        return whole if _INT_MIN <= whole <= _UINT_MAX else text
    if isinstance(value, Mapping):
        return {k: _reparsed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reparsed(v) for v in value]
    return value


def field_text(event: EventRow, field: str) -> str:
    """A field's stored text (``utm.source``: the tuple's element; ``null`` stored as ``''``)."""
    head, _, tail = field.partition(".")
    value = event.get(head)
    if tail:
        value = value.get(tail) if isinstance(value, Mapping) else None
    return value if isinstance(value, str) else ""


def _getters(
    f: Filter,
) -> tuple[Callable[[EventRow], str], Callable[[EventRow], float], Callable[[EventRow], bool]]:
    """(text, number, exists) of the filter's property or field."""
    if f.property is not None:
        path = f.property.split(".")

        def value(e: EventRow) -> Any:
            return _lookup(e.get("properties"), path)

        return (
            lambda e: json_text(value(e)),
            lambda e: json_number(value(e)),
            lambda e: value(e) is not _MISSING,
        )
    assert f.field is not None
    name = f.field
    return (
        lambda e: field_text(e, name),
        lambda e: clickhouse_float(field_text(e, name)),
        lambda e: field_text(e, name) != "",
    )


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def compile_filter(f: Filter) -> EventTest:
    """One filter of a step (``predicates._filter_sql``)."""
    text, number, exists = _getters(f)
    op, value = f.op, f.value
    if op == "exists":
        return exists
    if op in ("in", "not_in"):
        assert isinstance(value, list)
        allowed = frozenset(as_text(v) for v in value)
        if op == "in":
            return lambda e: text(e) in allowed
        return lambda e: text(e) not in allowed
    assert value is not None and not isinstance(value, list)
    if op in ("gt", "gte", "lt", "lte"):
        bound = float(value)
        if op == "gt":
            return lambda e: exists(e) and number(e) > bound
        if op == "gte":
            return lambda e: exists(e) and number(e) >= bound
        if op == "lt":
            return lambda e: exists(e) and number(e) < bound
        return lambda e: exists(e) and number(e) <= bound
    if op == "contains":
        needle = str(value)
        return lambda e: needle in text(e)
    if op == "starts_with":
        prefix = str(value)
        return lambda e: text(e).startswith(prefix)
    if _numeric(value):
        target = float(value)
        if op == "eq":
            return lambda e: exists(e) and number(e) == target
        return lambda e: exists(e) and number(e) != target
    expected = as_text(value)
    if op == "eq":
        return lambda e: text(e) == expected
    return lambda e: text(e) != expected


def compile_match(m: EventMatch) -> EventTest:
    """A rule's event step (``predicates.match_sql``): type, name, every filter."""
    types = frozenset(m.types)
    name = m.name
    filters = [compile_filter(f) for f in m.where]

    def test(e: EventRow) -> bool:
        if e.get("type") not in types:
            return False
        if name is not None and (e.get("name") or "") != name:
            return False
        return all(f(e) for f in filters)

    return test


def product_ids(event: EventRow, key: str) -> list[str]:
    """The products an event is about (``predicates.product_ids_sql``): ``properties.<key>``
    and ``properties.items[].<key>``, as text, without empty ones and repeats, in order."""
    path = key.split(".")
    props = event.get("properties")
    found = [json_text(_lookup(props, path))]
    items = props.get("items") if isinstance(props, Mapping) else None
    if isinstance(items, list):
        found.extend(json_text(_lookup(_reparsed(item), path)) for item in items)
    return list(dict.fromkeys(p for p in found if p != ""))


def eligible(event: EventRow) -> bool:
    """``signals.ELIGIBLE``: events audiences see (no bots, a real visitor id, not a signal)."""
    return (
        not event.get("bot")
        and not str(event.get("visitor_id") or "").startswith("e:")
        and event.get("source") != "signal"
    )


#: One entry the feed makes for an event: (signal id, product id or ``''``, keep its time).
Entry = tuple[int, str, bool]


def _any_event(_e: EventRow) -> bool:
    return True


class SignalTests:
    """The feed view's work for one event, in Python (:func:`~.signals.entries_select`): the
    entries an event makes for ``signals`` of any number of sites, each distinct step tested
    once per event."""

    def __init__(self, signals: Iterable[Signal]) -> None:
        by_site: dict[str, dict[str, tuple[EventTest, list[Signal]]]] = {}
        for signal in by_id(signals):
            tests = by_site.setdefault(signal.site, {})
            if signal.predicate not in tests:
                if signal.predicate == "1":
                    test: EventTest = _any_event
                elif signal.match is not None:
                    test = compile_match(signal.match)
                else:
                    raise ValueError(f"signal {signal.id} has no rule step to test in Python")
                tests[signal.predicate] = (test, [])
            tests[signal.predicate][1].append(signal)
        self._sites = {site: list(tests.values()) for site, tests in by_site.items()}

    def entries(self, event: EventRow) -> list[Entry]:
        """What the feed adds for ``event`` (nothing for one audiences do not see)."""
        tests = self._sites.get(str(event.get("site_id")))
        if not tests or not eligible(event):
            return []
        found: list[Entry] = []
        for test, signals in tests:
            if not test(event):
                continue
            for s in signals:
                if s.product_key is None:
                    found.append((s.id, "", s.times))
                else:
                    found.extend((s.id, p, s.times) for p in product_ids(event, s.product_key))
        return found
