"""Bringing new and changed audience definitions live, beside the rounds.

A definition whose version has not been materialized yet goes through two phases, recorded in
``audience_refreshes`` (read by the admin API and ``leadback audiences status``):

1. ``backfill``: the feed is pointed at the signals of every active audience, and the signals
   nobody had are computed over the stored history (:mod:`~.backfill`), range by range, on the
   backfill's own store client: rounds go on meanwhile (for the audiences already live).
2. ``evaluate``: everyone of the site is evaluated for the audience (and those referring to it),
   a range of visitors at a time, each range under the engine's lock like a round: a round
   waits at most one range. Enters and exits are published like any other.

Then the version is marked evaluated. A crash in between starts the work again: backfills and
evaluations are idempotent (sets; memberships diffed, not appended).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from leadback.audiences.backfill import SignalBackfill, range_condition
from leadback.audiences.definitions import LoadedAudiences
from leadback.audiences.evaluation import Evaluator
from leadback.audiences.repository import AudienceRepository, StoredAudience
from leadback.audiences.signals import ELIGIBLE, by_id
from leadback.clock import Clock
from leadback.events import format_ts
from leadback.identity.graph import IdentityGraph
from leadback.logs import get_logger
from leadback.store.client import ClickHouseStore

log = get_logger(__name__)

#: ``events`` rows per range whose visitors a refresh lists in one statement.
EVENTS_PER_RANGE = 200_000
#: Visitors evaluated at once (and per hold of the rounds' lock): a round's size.
VISITORS_PER_EVALUATION = 3_000


@dataclass(frozen=True)
class RefreshStatus:
    """How far an audience version is on its way live."""

    site: str
    audience_id: str
    version: int
    phase: str  # backfill | evaluate | done
    done: int
    total: int
    rows_read: int
    started_at: Any
    updated_at: Any

    @property
    def fraction(self) -> float:
        if self.phase == "done":
            return 1.0
        return self.done / self.total if self.total else 0.0


class Refresher:
    """Runs the two phases for a set of stale definitions."""

    def __init__(
        self,
        store: ClickHouseStore,
        backfill: SignalBackfill,
        definitions: LoadedAudiences,
        repository: AudienceRepository,
        evaluator: Evaluator,
        identity: IdentityGraph,
        *,
        lock: asyncio.Lock,
        settle: Callable[[], Awaitable[None]],
        clock: Clock,
    ) -> None:
        self._store = store
        self._db = store.database
        self._backfill = backfill
        self._definitions = definitions
        self._repository = repository
        self._evaluator = evaluator
        self._identity = identity
        self._lock = lock
        self._settle = settle
        self._clock = clock
        self._rev = 0
        self.events_per_range = EVENTS_PER_RANGE
        self.visitors_per_evaluation = VISITORS_PER_EVALUATION

    async def run(self, stale: Sequence[StoredAudience]) -> None:
        """Bring ``stale`` (active, not yet materialized versions) live."""
        started = self._clock.now()
        change = await self._backfill.install_feed(self._definitions.all_signals())
        for site in sorted({a.spec.site for a in stale}):
            site_stale = [a for a in stale if a.spec.site == site]
            targets = self._definitions.with_dependents(site, {a.spec.id for a in site_stale})
            added = by_id(s for s in change.added if s.site == site)
            rows_read = 0
            if added:

                async def progress(
                    done: int, total: int, rows: int, targets: list[StoredAudience] = targets
                ) -> None:
                    await self._record(targets, "backfill", done, total, rows, started)

                await self._record(targets, "backfill", 0, 1, 0, started)
                rows_read = await self._backfill.fill(
                    site, added, since_ms=change.created_at_ms, progress=progress
                )
            self._definitions.set_complete(await self._backfill.complete())
            await self._evaluate_site(site, targets, started, rows_read)
            for a in site_stale:
                await self._repository.mark_evaluated(site, a.spec.id, a.version)
        # Signals of other sites may have been added too (a site's first audience elsewhere).
        rest = sorted({s.site for s in change.added} - {a.spec.site for a in stale})
        for site in rest:
            await self._backfill.fill(
                site,
                by_id(s for s in change.added if s.site == site),
                since_ms=change.created_at_ms,
            )
        self._definitions.set_complete(await self._backfill.complete())

    async def _evaluate_site(
        self, site: str, targets: list[StoredAudience], started: float, rows_read: int
    ) -> None:
        # Every visitor with an event audiences see (their state holds nothing else), listed
        # a range of the primary index at a time and evaluated a round's worth at a time.
        ranges = await self._backfill.ranges("events", site, self.events_per_range)
        now = self._evaluator.now_ms()
        changes = 0
        step = self.visitors_per_evaluation
        for i, bounds in enumerate(ranges):
            rows = await self._store.query(
                f"SELECT DISTINCT visitor_id FROM {self._db}.events "
                f"WHERE site_id = {{s:String}} AND {range_condition(bounds)} AND {ELIGIBLE} "
                "ORDER BY visitor_id",
                {"s": site},
            )
            visitors = [str(r[0]) for r in rows]
            for j in range(0, len(visitors), step):
                async with self._lock:
                    await self._settle()
                    found = await self._identity.persons_of(site, visitors[j : j + step])
                    changes += await self._evaluator.persons(
                        site,
                        set(found.values()),
                        token=f"rules:{site}:{now}:{i}:{j}",
                        audiences=targets,
                        exit_reason="rule_changed",
                    )
            await self._record(targets, "evaluate", i + 1, len(ranges), rows_read, started)
        await self._record(targets, "done", len(ranges), len(ranges), rows_read, started)
        log.info(
            "audiences re-evaluated",
            site=site,
            audiences=[a.spec.id for a in targets],
            changes=changes,
            ranges=len(ranges),
        )

    async def _record(
        self,
        targets: Sequence[StoredAudience],
        phase: str,
        done: int,
        total: int,
        rows_read: int,
        started: float,
    ) -> None:
        self._rev = max(self._rev + 1, time.time_ns())
        body = b"\n".join(
            orjson.dumps(
                {
                    "site_id": a.spec.site,
                    "audience_id": a.spec.id,
                    "version": a.version,
                    "phase": phase,
                    "done": done,
                    "total": total,
                    "rows_read": rows_read,
                    "started_at": format_ts(started),
                    "rev": self._rev,
                }
            )
            for a in targets
        )
        await self._store.insert_json_rows(
            "audience_refreshes", body, dedup_token=f"refresh:{self._rev}"
        )


AudienceState = Literal["live", "backfill", "evaluate", "pending"]


def state_of(
    audience: StoredAudience, evaluated: int | None, status: RefreshStatus | None
) -> AudienceState:
    """``live``, ``backfill``, ``evaluate`` or ``pending`` for an audience's current version."""
    if evaluated == audience.version:
        return "live"
    if status is not None and status.version == audience.version:
        if status.phase == "backfill":
            return "backfill"
        if status.phase == "evaluate":
            return "evaluate"
    return "pending"


async def refresh_statuses(store: ClickHouseStore, site: str | None = None) -> list[RefreshStatus]:
    """The latest refresh of each audience version (of ``site``, or all)."""
    where = "WHERE site_id = {s:String}" if site else ""
    rows = await store.query(
        "SELECT site_id, audience_id, version, phase, done, total, rows_read, "
        "started_at, updated_at "
        f"FROM {store.database}.audience_refreshes FINAL {where} "
        "ORDER BY site_id, audience_id, version",
        {"s": site} if site else None,
    )
    return [
        RefreshStatus(
            str(r[0]), str(r[1]), int(r[2]), str(r[3]), int(r[4]), int(r[5]), int(r[6]), r[7], r[8]
        )
        for r in rows
    ]
