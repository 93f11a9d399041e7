"""Campaigns, site policies and destinations in ClickHouse, versioned: every change adds a row
with the next version (``ReplacingMergeTree(version)``), a delete is a row marked deleted.

Destinations are stored as their definitions, which hold secret *references* only
(:class:`~leadback.destinations.config.SecretRef`), never a credential.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from leadback.audiences.repository import AudienceRepository
from leadback.campaigns.definitions import CampaignSpec, SitePolicy
from leadback.campaigns.document import CampaignDocument, validate_document
from leadback.clock import Clock, SystemClock
from leadback.destinations.config import DestinationConfig
from leadback.destinations.registry import parse_destination
from leadback.errors import InvalidInputError
from leadback.events import format_ts
from leadback.store.client import ClickHouseStore

Status = Literal["created", "updated", "unchanged", "deleted"]


@dataclass(frozen=True)
class StoredCampaign:
    spec: CampaignSpec
    version: int


@dataclass(frozen=True)
class Applied:
    """What applying a document did, per item: (kind, key, version, status)."""

    items: list[tuple[str, str, int, Status]]

    @property
    def changed(self) -> bool:
        return any(status != "unchanged" for *_, status in self.items)


class CampaignNotFound(InvalidInputError):
    def __init__(self, what: str) -> None:
        super().__init__("not_found", what)


class CampaignRepository:
    """Reads and writes campaigns, policies and destinations."""

    def __init__(self, store: ClickHouseStore, *, clock: Clock | None = None) -> None:
        self._store = store
        self._db = store.database
        self._clock = clock or SystemClock()

    # -- reading ------------------------------------------------------------------------

    async def campaigns(self, site: str | None = None) -> list[StoredCampaign]:
        """Latest active version of every campaign (of one site)."""
        rows = await self._store.query(
            f"SELECT definition, version FROM {self._db}.campaigns FINAL "
            "WHERE deleted = 0 AND ({s:String} = '' OR site_id = {s:String}) "
            "ORDER BY site_id, campaign_id",
            {"s": site or ""},
        )
        return [
            StoredCampaign(CampaignSpec.model_validate(orjson.loads(r[0])), int(r[1])) for r in rows
        ]

    async def campaign(self, site: str, campaign_id: str) -> StoredCampaign:
        for c in await self.campaigns(site):
            if c.spec.id == campaign_id:
                return c
        raise CampaignNotFound(f"no campaign {campaign_id!r} on site {site!r}")

    async def policies(self) -> dict[str, SitePolicy]:
        rows = await self._store.query(
            f"SELECT definition FROM {self._db}.campaign_policies FINAL WHERE deleted = 0"
        )
        found = [SitePolicy.model_validate(orjson.loads(r[0])) for r in rows]
        return {p.site: p for p in found}

    async def destinations(self) -> dict[str, DestinationConfig]:
        """Every active destination by id (definitions only: no secret is resolved here)."""
        rows = await self._store.query(
            f"SELECT destination_id, definition FROM {self._db}.destinations FINAL "
            "WHERE deleted = 0 ORDER BY destination_id"
        )
        return {str(r[0]): parse_destination(orjson.loads(r[1])) for r in rows}

    async def version_stamp(self) -> tuple[int, ...]:
        """Changes whenever any definition does (cheap: for reload checks)."""
        rows = await self._store.query(
            f"SELECT (SELECT count() FROM {self._db}.campaigns), "
            f"(SELECT count() FROM {self._db}.campaign_policies), "
            f"(SELECT count() FROM {self._db}.destinations)"
        )
        return tuple(int(v) for v in rows[0])

    # -- writing ------------------------------------------------------------------------

    async def validate(self, doc: CampaignDocument, *, sites: Collection[str] | None) -> None:
        """Check a document against the store (see :func:`validate_document`)."""
        audiences = {(a.spec.site, a.spec.id) for a in await AudienceRepository(self._store).all()}
        validate_document(
            doc, stored_destinations=await self.destinations(), audiences=audiences, sites=sites
        )

    async def apply(self, doc: CampaignDocument, *, sites: Collection[str] | None) -> Applied:
        """Validate the whole document, then write what changed: destinations first."""
        await self.validate(doc, sites=sites)
        items: list[tuple[str, str, int, Status]] = []
        now = format_ts(self._clock.now())
        current_dest = await self._versions("destinations", "destination_id")
        stored_dest = await self.destinations()
        for d in doc.destinations:
            definition = d.model_dump(mode="json", exclude_none=True)
            status, version = _status(current_dest.get(d.id), stored_dest.get(d.id) == d)
            if status != "unchanged":
                await self._write(
                    "destinations",
                    {"destination_id": d.id},
                    version,
                    definition,
                    now,
                    token=f"destination:{d.id}:{version}",
                )
            items.append(("destination", d.id, version, status))
        current_pol = await self._versions("campaign_policies", "site_id")
        stored_pol = await self.policies()
        for p in doc.policies:
            status, version = _status(current_pol.get(p.site), stored_pol.get(p.site) == p)
            if status != "unchanged":
                await self._write(
                    "campaign_policies",
                    {"site_id": p.site},
                    version,
                    p.to_document(),
                    now,
                    token=f"policy:{p.site}:{version}",
                )
            items.append(("policy", p.site, version, status))
        current = await self._versions("campaigns", "site_id, campaign_id")
        stored = {(c.spec.site, c.spec.id): c.spec for c in await self.campaigns()}
        for c in doc.campaigns:
            key = f"{c.site}\t{c.id}"
            status, version = _status(current.get(key), stored.get((c.site, c.id)) == c)
            if status != "unchanged":
                await self._write(
                    "campaigns",
                    {"site_id": c.site, "campaign_id": c.id},
                    version,
                    c.to_document(),
                    now,
                    token=f"campaign:{c.site}:{c.id}:{version}",
                )
            items.append(("campaign", f"{c.site}/{c.id}", version, status))
        return Applied(items)

    async def delete_campaign(self, site: str, campaign_id: str) -> int:
        """Mark a campaign deleted (its pending steps are cancelled when they come due)."""
        current = await self.campaign(site, campaign_id)
        version = current.version + 1
        await self._write(
            "campaigns",
            {"site_id": site, "campaign_id": campaign_id},
            version,
            current.spec.to_document(),
            format_ts(self._clock.now()),
            token=f"campaign:{site}:{campaign_id}:{version}",
            deleted=True,
        )
        return version

    async def _versions(self, table: str, key: str) -> dict[str, tuple[int, bool]]:
        joined = ", '\t', ".join(part.strip() for part in key.split(","))
        rows = await self._store.query(
            f"SELECT concat({joined}), max(version), "
            f"argMax(deleted, version) FROM {self._db}.{table} GROUP BY {key}"
        )
        return {str(r[0]): (int(r[1]), bool(r[2])) for r in rows}

    async def _write(
        self,
        table: str,
        keys: dict[str, str],
        version: int,
        definition: dict[str, Any],
        at: str,
        *,
        token: str,
        deleted: bool = False,
    ) -> None:
        row = orjson.dumps(
            {
                **keys,
                "version": version,
                "definition": orjson.dumps(definition).decode(),
                "deleted": int(deleted),
                "updated_at": at,
            }
        )
        await self._store.insert_json_rows(table, row, dedup_token=token)


def _status(current: tuple[int, bool] | None, same: bool) -> tuple[Status, int]:
    if current is None:
        return "created", 1
    version, deleted = current
    if same and not deleted:
        return "unchanged", version
    return "updated" if not deleted else "created", version + 1
