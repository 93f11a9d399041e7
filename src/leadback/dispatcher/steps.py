"""The ``campaign_steps`` table: every step of every enrollment, pending until done or
cancelled.

States: ``pending`` (due at ``due_at``), ``sending`` (handed to a destination's queue, outcome
not yet written), ``done``, ``cancelled``. A row is keyed (site, campaign, person, membership
version and entry time, step) and versioned by ``rev``:
enrollments are written with ``rev`` 0, so an enrollment replayed from the change topic never
overrides a state written after it; later states carry the dispatcher's clock in ms (made
strictly increasing per process). ``partition`` is the change-topic partition the person's
records are on: a member's timer pass takes only the steps of the partitions it owns.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from leadback.dispatcher.policy import delivery_id
from leadback.store.client import ClickHouseStore, content_token

PENDING, SENDING, DONE, CANCELLED = "pending", "sending", "done", "cancelled"

#: A ``sending`` step this old is taken for orphaned whatever the clocks of two members say.
ORPHAN_AFTER_MS = 3_600_000

_COLUMNS = (
    "site_id, campaign_id, person_id, membership_version, step, audience_id, partition, "
    "due_at, state, reason, attempt, products, change_at, rev"
)


@dataclass(frozen=True, slots=True)
class StepRow:
    site_id: str
    campaign_id: str
    person_id: str
    membership_version: int
    step: int
    audience_id: str
    partition: int
    due_at: int
    state: str = PENDING
    reason: str = ""
    attempt: int = 0
    products: tuple[str, ...] = ()
    change_at: int = 0  # when the audience change that enrolled the person happened (ms)
    rev: int = 0

    @property
    def key(self) -> tuple[str, str, str, int, int, int]:
        return (
            self.site_id,
            self.campaign_id,
            self.person_id,
            self.membership_version,
            self.change_at,
            self.step,
        )

    def moved(self, rev: int, **changes: Any) -> StepRow:
        """This row in a new state (``rev``: the writer's next revision)."""
        return replace(self, rev=rev, **changes)


def row_delivery_id(r: StepRow) -> str:
    """The delivery id of a step (:func:`~leadback.dispatcher.policy.delivery_id`)."""
    return delivery_id(
        r.site_id, r.campaign_id, r.person_id, r.membership_version, r.change_at, r.step
    )


def _row(r: Sequence[Any]) -> StepRow:
    return StepRow(
        site_id=str(r[0]),
        campaign_id=str(r[1]),
        person_id=str(r[2]),
        membership_version=int(r[3]),
        step=int(r[4]),
        audience_id=str(r[5]),
        partition=int(r[6]),
        due_at=int(r[7]),
        state=str(r[8]),
        reason=str(r[9]),
        attempt=int(r[10]),
        products=tuple(r[11]),
        change_at=int(r[12]),
        rev=int(r[13]),
    )


class StepStore:
    """Reads and writes ``campaign_steps``."""

    def __init__(self, store: ClickHouseStore) -> None:
        self._store = store
        self._db = store.database

    async def write(self, rows: Iterable[StepRow], *, token: str | None = None) -> None:
        """Insert rows (``token``: a replayed write with the same token is dropped)."""
        body = b"\n".join(map(orjson.dumps, rows))  # dataclasses, natively
        if body:
            await self._store.insert_json_rows(
                "campaign_steps", body, dedup_token=token or content_token("campaign_steps", body)
            )

    async def pending_for(
        self, site: str, persons: Collection[str], audiences: Collection[str]
    ) -> list[StepRow]:
        """Pending steps of these persons in campaigns on these audiences."""
        if not persons or not audiences:
            return []
        rows = await self._store.query(
            f"SELECT {_COLUMNS} FROM {self._db}.campaign_steps FINAL "
            "WHERE site_id = {s:String} AND person_id IN {p:Array(String)} "
            "AND audience_id IN {a:Array(String)} AND state = 'pending'",
            {"s": site, "p": sorted(persons), "a": sorted(audiences)},
        )
        return [_row(r) for r in rows]

    async def due(self, assigned_at: Mapping[int, int], now_ms: int, limit: int) -> list[StepRow]:
        """Steps to decide on the partitions of ``assigned_at`` (partition -> when this member
        got it), oldest first: pending ones due by ``now_ms``, and ``sending`` ones marked
        before the member got the partition (their sender is gone; the outcome is unknown)."""
        if not assigned_at:
            return []
        parts = sorted(assigned_at)
        rows = await self._store.query(
            f"SELECT {_COLUMNS} FROM {self._db}.campaign_steps FINAL "
            "WHERE partition IN {parts:Array(UInt32)} AND ("
            "(state = 'pending' AND due_at <= {now:Int64}) OR (state = 'sending' "
            "AND rev < arrayElement({since:Array(UInt64)}, indexOf({parts:Array(UInt32)}, "
            "partition)))) ORDER BY due_at LIMIT {n:UInt32}",
            {"now": now_ms, "parts": parts, "since": [assigned_at[p] for p in parts], "n": limit},
        )
        return [_row(r) for r in rows]

    async def stale_sending(
        self, partitions: Collection[int], before_ms: int, limit: int
    ) -> list[StepRow]:
        """``sending`` steps marked before ``before_ms`` (long ago): a safety net for a member
        whose clock is behind the one that marked them."""
        if not partitions:
            return []
        rows = await self._store.query(
            f"SELECT {_COLUMNS} FROM {self._db}.campaign_steps FINAL "
            "WHERE partition IN {parts:Array(UInt32)} AND state = 'sending' "
            "AND rev < {before:UInt64} ORDER BY due_at LIMIT {n:UInt32}",
            {"parts": sorted(partitions), "before": max(0, before_ms), "n": limit},
        )
        return [_row(r) for r in rows]

    async def of_person(self, site: str, person: str) -> list[StepRow]:
        """Every step of one person (the admin API's view)."""
        rows = await self._store.query(
            f"SELECT {_COLUMNS} FROM {self._db}.campaign_steps FINAL "
            "WHERE site_id = {s:String} AND person_id = {p:String} "
            "ORDER BY campaign_id, membership_version, step",
            {"s": site, "p": person},
        )
        return [_row(r) for r in rows]
