"""Audience definitions in ClickHouse, versioned: every write adds a row with the next version.

The admin API writes here; the segmenter reads here and re-evaluates an audience whose version
differs from the one it last materialized (``audience_evaluations``), so the two can run in
different processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from leadback.audiences.compiler import compile_rule
from leadback.audiences.query import VersionedAudience
from leadback.audiences.rules import AudienceSpec, parse_audience, references
from leadback.errors import InvalidInputError
from leadback.events import format_ts
from leadback.store.client import ClickHouseStore


@dataclass(frozen=True)
class StoredAudience:
    """A definition as stored: its spec, version, and whether it was deleted."""

    spec: AudienceSpec
    version: int
    deleted: bool
    updated_at: datetime

    @property
    def versioned(self) -> VersionedAudience:
        return VersionedAudience(self.spec, self.version)


class NotFoundError(InvalidInputError):
    """No such audience."""

    def __init__(self, site: str, audience_id: str) -> None:
        super().__init__("not_found", f"no audience {audience_id!r} on site {site!r}")


class AudienceRepository:
    """Reads and writes audience definitions."""

    def __init__(self, store: ClickHouseStore) -> None:
        self._store = store
        self._db = store.database

    async def all(self, *, include_deleted: bool = False) -> list[StoredAudience]:
        """Latest version of every audience of every site."""
        rows = await self._store.query(
            f"SELECT site_id, audience_id, version, definition, deleted, updated_at "
            f"FROM {self._db}.audiences FINAL ORDER BY site_id, audience_id"
        )
        found = [_stored(r) for r in rows]
        return [a for a in found if include_deleted or not a.deleted]

    async def site(self, site: str) -> list[StoredAudience]:
        """Active audiences of one site."""
        return [a for a in await self.all() if a.spec.site == site]

    async def get(self, site: str, audience_id: str) -> StoredAudience:
        rows = await self._store.query(
            f"SELECT site_id, audience_id, version, definition, deleted, updated_at "
            f"FROM {self._db}.audiences FINAL WHERE site_id = {{s:String}} "
            "AND audience_id = {a:String}",
            {"s": site, "a": audience_id},
        )
        if not rows or rows[0][4]:
            raise NotFoundError(site, audience_id)
        return _stored(rows[0])

    async def _current_version(self, site: str, audience_id: str) -> tuple[int, bool]:
        rows = await self._store.query(
            f"SELECT max(version), argMax(deleted, version) FROM {self._db}.audiences "
            "WHERE site_id = {s:String} AND audience_id = {a:String}",
            {"s": site, "a": audience_id},
        )
        return (int(rows[0][0]), bool(rows[0][1])) if rows else (0, True)

    async def put(self, spec: AudienceSpec) -> tuple[StoredAudience, bool]:
        """Create or update; returns the stored version and whether anything changed.

        Checks ``in_audience`` references (exist, person-level, no cycle) by compiling.
        """
        others = {a.spec.id: a.spec for a in await self.site(spec.site) if a.spec.id != spec.id}
        compile_rule(spec, others)
        for other in others.values():
            if spec.id in references(other.rule) and spec.products is not None:
                raise InvalidInputError(
                    "invalid_audience",
                    f"{other.id!r} refers to {spec.id!r}; it cannot become product-level",
                )
        version, deleted = await self._current_version(spec.site, spec.id)
        if version and not deleted:
            current = await self.get(spec.site, spec.id)
            if current.spec == spec:
                return current, False
        new_version = version + 1
        now = format_ts()
        await self._write(spec, new_version, deleted=False, at=now)
        return StoredAudience(spec, new_version, False, _dt(now)), True

    async def delete(self, site: str, audience_id: str) -> StoredAudience:
        current = await self.get(site, audience_id)
        users = [
            a.spec.id
            for a in await self.site(site)
            if audience_id in references(a.spec.rule) and a.spec.id != audience_id
        ]
        if users:
            raise InvalidInputError(
                "in_use", f"audience {audience_id!r} is used by {', '.join(sorted(users))}"
            )
        now = format_ts()
        await self._write(current.spec, current.version + 1, deleted=True, at=now)
        return StoredAudience(current.spec, current.version + 1, True, _dt(now))

    async def _write(self, spec: AudienceSpec, version: int, *, deleted: bool, at: str) -> None:
        row = orjson.dumps(
            {
                "site_id": spec.site,
                "audience_id": spec.id,
                "version": version,
                "definition": orjson.dumps(spec.to_document()).decode(),
                "deleted": int(deleted),
                "updated_at": at,
            }
        )
        await self._store.insert_json_rows(
            "audiences", row, dedup_token=f"audience:{spec.site}:{spec.id}:{version}"
        )

    async def evaluated_versions(self) -> dict[tuple[str, str], int]:
        """(site, audience) -> the definition version whose members are materialized."""
        rows = await self._store.query(
            f"SELECT site_id, audience_id, version FROM {self._db}.audience_evaluations FINAL"
        )
        return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}

    async def mark_evaluated(self, site: str, audience_id: str, version: int) -> None:
        row = orjson.dumps({"site_id": site, "audience_id": audience_id, "version": version})
        await self._store.insert_json_rows(
            "audience_evaluations", row, dedup_token=f"evaluated:{site}:{audience_id}:{version}"
        )


def _dt(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _stored(row: Sequence[Any]) -> StoredAudience:
    site, _, version, definition, deleted, updated_at = row
    spec = parse_audience(orjson.loads(definition))
    assert spec.site == site
    return StoredAudience(spec, int(version), bool(deleted), updated_at)
