"""SQL literals for long lists of ids, written into a statement's text.

clickhouse-connect formats a bound parameter one character at a time in Python (its
``escape_str``); a round binding a few thousand (site, person) pairs spent a tenth of the
segmenter's Python time there. These use ``str.translate`` (C) and are what a parameter would
have become, so ClickHouse parses the same text.
"""

from __future__ import annotations

from collections.abc import Iterable

_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'"})


def string(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.translate(_ESCAPES) + "'"


def strings(values: Iterable[str]) -> str:
    """An ``Array(String)`` literal."""
    return "[" + ",".join(["'" + v.translate(_ESCAPES) + "'" for v in values]) + "]"


def string_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    """An ``Array(Tuple(String, String))`` literal (``[('', '')]`` typed by ClickHouse from
    its elements; an empty list is cast)."""
    items = ["('" + a.translate(_ESCAPES) + "','" + b.translate(_ESCAPES) + "')" for a, b in pairs]
    if not items:
        return "CAST([], 'Array(Tuple(String, String))')"
    return "[" + ",".join(items) + "]"
