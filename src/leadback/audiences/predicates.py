"""SQL over one ``events`` row: does it match an audience rule's event step, which products is it
about. The signal feed (:mod:`leadback.audiences.signals`) runs these when events are stored."""

from __future__ import annotations

from leadback.audiences.rules import EventMatch, Filter
from leadback.store.literals import string


def literal(value: str | float | bool) -> str:
    """A SQL literal. Strings are quoted with ClickHouse's escaping rules."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return repr(float(value))
    return string(value)


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
        items = ", ".join(literal(as_text(v)) for v in value)
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
    return f"({text} {sym} {literal(as_text(value))})"


def as_text(value: str | float | bool) -> str:
    """A filter value as the text events are compared with (``true``, ``5`` for 5.0)."""
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


def product_ids_sql(key: str) -> str:
    """The product ids an event is about: ``properties.<key>`` and ``properties.items[].<key>``."""
    item = json_string("i", key)
    return (
        f"arrayDistinct(arrayFilter(p -> p != '', arrayConcat([{json_string('properties', key)}], "
        f"arrayMap(i -> {item}, JSONExtractArrayRaw(properties, 'items')))))"
    )
