"""The ``contacts`` table: each visitor's latest contact details (hashed and encrypted by ingest),
merged trait by trait as events bring them. E-mail and SMS read them from here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from leadback.events import datetime_ms, format_ms
from leadback.store.client import ClickHouseStore
from leadback.store.literals import as_set, string_pairs


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
        await self.save_sites({site: updates}, token=token)

    async def save_sites(
        self, updates: Mapping[str, Mapping[str, ContactUpdate]], *, token: str
    ) -> None:
        """:meth:`save` for several sites (site -> visitor -> update): one read, one insert."""
        pairs = sorted((site, v) for site, by_visitor in updates.items() for v in by_visitor)
        if not pairs:
            return
        rows = await self._store.query(
            "SELECT site_id, visitor_id, argMax(traits, updated_at), "
            f"toUnixTimestamp64Milli(max(updated_at)) FROM {self._db}.contacts "
            f"WHERE (site_id, visitor_id) IN {as_set(string_pairs(pairs))} "
            "GROUP BY site_id, visitor_id"
        )
        known = {(str(r[0]), str(r[1])): (orjson.loads(r[2]), int(r[3])) for r in rows}
        body = b"\n".join(
            orjson.dumps(_merged(site, v, updates[site][v], known.get((site, v))))
            for site, v in pairs
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
