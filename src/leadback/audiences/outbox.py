"""The change outbox: every membership transition is logged (``audience_changes``) and applied
(``memberships``) before it is published, and its batch is marked published
(``audience_changes_published``) once the broker acknowledged it.

A version means one content, always. The log is the truth: if anything stops between the log
insert and the memberships insert (a crash, a store error), the stored memberships lag the log,
and an evaluation then would compute the same versions again with other times. So
:meth:`ChangeOutbox.sweep` first brings the memberships up to every logged change not yet
published, then publishes those changes as logged. It runs over the whole log at start; on the
sweep timer, and before the next evaluation whenever a write was left in doubt
(:attr:`ChangeOutbox.in_doubt`), over the changes of the last :data:`SWEEP_LOOKBACK_MS` and
those whose publish failed: the log grows by every change (thousands a second under load), and
a scan of all of it under the rounds' lock would stall rounds for longer every day.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from leadback import failpoints
from leadback.audiences.changes import ChangePublisher, ChangeRecord, change_record
from leadback.errors import BrokerUnavailableError
from leadback.logs import get_logger
from leadback.store.client import ClickHouseStore
from leadback.store.literals import as_set, string_pairs

log = get_logger(__name__)

#: How far back a periodic sweep looks (besides the changes whose publish failed here): a write
#: another process left unpublished is older than that only if that process has been gone for
#: so long, and then the next start's sweep, over the whole log, finds it.
SWEEP_LOOKBACK_MS = 3_600_000

_LOGGED = (
    "site_id",
    "audience_id",
    "person_id",
    "change",
    "reason",
    "version",
    "audience_version",
    "products",
    "at",
    "entered_at",
    "token",
)


@dataclass
class AudienceStats:
    """Counters for /metrics and the benchmarks."""

    evaluations: int = 0
    persons_evaluated: int = 0
    changes: int = 0
    changes_published: int = 0
    republished: int = 0
    memberships_restored: int = 0
    publish_failures: int = 0
    identity_links: int = 0
    #: Persons whose time conditions came due, evaluated with a round's own persons / by the
    #: timer pass apart (no round running, or a backlog of more than a round takes).
    due_in_rounds: int = 0
    due_in_timer: int = 0
    last_evaluation_seconds: float = 0.0


def membership_state(change: str, reason: str) -> str:
    """The membership state a logged change leaves (see :mod:`leadback.audiences.diff`)."""
    if change == "exit":
        return "expired" if reason == "ttl_expired" else "out"
    return "in"


class ChangeOutbox:
    """Logs, applies and publishes membership changes; callers serialise the calls."""

    def __init__(
        self, store: ClickHouseStore, publisher: ChangePublisher, stats: AudienceStats
    ) -> None:
        self._store = store
        self._db = store.database
        self._publisher = publisher
        self._stats = stats
        self.in_doubt = False  # a write stopped between the change log and the memberships
        #: The earliest ``at`` of the changes whose publish failed here and that no sweep has
        #: read since (a sweep goes back at least that far).
        self.failed_since: int | None = None

    async def write(
        self, token: str, changes: list[dict[str, Any]], memberships: list[bytes]
    ) -> None:
        """Log ``changes``, write ``memberships`` (the new state of every transition, silent
        ones included), then publish the changes. Inserts carry ``token``: a retried round
        writes nothing twice."""
        self.in_doubt = True
        if changes:
            await self._store.insert_json_rows(
                "audience_changes",
                orjson.dumps(changes),  # JSONEachRow takes an array of rows: one call
                dedup_token=f"changes:{token}",
            )
        if memberships:
            if changes:
                failpoints.hit("audiences.before_memberships")
            await self._store.insert_json_rows(
                "memberships", b"\n".join(memberships), dedup_token=f"memberships:{token}"
            )
        self.in_doubt = False
        if changes:
            failpoints.hit("audiences.before_publish")
            self._stats.changes += len(changes)
            at = min(int(c["at"]) for c in changes)
            await self._publish(token, [change_record(c) for c in changes], at)

    async def _publish(self, token: str, records: list[ChangeRecord], at: int) -> bool:
        try:
            await self._publisher.publish(records)
        except BrokerUnavailableError as exc:
            # Logged in the outbox: the sweep publishes them when the broker is back.
            self._stats.publish_failures += 1
            self.failed_since = min(at, self.failed_since or at)
            log.warning("changes not published yet", token=token, error=str(exc))
            return False
        await self._store.insert_json_rows(
            "audience_changes_published",
            orjson.dumps({"token": token}),
            dedup_token=f"published:{token}",
        )
        self._stats.changes_published += len(records)
        return True

    async def sweep(self, *, now_ms: int | None = None) -> None:
        """Bring memberships up to the logged changes not yet published, then publish them:
        all of them, or with ``now_ms`` those of the last :data:`SWEEP_LOOKBACK_MS` and any
        whose publish failed here."""
        since = -1
        if now_ms is not None:
            since = min(now_ms - SWEEP_LOOKBACK_MS, (self.failed_since or now_ms) - 1)
        # `at` is the sort key's third column: a bounded sweep reads about a granule per
        # (site, audience) besides the window, whatever the log's size; the published marks
        # are looked up by key for the window's tokens only.
        changes = f"{self._db}.audience_changes WHERE at > {since}"
        rows = await self._store.query(
            f"SELECT {', '.join(_LOGGED)} FROM {changes} AND token NOT IN ("
            f"SELECT token FROM {self._db}.audience_changes_published "
            f"WHERE token IN (SELECT DISTINCT token FROM {changes})) "
            "ORDER BY token, at, audience_id, person_id"
        )
        logged = [dict(zip(_LOGGED, raw, strict=True)) for raw in rows]
        await self._restore_memberships(logged)
        await self._copy_keys(logged)
        self.in_doubt = False
        by_token: dict[str, list[ChangeRecord]] = {}
        for r in logged:
            by_token.setdefault(str(r["token"]), []).append(change_record(r))
        first = {str(r["token"]): int(r["at"]) for r in reversed(logged)}
        failed: list[int] = []
        for token, records in by_token.items():
            if not await self._publish(token, records, first[token]):
                failed.append(first[token])
                continue
            self._stats.republished += len(records)
            log.info("republished logged changes", token=token, records=len(records))
        # Every change whose publish had failed was in the rows: those failing again remain.
        self.failed_since = min(failed, default=None)

    async def _copy_keys(self, logged: Sequence[dict[str, Any]]) -> None:
        """Copy the persons of ``logged`` from ``memberships`` into ``person_memberships``.

        A view writes that key-value copy after each ``memberships`` insert, not atomically
        with it: a process killed in between leaves the copy behind, the change unpublished
        (its publish comes after), and a later evaluation would read the older membership and
        issue its version again. The persons of unpublished changes are exactly those of such
        writes."""
        pairs = sorted({(str(r["site_id"]), str(r["person_id"])) for r in logged})
        if pairs:
            await self._store.command(
                f"INSERT INTO {self._db}.person_memberships "
                "SELECT concat(site_id, '\\0', person_id), site_id, person_id, "
                "groupArray((audience_id, toString(state), version, entered_at, products)) "
                f"FROM {self._db}.memberships FINAL "
                f"WHERE (site_id, person_id) IN {as_set(string_pairs(pairs))} "
                "GROUP BY site_id, person_id"
            )

    async def _restore_memberships(self, logged: Sequence[dict[str, Any]]) -> None:
        """Write the membership each logged change leaves where the stored one is older."""
        latest: dict[tuple[str, str, str], dict[str, Any]] = {}
        for r in logged:
            key = (str(r["site_id"]), str(r["audience_id"]), str(r["person_id"]))
            if key not in latest or int(r["version"]) > int(latest[key]["version"]):
                latest[key] = r
        if not latest:
            return
        stored: dict[tuple[str, str, str], int] = {}
        for site in sorted({k[0] for k in latest}):
            persons = sorted({k[2] for k in latest if k[0] == site})
            for audience_id, person, version in await self._store.query(
                f"SELECT audience_id, person_id, version FROM {self._db}.memberships FINAL "
                "WHERE site_id = {s:String} AND person_id IN {p:Array(String)}",
                {"s": site, "p": persons},
            ):
                stored[(site, str(audience_id), str(person))] = int(version)
        lagging = [r for k, r in sorted(latest.items()) if stored.get(k, 0) < int(r["version"])]
        if not lagging:
            return
        body = b"\n".join(
            orjson.dumps(
                {
                    "site_id": r["site_id"],
                    "audience_id": r["audience_id"],
                    "person_id": r["person_id"],
                    "state": membership_state(str(r["change"]), str(r["reason"])),
                    "version": int(r["version"]),
                    "products": list(r["products"]),
                    "entered_at": int(r["entered_at"]),
                    "changed_at": int(r["at"]),
                    "audience_version": int(r["audience_version"]),
                }
            )
            for r in lagging
        )
        # Named by content: the same restoration written twice lands once.
        digest = hashlib.sha256(body).hexdigest()
        await self._store.insert_json_rows(
            "memberships", body, dedup_token=f"memberships-restored:{digest}"
        )
        self._stats.memberships_restored += len(lagging)
        log.warning("memberships restored from the change log", memberships=len(lagging))
