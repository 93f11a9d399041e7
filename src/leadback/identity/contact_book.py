"""The ``contacts`` table: each visitor's latest contact details (hashed and encrypted by ingest),
merged trait by trait as events bring them. E-mail and SMS read them from here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from leadback.events import datetime_ms, format_ms
from leadback.store.client import ClickHouseStore


@dataclass
class ContactUpdate:
    """One visitor's traits from a round's events (later events win), and when."""

    user_id: str
    at: str
    traits: dict[str, object] = field(default_factory=dict)


class ContactBook:
    """Writes visitors' traits, merged over what is stored."""

    def __init__(self, store: ClickHouseStore) -> None:
        self._store = store
        self._db = store.database

    async def save(self, site: str, updates: Mapping[str, ContactUpdate], *, token: str) -> None:
        """Merge each visitor's new traits over the stored ones; ``token`` names the round (a
        replayed round's write is dropped as a duplicate)."""
        if not updates:
            return
        rows = await self._store.query(
            "SELECT visitor_id, argMax(traits, updated_at), "
            f"toUnixTimestamp64Milli(max(updated_at)) FROM {self._db}.contacts "
            "WHERE site_id = {s:String} AND visitor_id IN {v:Array(String)} GROUP BY visitor_id",
            {"s": site, "v": sorted(updates)},
        )
        known = {str(r[0]): (orjson.loads(r[1]), int(r[2])) for r in rows}
        body = b"\n".join(
            orjson.dumps(_merged(site, visitor, u, known.get(visitor)))
            for visitor, u in sorted(updates.items())
        )
        await self._store.insert_json_rows("contacts", body, dedup_token=f"contacts:{token}")


def _merged(
    site: str, visitor: str, update: ContactUpdate, stored: tuple[dict[str, object], int] | None
) -> dict[str, object]:
    """The visitor's new row: the update's traits over the stored ones, unless the stored ones
    are newer (an import of old events): then they win."""
    traits, at = dict(update.traits), update.at
    if stored is not None:
        stored_traits, stored_ms = stored
        if stored_ms > datetime_ms(datetime.fromisoformat(at)):
            # This row holds every trait: one ms after the stored one, so that it is the one
            # argMax reads and the ReplacingMergeTree keeps (a tie would keep either).
            traits, at = {**traits, **stored_traits}, format_ms(stored_ms + 1)
        else:
            traits = {**stored_traits, **traits}
    return {
        "site_id": site,
        "visitor_id": visitor,
        "user_id": update.user_id,
        "traits": orjson.dumps(traits).decode(),
        "updated_at": at,
    }
