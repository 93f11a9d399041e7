"""``person_state``: each visitor's signal rows as one key-value row (migration 0011).

A round reads its persons' signal rows by key here instead of from ``person_signals``, whose
read touched a granule in nearly every part and so grew with the table. The feed writes into
``signal_rows`` (a ``Null`` table); one view copies each block into ``person_signals``, the other
(:func:`view_sql`, made with the feed: :func:`ensure_view`) merges the block into the stored
values of its visitors. A backfill writes ``person_signals`` only, on its own client, then copies
(:func:`copy_sql`) the site's visitors into ``person_state`` on the rounds' client. One client
runs one statement at a time, so a copy never interleaves with a feed's read-merge-write of the
same key, and the copied value, the whole of ``person_signals`` for the visitor, holds
everything the feed wrote before it.
"""

from __future__ import annotations

import re

from leadback.logs import get_logger
from leadback.store.client import ClickHouseStore

log = get_logger(__name__)

#: ``person_signals`` rows per copy statement (a round's state read is about this size).
ROWS_PER_COPY = 20_000
#: The merging view, its name versioned: a segmenter that starts with a new definition drops
#: the views named in ``OLD_VIEWS`` and makes its own (:func:`ensure_view`).
VIEW = "signal_rows_to_person_state_v2"
OLD_VIEWS = ("signal_rows_to_person_state",)
_TTL = re.compile(r"EmbeddedRocksDB\((\d+)")


def view_sql(db: str) -> str:
    """The view merging each block of ``signal_rows`` into ``person_state``: the block's rows
    grouped per visitor and (signal, product), the stored values of those keys looked up by a
    ``direct`` join (no scan), and per visitor the stored entries the block does not touch kept
    as they are, the touched ones given the union of their times (a set: a block written twice
    changes nothing) and the latest time."""
    # Array functions per value instead of unnesting every stored entry and grouping them
    # again: a round's visitors hold ~18 entries each, its block touches one or two of them
    # (the insert of a 50M round: ~80 against ~190 ms for the merge, see docs/performance.md).
    return f"""CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{VIEW} TO {db}.person_state
AS SELECT n.k AS k, n.site_id AS site_id, n.visitor_id AS visitor_id,
    arrayConcat(
        arrayFilter(e -> NOT has(n.touched, (e.1, e.2)), r.v),
        arrayMap(x -> (x.1, x.2,
            arrayDistinct(arrayConcat(arrayFirst(e -> e.1 = x.1 AND e.2 = x.2, r.v).3, x.3)),
            greatest(x.4, arrayFirst(e -> e.1 = x.1 AND e.2 = x.2, r.v).4)), n.v)
    ) AS v
FROM (
    SELECT concat(site_id, '\\0', visitor_id) AS k, site_id, visitor_id,
        groupArray((signal, product, times, last_t)) AS v,
        arrayMap(x -> (x.1, x.2), v) AS touched
    FROM (
        SELECT site_id, visitor_id, signal, product,
            arrayDistinct(groupArrayArray(times)) AS times, max(last_t) AS last_t
        FROM {db}.signal_rows
        GROUP BY site_id, visitor_id, signal, product
    )
    GROUP BY site_id, visitor_id
) AS n
LEFT JOIN {db}.person_state AS r ON n.k = r.k
SETTINGS join_algorithm = 'direct'"""


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


async def ensure_view(store: ClickHouseStore) -> None:
    """Make the merging view if it is missing (with the feed: the feed's rows reach
    ``person_state`` only through it), in place of an earlier definition's. Called before any
    insert; with several segmenters, stop the others first (two definitions at once would
    merge a block twice: harmless, times are a set, but twice the work)."""
    for old in OLD_VIEWS:
        await store.command(f"DROP VIEW IF EXISTS {store.database}.{old}")
    await store.command(view_sql(store.database))


async def ensure_ttl(store: ClickHouseStore) -> None:
    """If the events TTL setting changed, remake the table with the new one (the engine's TTL
    is fixed when a table is made: a key kept for less than the events would lose times the
    rules may still read), then make the view. Called by the segmenter at start, before any
    insert; with several segmenters, stop the others first."""
    db = store.database
    wanted = store.settings.events_ttl_days * 86_400
    rows = await store.query(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} "
        "AND name = 'person_state'",
        {"db": db},
    )
    match = _TTL.search(str(rows[0][0])) if rows else None
    await store.command(f"DROP TABLE IF EXISTS {db}.person_state_v2")  # a crash's leftover
    if match is not None and int(match.group(1)) != wanted:
        await store.command(f"DROP VIEW IF EXISTS {db}.{VIEW}")
        await store.command(
            f"CREATE TABLE {db}.person_state_v2 AS {db}.person_state "
            f"ENGINE = EmbeddedRocksDB({wanted}) PRIMARY KEY k"
        )
        await store.command(f"INSERT INTO {db}.person_state_v2 SELECT * FROM {db}.person_state")
        await store.command(f"EXCHANGE TABLES {db}.person_state AND {db}.person_state_v2")
        await store.command(f"DROP TABLE {db}.person_state_v2")
        log.info("person_state TTL changed", seconds=wanted, was=int(match.group(1)))
    await ensure_view(store)
