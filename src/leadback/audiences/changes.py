"""Audience changes: the records of ``leadback.audiences.changes.v1`` and how they are sent.

One record per membership transition, keyed ``site_id:visitor_id`` (``visitor_id`` is the
person: an anonymous visitor id, or ``u:<user_id>`` once identified). ``version`` grows by one
with every transition of that (audience, person), so a consumer keeps the highest version it
has applied and ignores anything not above it: delivery is at least once. The schema is in
``docs/asyncapi.yaml``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypedDict

import orjson

SCHEMA_VERSION = 1


class ChangeRecord(TypedDict):
    schema_version: int
    change_id: str
    site_id: str
    audience_id: str
    audience_version: int
    visitor_id: str
    change: str
    reason: str
    version: int
    at: str
    entered_at: str | None
    products: list[str]


_DAYS: dict[int, str] = {}
_STAMPS: dict[int, str] = {}


def ms_timestamp(ms: int) -> str:
    """Unix milliseconds -> ``2026-11-23T07:00:00.123Z``, the canonical form (``format_ts``).
    Remembered: the changes of a round share their time (thousands per round)."""
    found = _STAMPS.get(ms)
    if found is None:
        if len(_STAMPS) >= 65_536:
            _STAMPS.clear()
        found = _STAMPS[ms] = _format_ms(ms)
    return found


def _format_ms(ms: int) -> str:
    """:func:`ms_timestamp` computed. The date is cached per day and the time computed:
    ``entered_at`` of members who entered during a backfill spread over days, where a cache per
    second or minute keeps missing."""
    day, rest = divmod(ms, 86_400_000)
    prefix = _DAYS.get(day)
    if prefix is None:
        if len(_DAYS) >= 4096:
            _DAYS.clear()
        prefix = datetime.fromtimestamp(day * 86_400, tz=UTC).strftime("%Y-%m-%dT")
        _DAYS[day] = prefix
    seconds, milli = divmod(rest, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{prefix}{hour:02d}:{minute:02d}:{second:02d}.{milli:03d}Z"


def change_record(row: dict[str, Any]) -> ChangeRecord:
    """A change-log row (``audience_changes``) -> the topic record."""
    return {
        "schema_version": SCHEMA_VERSION,
        "change_id": f"{row['audience_id']}:{row['person_id']}:{row['version']}",
        "site_id": row["site_id"],
        "audience_id": row["audience_id"],
        "audience_version": int(row["audience_version"]),
        "visitor_id": row["person_id"],
        "change": row["change"],
        "reason": row["reason"],
        "version": int(row["version"]),
        "at": ms_timestamp(int(row["at"])),
        "entered_at": ms_timestamp(int(row["entered_at"])) if row["entered_at"] else None,
        "products": list(row["products"]),
    }


def encode(record: ChangeRecord) -> tuple[bytes, bytes]:
    """(key, value) for the change topic."""
    return f"{record['site_id']}:{record['visitor_id']}".encode(), orjson.dumps(record)


class ChangePublisher(Protocol):
    """Sends change records and returns once the broker acknowledged all of them."""

    async def publish(self, records: Sequence[ChangeRecord]) -> None: ...
