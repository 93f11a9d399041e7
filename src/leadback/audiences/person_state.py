"""``person_state``: each visitor's signal rows as one key-value row (migration 0011), all a
round reads of their history.

The feed writes into ``signal_rows`` (a ``Null`` table); its view (:func:`view_sql`, made with
the feed: :func:`ensure_view`) merges each block into the stored values of its visitors, looked
up by key. A backfill computes its signals over stored events into ``person_signals`` (since
0014 nothing else writes there), on its own client, then merges (:func:`copy_sql`) the site's
rows of those signals into ``person_state`` on the rounds' client: one client runs one
statement at a time, so a backfill's merge never interleaves with a feed's read-merge-write of
the same key, and both merge by union (times are a set), so their order does not matter.
"""

from __future__ import annotations

import re

from leadback.logs import get_logger
from leadback.store.client import ClickHouseStore

log = get_logger(__name__)

#: ``person_signals`` rows per merge statement (a round's state read is about this size).
ROWS_PER_COPY = 20_000
#: The merging view, its name versioned: a segmenter that starts with a new definition drops
#: the views named in ``OLD_VIEWS`` and makes its own (:func:`ensure_view`).
VIEW = "signal_rows_to_person_state_v2"
OLD_VIEWS = ("signal_rows_to_person_state",)
_TTL = re.compile(r"EmbeddedRocksDB\((\d+)")


def merge_select(db: str, rows: str) -> str:
    """``person_state`` rows merging ``rows`` (a table or a parenthesized ``SELECT`` of
    ``site_id, visitor_id, signal, product, times, last_t``) into the stored values of their
    visitors: the rows grouped per visitor and (signal, product), the stored values of those
    keys looked up by a ``direct`` join (no scan), and per visitor the stored entries the rows
    do not touch kept as they are, the touched ones given the union of their times (a set: rows
    merged twice change nothing) and the latest time."""
    # Array functions per value instead of unnesting every stored entry and grouping them
    # again: a round's visitors hold ~18 entries each, its block touches one or two of them
    # (the insert of a 50M round: ~80 against ~190 ms for the merge, see docs/performance.md).
    return f"""SELECT n.k AS k, n.site_id AS site_id, n.visitor_id AS visitor_id,
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
        FROM {rows}
        GROUP BY site_id, visitor_id, signal, product
    )
    GROUP BY site_id, visitor_id
) AS n
LEFT JOIN {db}.person_state AS r ON n.k = r.k
SETTINGS join_algorithm = 'direct'"""


def view_sql(db: str) -> str:
    """The view merging each block of ``signal_rows`` (the feed's) into ``person_state``
    (:func:`merge_select`)."""
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{VIEW} TO {db}.person_state\n"
        f"AS {merge_select(db, f'{db}.signal_rows')}"
    )


def copy_sql(db: str, where: str) -> str:
    """Merge the ``person_signals`` rows matching ``where`` (a backfill's) into
    ``person_state`` (:func:`merge_select`)."""
    return f"INSERT INTO {db}.person_state\n" + merge_select(
        db,
        "(SELECT site_id, visitor_id, signal, product, times, last_t "
        f"FROM {db}.person_signals WHERE {where})",
    )


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
        # Rounds' writes to the memtable (migration 0015), after the copy, a bulk load.
        await store.command(
            f"ALTER TABLE {db}.person_state_v2 MODIFY SETTING optimize_for_bulk_insert = 0"
        )
        await store.command(f"EXCHANGE TABLES {db}.person_state AND {db}.person_state_v2")
        await store.command(f"DROP TABLE {db}.person_state_v2")
        log.info("person_state TTL changed", seconds=wanted, was=int(match.group(1)))
    await ensure_view(store)
