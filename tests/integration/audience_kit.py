"""Helpers for audience tests: canonical events at chosen times, a recording publisher."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import orjson

from leadback.audiences.changes import ChangeRecord
from leadback.events import CanonicalEvent, empty_click_ids, empty_utm, format_ts

_seq = itertools.count()


def event(
    site: str,
    visitor: str | None,
    etype: str,
    at: float,
    *,
    user_id: str | None = None,
    properties: dict[str, Any] | None = None,
    traits: dict[str, Any] | None = None,
    url: str | None = None,
    bot: bool = False,
) -> CanonicalEvent:
    """A canonical event as ingest would produce it, received at Unix time ``at``."""
    event_id = f"ev{next(_seq):08d}"
    visitor_id = visitor or (f"u:{user_id}" if user_id else f"e:{event_id}")
    return {
        "schema_version": 1,
        "event_id": event_id,
        "site_id": site,
        "visitor_id": visitor_id,
        "type": etype,
        "name": None,
        "sent_at": None,
        "received_at": format_ts(at),
        "anonymous_id": visitor,
        "user_id": user_id,
        "traits": traits or {},
        "url": url,
        "referrer": None,
        "utm": empty_utm(),
        "click_ids": empty_click_ids(),
        "properties": properties or {},
        "context": {"user_agent": "Mozilla/5.0", "ip": "192.0.2.0", "language": "en"},
        "consent": {
            "status": "granted",
            "purposes": ["all"],
            "gpc": False,
            "dnt": False,
            "tracking": True,
        },
        "bot": bot,
        "source": "json",
    }


def encoded(events: Sequence[CanonicalEvent]) -> tuple[set[bytes], list[bytes]]:
    """(keys, values) as the segmenter hands a batch to the audience engine."""
    keys = {f"{e['site_id']}:{e['visitor_id']}".encode() for e in events}
    return keys, [orjson.dumps(e) for e in events]


class RecordingPublisher:
    """A ChangePublisher that keeps what it was given (unit-level tests only)."""

    def __init__(self) -> None:
        self.records: list[ChangeRecord] = []

    async def publish(self, records: Sequence[ChangeRecord]) -> None:
        self.records.extend(records)
