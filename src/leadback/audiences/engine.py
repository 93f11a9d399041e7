"""The audience engine: keeps memberships right as events arrive and as time passes.

* :meth:`AudienceEngine.on_batch` runs after the segmenter inserted a batch, before it commits:
  it applies the identity links the batch carries, then evaluates every audience of the site for
  the persons the batch touched (all their visitor ids), in one ClickHouse statement per site.
* :meth:`AudienceEngine.tick` runs on a timer: it picks up changed definitions (re-evaluating
  the whole site for them, and exiting everyone from deleted ones), evaluates the persons whose
  ``due`` moment has passed (a cart becomes abandoned an hour later with no new event), and
  republishes change batches that were logged but not acknowledged.

Every transition is written to ``audience_changes`` (the outbox) and ``memberships`` before it
is published, and its batch is marked published after the broker acknowledged it: at least
once, with a per-membership ``version`` for consumers to deduplicate. A replayed segmenter batch
reuses its token, so its change-log and membership writes are dropped as duplicates.
All evaluation runs under one lock: versions are computed from the stored memberships.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from leadback import failpoints
from leadback.audiences.changes import ChangePublisher, ChangeRecord, change_record
from leadback.audiences.compiler import compile_rule, trigger_types
from leadback.audiences.diff import Key, Stored, transitions
from leadback.audiences.digest import BatchDigest, digest, merge
from leadback.audiences.query import EvaluationQuery, VersionedAudience, build_evaluation
from leadback.audiences.repository import AudienceRepository, StoredAudience
from leadback.audiences.rules import AudienceSpec, references
from leadback.clock import Clock, SystemClock
from leadback.errors import BrokerUnavailableError, LeadbackError
from leadback.identity.graph import IdentityGraph, Link, links_from_event
from leadback.logs import get_logger
from leadback.store.client import ClickHouseStore

log = get_logger(__name__)

_CHUNK = 20_000  # persons per statement in timer and erasure passes
_SWEEP_EVERY_S = 30.0
_RELOAD_EVERY_S = 5.0  # definitions written by another process; in-process writes set `changed`
_DUE_LOOKBACK_MS = 2 * 86_400_000


@dataclass
class AudienceStats:
    """Counters for /metrics and the benchmark."""

    evaluations: int = 0
    persons_evaluated: int = 0
    changes: int = 0
    changes_published: int = 0
    republished: int = 0
    publish_failures: int = 0
    identity_links: int = 0
    last_evaluation_seconds: float = 0.0


@dataclass(frozen=True)
class Erasure:
    """What an erasure removed."""

    site: str
    persons: list[str]
    visitors: list[str]
    exits: int


class AudienceEngine:
    """Evaluates audiences in ClickHouse and publishes the resulting changes."""

    def __init__(
        self,
        store: ClickHouseStore,
        publisher: ChangePublisher,
        *,
        clock: Clock | None = None,
        repository: AudienceRepository | None = None,
    ) -> None:
        self._store = store
        self._db = store.database
        self._publisher = publisher
        self._clock = clock or SystemClock()
        self.repository = repository or AudienceRepository(store)
        self.identity = IdentityGraph(store)
        self._lock = asyncio.Lock()
        self._audiences: dict[str, list[StoredAudience]] = {}
        self._queries: dict[tuple[Any, ...], EvaluationQuery] = {}
        self._triggers: dict[tuple[str, str, int], frozenset[str] | None] = {}
        self._wanted: frozenset[str] | None = None
        self._last_due: dict[str, int] = {}
        self._last_sweep = -_SWEEP_EVERY_S
        self._last_reload = -_RELOAD_EVERY_S
        self.stats = AudienceStats()
        self.changed = asyncio.Event()  # set by the admin API after a definition write

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Load definitions, republish what a crash left unacknowledged, catch up on rules."""
        async with self._lock:
            await self._republish_unacknowledged()
            await self._reconcile()

    async def run(
        self,
        stop: asyncio.Event,
        *,
        interval_s: float,
        leader: Callable[[], bool] = lambda: True,
    ) -> None:
        """Call :meth:`tick` every ``interval_s`` (sooner after a definition changed) while
        ``leader()`` says this process is the one to run timer passes."""
        while not stop.is_set():
            waiter = asyncio.create_task(self.changed.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait(
                {waiter, stopper}, timeout=interval_s, return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()
            stopper.cancel()
            if stop.is_set():
                return
            reload = self.changed.is_set() or (
                self._clock.monotonic() - self._last_reload >= _RELOAD_EVERY_S
            )
            self.changed.clear()
            try:
                await self.tick(leader=leader(), reload=reload)
            except LeadbackError as exc:
                # Store or broker trouble: the same pass runs again next tick.
                log.error("audience tick failed", error=str(exc))

    async def tick(self, *, leader: bool = True, reload: bool = True) -> None:
        """Reload definitions (if ``reload``); as the leader also re-evaluate changed ones, run
        the due pass and sweep the outbox now and then."""
        async with self._lock:
            if reload:
                await self._reconcile(refresh=leader)
            if not leader:
                return
            await self._due_pass()
            if self._clock.monotonic() - self._last_sweep >= _SWEEP_EVERY_S:
                await self._republish_unacknowledged()

    def audiences(self, site: str) -> list[StoredAudience]:
        """Active audiences of a site, as last loaded."""
        return list(self._audiences.get(site, []))

    # -- after each batch -----------------------------------------------------------------

    def digest(self, body: bytes) -> BatchDigest:
        """What :meth:`on_round` needs from an inserted ``JSONEachRow`` body (bulk scans: the
        event types the loaded audiences react to, and the identity lines)."""
        return digest(body, self._wanted_types())

    async def on_batch(self, keys: Iterable[bytes], values: Sequence[bytes], token: str) -> None:
        """:meth:`on_round` for one batch of event values."""
        await self.on_round(keys, [self.digest(b"\n".join(values))], token)

    async def on_round(
        self, keys: Iterable[bytes], digests: Sequence[BatchDigest], token: str
    ) -> None:
        """Identity links, then incremental evaluation for the persons of the round's records
        (``keys``: ``site_id:visitor_id``; ``digests``: of the bodies inserted)."""
        by_site: dict[str, set[str]] = {}
        for key in keys:
            site, _, visitor = key.decode().partition(":")
            if visitor and not visitor.startswith("e:"):
                by_site.setdefault(site, set()).add(visitor)
        round_digest = merge(digests)
        events = [orjson.loads(line) for line in round_digest.identity]
        async with self._lock:
            for site in sorted({*by_site, *(str(e.get("site_id")) for e in events)}):
                site_events = [e for e in events if e.get("site_id") == site]
                lost, moved = await self._apply_identity(site, site_events)
                # Only the audiences these event types can change (all of them when persons
                # merged); the rest can only change with time, which the timer pass covers.
                audiences = self._audiences.get(site, [])
                if not (lost or moved):
                    audiences = [a for a in audiences if self._triggered(a, round_digest)]
                if not audiences:
                    continue
                visitors = by_site.get(site, set()) | moved
                persons = set((await self.identity.persons_of(site, visitors)).values()) | lost
                await self._evaluate_persons(
                    site, persons, token=f"{token}|{site}", audiences=audiences
                )

    async def _apply_identity(
        self, site: str, events: list[dict[str, Any]]
    ) -> tuple[set[str], set[str]]:
        links: list[Link] = []
        contacts: dict[str, dict[str, Any]] = {}
        for e in events:
            link = links_from_event(e)
            if link is not None:
                links.append(link)
            traits = e.get("traits")
            if isinstance(traits, dict) and traits:
                row = contacts.setdefault(
                    str(e["visitor_id"]),
                    {"user_id": e.get("user_id") or "", "traits": {}, "at": e["received_at"]},
                )
                row["traits"].update(traits)
                row["at"] = e["received_at"]
        if contacts:
            await self._save_contacts(site, contacts)
        if not links:
            return set(), set()
        self.stats.identity_links += len(links)
        return await self.identity.apply(site, links)

    async def _save_contacts(self, site: str, contacts: dict[str, dict[str, Any]]) -> None:
        rows = await self._store.query(
            f"SELECT visitor_id, argMax(traits, updated_at) FROM {self._db}.contacts "
            "WHERE site_id = {s:String} AND visitor_id IN {v:Array(String)} GROUP BY visitor_id",
            {"s": site, "v": sorted(contacts)},
        )
        known = {str(r[0]): orjson.loads(r[1]) for r in rows}
        body = b"\n".join(
            orjson.dumps(
                {
                    "site_id": site,
                    "visitor_id": visitor,
                    "user_id": c["user_id"],
                    "traits": orjson.dumps({**known.get(visitor, {}), **c["traits"]}).decode(),
                    "updated_at": c["at"],
                }
            )
            for visitor, c in sorted(contacts.items())
        )
        await self._store.insert_json_rows(
            "contacts", body, dedup_token=f"contacts:{site}:{time.time_ns()}"
        )

    # -- evaluation -----------------------------------------------------------------------

    def _query(self, site: str, evaluate: Sequence[StoredAudience], *, incremental: bool) -> Any:
        key = (site, tuple((a.spec.id, a.version) for a in evaluate), incremental)
        query = self._queries.get(key)
        if query is None:
            site_specs = {a.spec.id: a.spec for a in self._audiences.get(site, [])}
            query = build_evaluation(
                self._db, [a.versioned for a in evaluate], site_specs, incremental=incremental
            )
            self._queries[key] = query
        return query

    def _trigger_types(self, audience: StoredAudience) -> frozenset[str] | None:
        key = (audience.spec.site, audience.spec.id, audience.version)
        if key not in self._triggers:
            site_specs = {a.spec.id: a.spec for a in self._audiences.get(audience.spec.site, [])}
            self._triggers[key] = trigger_types(audience.spec, site_specs)
        return self._triggers[key]

    def _triggered(self, audience: StoredAudience, round_digest: BatchDigest) -> bool:
        triggers = self._trigger_types(audience)
        return triggers is None or round_digest.may_hold(triggers)

    def _wanted_types(self) -> frozenset[str]:
        """The event types some loaded audience reacts to (audiences that react to any event
        need no type)."""
        if self._wanted is None:
            found: set[str] = set()
            for site_audiences in self._audiences.values():
                for a in site_audiences:
                    found |= self._trigger_types(a) or frozenset()
            self._wanted = frozenset(found)
        return self._wanted

    async def _evaluate_persons(
        self,
        site: str,
        persons: set[str],
        *,
        token: str,
        audiences: Sequence[StoredAudience] | None = None,
    ) -> int:
        """Incremental evaluation of ``audiences`` (default: all of ``site``) for ``persons``."""
        if not persons:
            return 0
        members = await self.identity.visitors_of(site, persons)
        visitors = set().union(*members.values())
        return await self._evaluate(
            site,
            self._audiences.get(site, []) if audiences is None else audiences,
            visitors=visitors,
            persons=persons,
            token=token,
            exit_reason="no_longer_qualifies",
        )

    async def _evaluate(
        self,
        site: str,
        evaluate: Sequence[StoredAudience],
        *,
        visitors: set[str] | None,
        persons: set[str] | None,
        token: str,
        exit_reason: str,
    ) -> int:
        """Run the statement, write memberships, change log and due times, publish changes."""
        if not evaluate:
            return 0
        started = self._clock.monotonic()
        incremental = visitors is not None
        query = self._query(site, evaluate, incremental=incremental)
        now = self.now_ms()
        params: dict[str, Any] = {"site": site, "now": now}
        if incremental:
            params["vids"] = sorted(visitors or ())
            params["persons"] = sorted(persons or ())
        qualifying: dict[Key, tuple[str, ...]] = {}
        dues: list[bytes] = []
        for audience_id, person, products, due in await self._store.query(query.members, params):
            if audience_id:
                qualifying[(audience_id, person)] = tuple(products)
            elif due:
                dues.append(orjson.dumps({"site_id": site, "due_at": due, "person_id": person}))
        stored = {
            (str(a), str(p)): Stored(str(st), int(v), int(e), tuple(pr))
            for a, p, st, v, e, pr in await self._store.query(query.previous, params)
        }
        ttl = {a.spec.id: a.spec.ttl or 0 for a in evaluate}
        versions = {a.spec.id: a.version for a in evaluate}
        changes: list[dict[str, Any]] = []
        memberships: list[bytes] = []
        found = transitions(qualifying, stored, ttl_ms=ttl, now=now, exit_reason=exit_reason)
        for tr in found:
            row = {
                "site_id": site,
                "audience_id": tr.audience_id,
                "person_id": tr.person,
                "version": tr.version,
                "products": tr.products,
                "entered_at": tr.entered_at,
                "audience_version": versions[tr.audience_id],
            }
            memberships.append(orjson.dumps({**row, "state": tr.state, "changed_at": now}))
            if tr.change:
                changes.append(
                    {**row, "change": tr.change, "reason": tr.reason, "at": now, "token": token}
                )
            if tr.change == "enter" and ttl[tr.audience_id]:
                due_at = tr.entered_at + ttl[tr.audience_id]
                dues.append(
                    orjson.dumps({"site_id": site, "due_at": due_at, "person_id": tr.person})
                )
        await self._write_and_publish(token, changes, memberships)
        if dues:
            await self._store.insert_json_rows(
                "audience_due", b"\n".join(dues), dedup_token=f"due:{token}"
            )
        self.stats.evaluations += 1
        self.stats.persons_evaluated += len(persons or ())
        self.stats.last_evaluation_seconds = self._clock.monotonic() - started
        return len(changes)

    async def _write_and_publish(
        self, token: str, changes: list[dict[str, Any]], memberships: list[bytes]
    ) -> None:
        # The change log first: if we die before the memberships are written, the replay
        # computes the same transitions (same versions) and the duplicate log insert is dropped.
        if changes:
            await self._store.insert_json_rows(
                "audience_changes",
                b"\n".join(orjson.dumps(c) for c in changes),
                dedup_token=f"changes:{token}",
            )
        if memberships:
            await self._store.insert_json_rows(
                "memberships", b"\n".join(memberships), dedup_token=f"memberships:{token}"
            )
        if changes:
            failpoints.hit("audiences.before_publish")
            self.stats.changes += len(changes)
            await self._publish(token, [change_record(c) for c in changes])

    async def _publish(self, token: str, records: list[ChangeRecord]) -> bool:
        try:
            await self._publisher.publish(records)
        except BrokerUnavailableError as exc:
            # Logged in the outbox: the sweep publishes them when the broker is back.
            self.stats.publish_failures += 1
            log.warning("changes not published yet", token=token, error=str(exc))
            return False
        await self._store.insert_json_rows(
            "audience_changes_published",
            orjson.dumps({"token": token}),
            dedup_token=f"published:{token}",
        )
        self.stats.changes_published += len(records)
        return True

    async def _republish_unacknowledged(self) -> None:
        self._last_sweep = self._clock.monotonic()
        rows = await self._store.query(
            f"SELECT site_id, audience_id, person_id, change, reason, version, audience_version, "
            f"products, at, entered_at, token FROM {self._db}.audience_changes "
            f"WHERE token NOT IN (SELECT token FROM {self._db}.audience_changes_published) "
            "ORDER BY token, at, audience_id, person_id"
        )
        names = [
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
        ]
        by_token: dict[str, list[ChangeRecord]] = {}
        for raw in rows:
            r = dict(zip(names, raw, strict=True))
            by_token.setdefault(str(r["token"]), []).append(change_record(r))
        for token, records in by_token.items():
            if await self._publish(token, records):
                self.stats.republished += len(records)
                log.info("republished logged changes", token=token, records=len(records))

    # -- definitions ----------------------------------------------------------------------

    async def _reconcile(self, *, refresh: bool = True) -> None:
        self._last_reload = self._clock.monotonic()
        stored = await self.repository.all(include_deleted=True)
        evaluated = await self.repository.evaluated_versions()
        active: dict[str, list[StoredAudience]] = {}
        for a in stored:
            if not a.deleted:
                active.setdefault(a.spec.site, []).append(a)
        if active != self._audiences:
            self._audiences = active
            self._queries.clear()
            self._triggers.clear()
            self._wanted = None
        if not refresh:
            return
        stale = [a for a in stored if evaluated.get((a.spec.site, a.spec.id)) != a.version]
        for site in sorted({a.spec.site for a in stale}):
            site_stale = [a for a in stale if a.spec.site == site]
            await self._refresh_site(site, site_stale)

    async def _refresh_site(self, site: str, stale: list[StoredAudience]) -> None:
        now = self.now_ms()
        token = f"rules:{site}:{now}"
        deleted = [a for a in stale if a.deleted]
        for a in deleted:
            await self._exit_all(site, a, token=f"{token}:{a.spec.id}", reason="audience_deleted")
        changed = {a.spec.id for a in stale if not a.deleted}
        # Audiences that inline a changed one through in_audience change with it.
        live = self._audiences.get(site, [])
        grew = True
        while grew:
            grew = False
            for a in live:
                if a.spec.id not in changed and references(a.spec.rule) & changed:
                    changed.add(a.spec.id)
                    grew = True
        targets = [a for a in live if a.spec.id in changed]
        if targets:
            count = await self._evaluate(
                site,
                targets,
                visitors=None,
                persons=None,
                token=token,
                exit_reason="rule_changed",
            )
            log.info(
                "audiences re-evaluated",
                site=site,
                audiences=[a.spec.id for a in targets],
                changes=count,
            )
        for a in stale:
            await self.repository.mark_evaluated(site, a.spec.id, a.version)

    async def _exit_all(
        self, site: str, audience: StoredAudience, *, token: str, reason: str
    ) -> int:
        rows = await self._store.query(
            f"SELECT person_id, version, products, entered_at FROM {self._db}.memberships FINAL "
            "WHERE site_id = {s:String} AND audience_id = {a:String} AND state = 'in'",
            {"s": site, "a": audience.spec.id},
        )
        return await self._exits(site, audience.spec.id, audience.version, rows, token, reason)

    async def _exits(
        self,
        site: str,
        audience_id: str,
        audience_version: int,
        rows: Sequence[Sequence[Any]],
        token: str,
        reason: str,
    ) -> int:
        now = self.now_ms()
        changes: list[dict[str, Any]] = []
        memberships: list[bytes] = []
        for person, version, products, entered in rows:
            base = {
                "site_id": site,
                "audience_id": audience_id,
                "person_id": person,
                "version": int(version) + 1,
                "products": list(products),
                "entered_at": int(entered),
                "audience_version": audience_version,
            }
            memberships.append(orjson.dumps({**base, "state": "out", "changed_at": now}))
            changes.append({**base, "change": "exit", "reason": reason, "at": now, "token": token})
        await self._write_and_publish(token, changes, memberships)
        return len(changes)

    # -- timer ----------------------------------------------------------------------------

    async def _due_pass(self) -> None:
        now = self.now_ms()
        for site in sorted(self._audiences):
            since = self._last_due.get(site, now - _DUE_LOOKBACK_MS)
            rows = await self._store.query(
                f"SELECT DISTINCT person_id FROM {self._db}.audience_due "
                "WHERE site_id = {s:String} AND due_at > {a:Int64} AND due_at <= {b:Int64}",
                {"s": site, "a": since, "b": now},
            )
            self._last_due[site] = now
            persons = sorted(str(r[0]) for r in rows)
            for i in range(0, len(persons), _CHUNK):
                chunk = set(persons[i : i + _CHUNK])
                await self._evaluate_persons(site, chunk, token=f"due:{site}:{now}:{i}")

    def now_ms(self) -> int:
        return int(self._clock.now() * 1000)

    # -- admin operations -----------------------------------------------------------------

    def explain(
        self,
        spec: AudienceSpec,
        version: int = 0,
        site_audiences: dict[str, AudienceSpec] | None = None,
    ) -> dict[str, str]:
        """The SQL an audience compiles to: its rule expression, the statement that finds who
        qualifies among a batch's visitors, and the one that reads their memberships.
        ``site_audiences`` resolve ``in_audience`` (default: the definitions last loaded)."""
        site_specs = site_audiences
        if site_specs is None:
            site_specs = {a.spec.id: a.spec for a in self._audiences.get(spec.site, [])}
        rule = compile_rule(spec, site_specs)
        query = build_evaluation(
            self._db, [VersionedAudience(spec, version)], site_specs, incremental=True
        )
        return {"rule": rule.expression, "members": query.members, "previous": query.previous}

    async def erase(self, site: str, *, visitor_id: str | None, user_id: str | None) -> Erasure:
        """Remove a visitor's or user's events, identity, contacts and memberships; exits first."""
        starts = [x for x in (visitor_id, f"u:{user_id}" if user_id else None) if x]
        async with self._lock:
            persons = set((await self.identity.persons_of(site, starts)).values())
            members = await self.identity.visitors_of(site, persons)
            visitors = sorted(set().union(*members.values()))
            person_list = sorted(persons)
            rows = await self._store.query(
                f"SELECT audience_id, person_id, version, products, entered_at, audience_version "
                f"FROM {self._db}.memberships FINAL WHERE site_id = {{s:String}} "
                "AND person_id IN {p:Array(String)} AND state = 'in'",
                {"s": site, "p": person_list},
            )
            exits = 0
            token = f"erase:{site}:{self.now_ms()}"
            for audience_id in sorted({str(r[0]) for r in rows}):
                mine = [r[1:5] for r in rows if r[0] == audience_id]
                version = next(int(r[5]) for r in rows if r[0] == audience_id)
                exits += await self._exits(
                    site, audience_id, version, mine, f"{token}:{audience_id}", "erased"
                )
            params = {"s": site, "v": visitors, "p": person_list}
            for table, column, key in (
                ("events", "visitor_id", "v"),
                ("contacts", "visitor_id", "v"),
                ("memberships", "person_id", "p"),
                ("audience_due", "person_id", "p"),
                ("audience_changes", "person_id", "p"),
            ):
                await self._store.command(
                    f"DELETE FROM {self._db}.{table} WHERE site_id = {{s:String}} "
                    f"AND {column} IN {{{key}:Array(String)}}",
                    params,
                )
            await self.identity.forget(site, visitors)
        log.info("erased", site=site, persons=len(persons), visitors=len(visitors), exits=exits)
        return Erasure(site, person_list, visitors, exits)
