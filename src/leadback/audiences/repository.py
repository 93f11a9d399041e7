"""Audience definitions in ClickHouse, versioned: every write adds a row with the next version.

The admin API and ``leadback audiences apply --offline`` write here
(:meth:`AudienceRepository.apply`, checked by :mod:`leadback.audiences.validation`); the
segmenter reads here and re-evaluates an audience whose version differs from the one it last
materialized (``audience_evaluations``), so the two can run in different processes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson

from leadback.audiences.query import VersionedAudience
from leadback.audiences.rules import AudienceSpec, parse_audience, references
from leadback.audiences.validation import AudienceSet, validate_audience_set
from leadback.clock import Clock, SystemClock
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


@dataclass(frozen=True)
class Written:
    """One definition of an applied set: as stored now, and what the write did."""

    stored: StoredAudience
    status: Literal["created", "updated", "unchanged"]

    @property
    def changed(self) -> bool:
        return self.status != "unchanged"


class NotFoundError(InvalidInputError):
    """No such audience."""

    def __init__(self, site: str, audience_id: str) -> None:
        super().__init__("not_found", f"no audience {audience_id!r} on site {site!r}")


class AudienceRepository:
    """Reads and writes audience definitions; ``updated_at`` comes from ``clock``."""

    def __init__(self, store: ClickHouseStore, *, clock: Clock | None = None) -> None:
        self._store = store
        self._db = store.database
        self._clock = clock or SystemClock()

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

    async def validate(
        self, audiences: AudienceSet, *, sites: Collection[str] | None
    ) -> list[AudienceSpec]:
        """Check a set against the stored definitions (:func:`validate_audience_set`); return
        it in the order to write. ``sites``: the configured site ids (``None``: unchecked)."""
        stored = [a.spec for a in await self.all()]
        return validate_audience_set(audiences, stored, sites=sites)

    async def apply(
        self, audiences: AudienceSet, *, sites: Collection[str] | None
    ) -> list[Written]:
        """Validate the whole set, then write it, an audience after those it refers to; the
        outcomes come back in the set's order. Nothing is written if any definition fails."""
        stored = [a.spec for a in await self.all()]
        existing = {(s.site, s.id) for s in stored}
        written: dict[tuple[str, str], Written] = {}
        for spec in validate_audience_set(audiences, stored, sites=sites):
            saved, changed = await self.put(spec)
            key = (spec.site, spec.id)
            status: Literal["created", "updated", "unchanged"] = (
                "unchanged" if not changed else "updated" if key in existing else "created"
            )
            written[key] = Written(saved, status)
        return [written[(s.site, s.id)] for s in audiences.specs]

    async def put(self, spec: AudienceSpec) -> tuple[StoredAudience, bool]:
        """Create or update one; returns the stored version and whether anything changed.

        Checked against the stored definitions as a set of one (:func:`validate_audience_set`;
        the site is not checked). To write several that refer to each other, :meth:`apply`.
        """
        stored = [a.spec for a in await self.site(spec.site)]
        validate_audience_set(AudienceSet([spec], single=True), stored, sites=None)
        version, deleted = await self._current_version(spec.site, spec.id)
        if version and not deleted:
            current = await self.get(spec.site, spec.id)
            if current.spec == spec:
                return current, False
        new_version = version + 1
        now = format_ts(self._clock.now())
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
        now = format_ts(self._clock.now())
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
