"""The ``deliveries`` table: an append-only log of every decision and attempt.

Statuses: ``held_out`` (the campaign's control group), ``suppressed``, ``no_consent``,
``no_address``, ``capped`` (skipped by a frequency cap), ``cancelled`` (an exit before the
step was due, or the campaign went away), ``sending`` (written before the provider call),
``sent``, ``retrying`` (a transient failure; the step is due again later), ``failed`` (for
good; also on the dead topic). The latest row of a ``delivery_id`` is its outcome.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from leadback.events import format_ts
from leadback.store.client import ClickHouseStore, content_token

#: Statuses that count against frequency caps: a message went, or is going.
COUNTED = ("sending", "sent")
FINAL_STATUSES = (
    "sent",
    "failed",
    "held_out",
    "suppressed",
    "no_consent",
    "no_address",
    "capped",
    "cancelled",
)


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    delivery_id: str
    site_id: str
    campaign_id: str
    campaign_version: int
    person_id: str
    audience_id: str
    membership_version: int
    step: int
    channel: str
    destination_id: str
    status: str
    at_ms: int
    reason: str = ""
    attempt: int = 0
    http_status: int = 0
    response: str = ""
    provider_id: str = ""
    change_at: int = 0
    seq: int = 0  # orders a delivery's rows (the writer's revisions: strictly increasing)
    at: str = field(init=False, default="")  # at_ms as the table's DateTime64 text

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", format_ts(self.at_ms / 1000))

    def json(self) -> bytes:
        """The row as JSONEachRow (orjson writes dataclasses natively; ``at_ms`` is ignored by
        the insert, which skips unknown fields)."""
        return orjson.dumps(self)


@dataclass(frozen=True, slots=True)
class RecentSend:
    delivery_id: str
    person_id: str
    campaign_id: str
    channel: str
    at_ms: int


class Ledger:
    """Writes and reads ``deliveries``."""

    def __init__(self, store: ClickHouseStore) -> None:
        self._store = store
        self._db = store.database

    async def record(self, rows: Iterable[DeliveryRow]) -> None:
        body = b"\n".join(r.json() for r in rows)
        if body:
            await self._store.insert_json_rows(
                "deliveries", body, dedup_token=content_token("deliveries", body)
            )

    async def recent_sends(
        self, site: str, persons: Collection[str], since_ms: int
    ) -> list[RecentSend]:
        """Messages sent (or being sent) to these persons since ``since_ms`` (for caps)."""
        if not persons:
            return []
        # Counted: messages whose latest state is sent or being sent (a retry waiting, or a
        # failure, reached nobody).
        rows = await self._store.query(
            "SELECT delivery_id, any(person_id), any(campaign_id), any(channel), "
            "toUnixTimestamp64Milli(min(at)) "
            f"FROM {self._db}.deliveries WHERE site_id = {{s:String}} "
            "AND person_id IN {p:Array(String)} AND at >= fromUnixTimestamp64Milli({t:Int64}) "
            "GROUP BY delivery_id HAVING argMax(status, seq) IN ('sending', 'sent')",
            {"s": site, "p": sorted(persons), "t": since_ms},
        )
        return [RecentSend(str(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4])) for r in rows]

    async def query(
        self,
        *,
        site: str | None = None,
        campaign: str | None = None,
        person: str | None = None,
        status: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Latest state of each delivery, newest first, filtered (the admin API's view)."""
        where = ["1"]
        params: dict[str, Any] = {"n": limit}
        for column, value, key in (
            ("site_id", site, "s"),
            ("campaign_id", campaign, "c"),
            ("person_id", person, "p"),
        ):
            if value is not None:
                where.append(f"{column} = {{{key}:String}}")
                params[key] = value
        having = ""
        if status is not None:
            having = "HAVING status = {st:String}"
            params["st"] = status
        rows = await self._store.query(
            "SELECT delivery_id, any(site_id), any(campaign_id), any(person_id), "
            "any(membership_version), any(step), any(channel), any(destination_id), "
            "argMax(status, seq) AS status, argMax(reason, seq), max(attempt), "
            "argMax(http_status, seq), argMax(response, seq), argMax(provider_id, seq), "
            "min(at), max(at) "
            f"FROM {self._db}.deliveries WHERE {' AND '.join(where)} "
            f"GROUP BY delivery_id {having} ORDER BY max(at) DESC LIMIT {{n:UInt32}}",
            params,
        )
        keys = (
            "delivery_id",
            "site",
            "campaign",
            "person",
            "membership_version",
            "step",
            "channel",
            "destination",
            "status",
            "reason",
            "attempts",
            "http_status",
            "response",
            "provider_id",
            "first_at",
            "last_at",
        )
        out = []
        for r in rows:
            item = dict(zip(keys, r, strict=True))
            item["first_at"] = item["first_at"].isoformat()
            item["last_at"] = item["last_at"].isoformat()
            out.append(item)
        return out

    async def summary(self, site: str | None = None) -> list[dict[str, Any]]:
        """Per campaign and status: how many deliveries are in it now."""
        rows = await self._store.query(
            "SELECT site, campaign, status, count() FROM (SELECT any(site_id) AS site, "
            "any(campaign_id) AS campaign, argMax(status, seq) AS status "
            f"FROM {self._db}.deliveries WHERE {{s:String}} = '' OR site_id = {{s:String}} "
            "GROUP BY delivery_id) GROUP BY site, campaign, status ORDER BY site, campaign, status",
            {"s": site or ""},
        )
        return [
            {"site": str(r[0]), "campaign": str(r[1]), "status": str(r[2]), "count": int(r[3])}
            for r in rows
        ]
