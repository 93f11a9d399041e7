"""Long lists of ids written into a statement's text.

clickhouse-connect formats a bound parameter one character at a time in Python (its
``escape_str``), and ClickHouse parses an array literal element by element (about 13 µs per
(site, person) pair: 40 ms for a round of 3,000 persons, every time the list is used). So a list
travels as one string literal of hex-encoded ids, which ClickHouse splits and decodes in bulk
(about a third of the time); hex needs no escaping and cannot be mistaken for anything else.
The results are constant expressions: use them where an array is wanted, and inside ``IN``
through :func:`as_set` (an ``IN`` whose right side is an expression, not a literal or a
subquery, is evaluated row by row).
"""

from __future__ import annotations

from collections.abc import Iterable

_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'"})


def string(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.translate(_ESCAPES) + "'"


def strings(values: Iterable[str]) -> str:
    """An ``Array(String)`` expression of ``values``."""
    items = [v.encode().hex() for v in values]
    if not items:
        return "CAST([], 'Array(String)')"
    return f"arrayMap(x -> unhex(x), splitByChar(',', '{','.join(items)}'))"


def string_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    """An ``Array(Tuple(String, String))`` expression of ``pairs``."""
    items = [a.encode().hex() + ":" + b.encode().hex() for a, b in pairs]
    if not items:
        return "CAST([], 'Array(Tuple(String, String))')"
    return (
        "arrayMap(x -> (unhex(x[1]), unhex(x[2])), arrayMap(x -> splitByChar(':', x), "
        f"splitByChar(',', '{','.join(items)}')))"
    )


def as_set(array: str) -> str:
    """The right side of an ``IN`` holding the elements of ``array`` (a subquery: ClickHouse
    builds its set once and uses it on the primary key)."""
    return f"(SELECT arrayJoin({array}))"
