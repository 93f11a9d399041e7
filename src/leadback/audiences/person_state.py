"""``person_state``: each visitor's signal rows as one key-value row (migration 0011).

The feed keeps it as events are inserted (a view merges each block into the stored values). A
backfill writes ``person_signals`` only, on its own client, then copies (:func:`copy_sql`) the
site's visitors' rows into ``person_state`` range by range on the rounds' client. One client runs
one statement at a time, so a copy never interleaves with a feed's read-merge-write of the same
key: the copied value is the whole of ``person_signals`` for the visitor, which holds everything
the feed wrote before it.
"""

from __future__ import annotations

#: ``person_signals`` rows per copy statement (a round's state read is about this size).
ROWS_PER_COPY = 20_000


def copy_sql(db: str, where: str) -> str:
    """Copy the ``person_signals`` rows matching ``where`` into ``person_state``: per visitor,
    the whole value (their times merged as a set, the latest time)."""
    return f"""INSERT INTO {db}.person_state
SELECT concat(site_id, '\\0', visitor_id), site_id, visitor_id,
    groupArray((signal, product, times, last_t))
FROM (
    SELECT site_id, visitor_id, signal, product, groupUniqArrayArray(times) AS times,
        max(last_t) AS last_t
    FROM {db}.person_signals
    WHERE {where}
    GROUP BY site_id, visitor_id, signal, product
)
GROUP BY site_id, visitor_id"""
