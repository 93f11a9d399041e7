"""Signal state over stored history: the feed view for new events, backfills for old ones.

:meth:`SignalBackfill.install_feed` points the feed (:func:`~.signals.feed_sql`) at the signals of
the loaded audiences: the new view is created before the old one is dropped, so every insert
meets at least one of them. :meth:`SignalBackfill.fill` then computes the new signals over the
events already stored, one range of visitors at a time (ranges cut from the primary index, so
each statement reads only its range and memory stays bounded whatever the table's size), and a
last pass over the events inserted around the feed's creation (an insert that began before the
view existed does not go through it). Signal rows are sets, so an event written by both the
feed and a backfill counts once.

Runs on its own store client: its statements do not queue behind the segmenter's rounds.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import orjson

from leadback.audiences.person_state import ROWS_PER_COPY, copy_sql, ensure_view
from leadback.audiences.predicates import literal
from leadback.audiences.signals import (
    FEED_PREFIX,
    Signal,
    feed_name,
    feed_sql,
    older_feed_names,
    state_select,
)
from leadback.logs import get_logger
from leadback.store.client import ClickHouseStore

log = get_logger(__name__)

#: Events per backfill statement: a few seconds of one core, a bounded amount of memory.
ROWS_PER_RANGE = 1_000_000
#: An insert in flight when the feed was created may hold events this old (late client times).
_LATE_EVENTS_MS = 8 * 86_400_000
_IN_FLIGHT_MS = 120_000

Range = tuple[str | None, str | None]
Progress = Callable[[int, int, int], Awaitable[None]]  # (ranges done, ranges, rows read)


@dataclass(frozen=True)
class FeedChange:
    """What installing a feed did: signals that joined it, and those that left it."""

    name: str
    added: frozenset[Signal]
    dropped_ids: frozenset[int]
    created_at_ms: int


def range_condition(bounds: Range, column: str = "visitor_id") -> str:
    """SQL for ``lower <= column < upper`` (an open end where a bound is ``None``)."""
    lower, upper = bounds
    parts = []
    if lower is not None:
        parts.append(f"{column} >= {literal(lower)}")
    if upper is not None:
        parts.append(f"{column} < {literal(upper)}")
    return " AND ".join(parts) or "1"


class SignalBackfill:
    """Installs the feed and backfills signals; records which signals are complete."""

    def __init__(
        self,
        store: ClickHouseStore,
        *,
        rows_per_range: int = ROWS_PER_RANGE,
        state_store: ClickHouseStore | None = None,
    ) -> None:
        self._store = store
        # The rounds' client: copies into `person_state` run there (see :mod:`.person_state`).
        self._state_store = state_store or store
        self._db = store.database
        self._rev = 0
        self.rows_per_range = rows_per_range

    def _next_rev(self) -> int:
        self._rev = max(self._rev + 1, time.time_ns())
        return self._rev

    async def complete(self) -> set[int]:
        """Ids of the signals whose state holds all stored history."""
        rows = await self._store.query(
            f"SELECT signal FROM {self._db}.signal_backfills FINAL WHERE state = 'done'"
        )
        return {int(r[0]) for r in rows}

    async def ensure_feed(self, signals: Sequence[Signal]) -> None:
        """Create the feed of ``signals`` if it is missing (a migration that rebuilt
        ``person_signals`` dropped it, or its statement's layout is new) and drop the same
        signals' feed of an older layout; other feeds are left to :meth:`install_feed`."""
        await ensure_view(self._store)
        if signals:
            await self._store.command(feed_sql(self._db, signals))
            for old in older_feed_names(signals):
                await self._store.command(f"DROP VIEW IF EXISTS {self._db}.{old}")

    async def install_feed(self, signals: Sequence[Signal]) -> FeedChange:
        """Make the feed match ``signals``; returns the signals that were not fed before."""
        name = feed_name(signals)
        existing = {
            str(r[0])
            for r in await self._store.query(
                "SELECT name FROM system.tables WHERE database = {db:String} "
                "AND startsWith(name, {p:String})",
                {"db": self._db, "p": FEED_PREFIX},
            )
        }
        created_at = int(time.time() * 1000)
        await ensure_view(self._store)
        if signals and name not in existing:
            await self._store.command(feed_sql(self._db, signals))
            log.info("signal feed installed", view=name, signals=len(set(signals)))
        for old in sorted(existing - ({name} if signals else set())):
            await self._store.command(f"DROP VIEW IF EXISTS {self._db}.{old}")
        complete = await self.complete()
        wanted = {s.id for s in signals}
        recorded = await self._store.query(
            f"SELECT signal FROM {self._db}.signal_backfills FINAL WHERE state != 'dropped'"
        )
        dropped = {int(r[0]) for r in recorded} - wanted
        if dropped:
            # Not fed any more: if an audience needs one again, it is filled again. Its rows
            # only take space (and would be stale) until then.
            await self._record_ids(dropped, "dropped")
            await self._store.command(
                f"DELETE FROM {self._db}.person_signals WHERE signal IN {{d:Array(UInt64)}}",
                {"d": sorted(dropped)},
            )
        added = frozenset(s for s in signals if s.id not in complete)
        return FeedChange(name, added, frozenset(dropped), created_at)

    async def ranges(self, table: str, site: str, rows_per_range: int) -> list[Range]:
        """Visitor-id ranges of ``site`` in ``table`` holding about ``rows_per_range`` rows each,
        cut from the table's primary index (its marks), not from its rows."""
        index = f"mergeTreeIndex({literal(self._db)}, {literal(table)})"
        rows = await self._store.query(
            f"SELECT visitor_id, rows_in_granule FROM {index} "
            "WHERE site_id = {s:String} ORDER BY visitor_id",
            {"s": site},
        )
        bounds: list[str] = []
        acc = 0
        for visitor, granule_rows in rows:
            acc += int(granule_rows)
            if acc >= rows_per_range:
                if not bounds or str(visitor) > bounds[-1]:
                    bounds.append(str(visitor))
                acc = 0
        edges: list[str | None] = [None, *bounds, None]
        return list(itertools.pairwise(edges))

    async def fill(
        self,
        site: str,
        signals: Sequence[Signal],
        *,
        since_ms: int,
        progress: Progress | None = None,
        rows_per_range: int | None = None,
    ) -> int:
        """Compute ``signals`` (of ``site``) over the stored events, range by range, then over
        the events inserted since ``since_ms`` (the feed's creation) in case an insert raced
        it; merge them into the site's visitors' ``person_state``; mark them complete. Returns
        the events read."""
        if not signals:
            return 0
        await self._record(signals, "running")
        ranges = await self.ranges("events", site, rows_per_range or self.rows_per_range)
        rows_read = 0
        for i, bounds in enumerate(ranges):
            where = f"site_id = {literal(site)} AND {range_condition(bounds)}"
            rows_read += await self._insert(signals, where)
            if progress is not None:
                await progress(i + 1, len(ranges), rows_read)
        late = (
            f"site_id = {literal(site)} "
            f"AND occurred_at >= fromUnixTimestamp64Milli({since_ms - _LATE_EVENTS_MS}) "
            f"AND inserted_at >= fromUnixTimestamp64Milli({since_ms - _IN_FLIGHT_MS})"
        )
        rows_read += await self._insert(signals, late)
        ids = ", ".join(str(s.id) for s in signals)
        for bounds in await self.ranges("person_signals", site, ROWS_PER_COPY):
            await self._state_store.command(
                copy_sql(
                    self._db,
                    f"site_id = {literal(site)} AND {range_condition(bounds)} "
                    f"AND signal IN ({ids})",
                )
            )
        await self._record(signals, "done")
        log.info("signals backfilled", site=site, signals=len(signals), events=rows_read)
        return rows_read

    async def _insert(self, signals: Sequence[Signal], where: str) -> int:
        counted = await self._store.query(
            f"SELECT count() FROM {self._db}.events WHERE {where}",
        )
        if not counted or not int(counted[0][0]):
            return 0
        await self._store.command(
            f"INSERT INTO {self._db}.person_signals "
            f"(site_id, visitor_id, signal, product, times, last_t)\n"
            f"{state_select(self._db, signals, where)}\n"
            "SETTINGS optimize_aggregation_in_order = 1"
        )
        return int(counted[0][0])

    async def _record(self, signals: Sequence[Signal], state: str) -> None:
        rev = self._next_rev()
        rows = b"\n".join(
            orjson.dumps(
                {
                    "site_id": s.site,
                    "signal": s.id,
                    "state": state,
                    "predicate": s.predicate,
                    "rev": rev,
                }
            )
            for s in signals
        )
        await self._store.insert_json_rows(
            "signal_backfills", rows, dedup_token=f"signals:{state}:{rev}"
        )

    async def _record_ids(self, ids: set[int], state: str) -> None:
        rev = self._next_rev()
        await self._store.command(
            f"INSERT INTO {self._db}.signal_backfills (site_id, signal, state, predicate, rev) "
            f"SELECT site_id, signal, {literal(state)}, predicate, {rev} "
            f"FROM {self._db}.signal_backfills FINAL WHERE signal IN ({', '.join(map(str, ids))})"
        )
