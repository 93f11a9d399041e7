"""Evaluation: who qualifies now, diffed against the stored memberships, becomes membership
rows, changes and due times handed to the outbox.

One fixed statement reads the persons' signal state, of every site a round touched
(:mod:`~.state_read`), another their stored memberships; the rules run on the state as compiled
functions (:mod:`~.program`). It also gives each person the next moment their audiences could
change with no new event (``audience_due``, read by the timer pass). With a
:class:`~.state_cache.StateCache`, persons read before (warm) read only the rows stored since
and take their memberships from the cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from leadback.audiences.definitions import LoadedAudiences
from leadback.audiences.diff import Stored, transitions
from leadback.audiences.outbox import AudienceStats, ChangeOutbox
from leadback.audiences.program import EvaluationProgram
from leadback.audiences.query import memberships_sql
from leadback.audiences.repository import StoredAudience
from leadback.audiences.state_cache import Entry, StateCache, merge
from leadback.audiences.state_read import (
    PersonStates,
    StateRead,
    add_due,
    derive,
    group_states,
    read_rows,
    state_params,
    state_sql,
)
from leadback.clock import Clock
from leadback.store.client import ClickHouseStore
from leadback.store.literals import string_pairs, strings

#: How an evaluation uses the state cache: a round's (advances its bound), a timer pass's,
#: or none (refreshes, erasure: their writes drop the cache).
CacheUse = Literal["round", "timer"] | None


@dataclass
class Outcome:
    """What an evaluation found, to write: change records, membership rows, due times, and
    (``cached``) the memberships to set in the state cache once written; None: the writes go
    around the cache, which is dropped."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    memberships: list[bytes] = field(default_factory=list)
    dues: list[bytes] = field(default_factory=list)
    cached: list[tuple[str, str, str, Stored]] | None = None


class Evaluator:
    """Evaluates audiences and hands the transitions to the outbox."""

    def __init__(
        self,
        store: ClickHouseStore,
        definitions: LoadedAudiences,
        outbox: ChangeOutbox,
        *,
        clock: Clock,
        stats: AudienceStats,
        cache: StateCache | None = None,
    ) -> None:
        self.cache = cache if cache is not None else StateCache(0)
        self._store = store
        self._db = store.database
        self._definitions = definitions
        self._outbox = outbox
        self._clock = clock
        self._stats = stats

    def now_ms(self) -> int:
        return int(self._clock.now() * 1000)

    async def persons(
        self,
        site: str,
        persons: set[str],
        *,
        token: str,
        audiences: Sequence[StoredAudience] | None = None,
        exit_reason: str = "no_longer_qualifies",
    ) -> int:
        """Evaluate ``audiences`` (default: the live ones of ``site``) for ``persons`` (all
        their visitor ids) and write the outcome; return the number of changes."""
        outcome = await self.assess(
            site, persons, token=token, audiences=audiences, exit_reason=exit_reason
        )
        return await self.commit(outcome, token=token)

    async def assess(
        self,
        site: str,
        persons: set[str],
        *,
        token: str,
        audiences: Sequence[StoredAudience] | None = None,
        exit_reason: str = "no_longer_qualifies",
    ) -> Outcome:
        """The transitions of ``persons`` in ``audiences`` (default: the live ones of
        ``site``), not written yet (see :meth:`assess_sites`)."""
        return await self.assess_sites(
            {site: (persons, audiences)}, token=token, exit_reason=exit_reason
        )

    async def assess_sites(
        self,
        requests: Mapping[str, tuple[set[str], Sequence[StoredAudience] | None]],
        *,
        token: str,
        exit_reason: str = "no_longer_qualifies",
        cached: CacheUse = None,
    ) -> Outcome:
        """The transitions of the persons of several sites (site -> (persons, audiences;
        None: the live ones)), not written yet: a round gathers every site's and commits them
        once. Two statements whatever the number of sites: their state, their memberships
        (``cached``: warm persons read only new rows and no memberships; the audiences must
        be live ones)."""
        work: dict[str, tuple[set[str], Sequence[StoredAudience]]] = {}
        for site, (persons, audiences) in requests.items():
            evaluate = self._definitions.live(site) if audiences is None else audiences
            if persons and evaluate:
                work[site] = (persons, evaluate)
        cache = self.cache if cached is not None and self.cache.enabled else None
        outcome = Outcome(cached=[] if cache is not None else None)
        if not work:
            return outcome
        started = self._clock.monotonic()
        programs = {site: self._definitions.program(site, ev) for site, (_, ev) in work.items()}
        # What the statement reads: with the cache, what every live audience of the site may
        # read (an entry serves later rounds' other audiences too).
        wide = {
            site: self._definitions.program(site, self._definitions.live(site))
            if cache is not None
            else programs[site]
            for site in work
        }
        now = self.now_ms()
        since = now - self._store.settings.events_ttl_days * 86_400_000
        warm: dict[tuple[str, str], Entry] = {}
        cold: list[tuple[str, str]] = []
        if cache is not None:
            cache.sync(self._definitions.generation)
        # A timer pass reads whole states (the due times that follow need every time); its
        # entries replace those cached.
        warm_reads = cache is not None and cached == "round"
        for site, (persons, _) in sorted(work.items()):
            for p in sorted(persons):
                entry = cache.get(site, p) if cache is not None and warm_reads else None
                if entry is not None:
                    warm[(site, p)] = entry
                else:
                    cold.append((site, p))
        params: dict[str, Any] = {
            **state_params({site: program.keep for site, program in wide.items()}),
            "now": now,
            "since": since,
            "bound": cache.read_bound() if cache is not None else 0,
            "hashes": int(cache is not None),
        }
        result = await self._store.query(
            state_sql(self._db, string_pairs(cold), string_pairs(sorted(warm)) if warm else None),
            params,
        )
        # Without the cache the rows go straight into the rules' state; with it, into rows
        # an entry keeps.
        grouped = group_states(result, now) if cache is None else {}
        read = read_rows(result) if cache is not None else StateRead()
        if cached == "round" and cache is not None and read.clock:
            cache.bound = read.clock
        stored = await self._stored(work, cold, full=cache is not None)
        for site, (persons, evaluate) in sorted(work.items()):
            program = programs[site]
            ids = frozenset(a.spec.id for a in evaluate)
            of_person = stored.get(site, {})
            changed: dict[str, frozenset[int]] = {}
            if cache is None:
                site_states = grouped.get(site, PersonStates())
                site_stored = {
                    (a, p): m for p in persons for a, m in of_person.get(p, {}).items() if a in ids
                }
            else:
                site_states, site_stored = self._from_cache(
                    cache,
                    site,
                    persons,
                    ids,
                    program,
                    wide[site],
                    read,
                    of_person,
                    warm,
                    now=now,
                    since=since,
                    changed=changed,
                )
            self._outcome(
                site,
                evaluate,
                program.members(site_states, now, changed),
                site_stored,
                program.dues(site_states),
                now=now,
                token=token,
                exit_reason=exit_reason,
                into=outcome,
            )
            self._stats.evaluations += 1
            self._stats.persons_evaluated += len(persons)
        self._stats.last_evaluation_seconds = self._clock.monotonic() - started
        return outcome

    def _from_cache(
        self,
        cache: StateCache,
        site: str,
        persons: set[str],
        ids: frozenset[str],
        program: EvaluationProgram,
        wide: EvaluationProgram,
        read: StateRead,
        of_person: Mapping[str, dict[str, Stored]],
        warm: Mapping[tuple[str, str], Entry],
        *,
        now: int,
        since: int,
        changed: dict[str, frozenset[int]],
    ) -> tuple[PersonStates, dict[tuple[str, str], Stored]]:
        """A site's persons through the cache: cold ones become entries, warm ones merge what
        was read; the state the rules run on and the memberships to compare with. A warm
        person's ``changed`` signals limit the audiences compared: only those reading one
        can change (time-driven changes are the timer pass's)."""
        states = PersonStates()
        compared: dict[tuple[str, str], Stored] = {}
        # Rows read for this very program need no trimming again (every live audience).
        exact = wide is program
        for person in persons:
            key = (site, person)
            rows = read.rows.get(key, {})
            # Due times from the rows read: a warm person's are those of the new times.
            add_due(person, rows, states)
            audiences = ids
            reads: frozenset[int] | None = None
            entry = warm.get(key)
            if entry is None:
                entry = Entry(rows, of_person.get(person, {}))
            else:
                fresh = changed[person] = frozenset(s for s, _ in rows)
                affected, reads = program.affected(fresh)
                audiences = ids & affected
                merge(entry, rows, wide.keep, now, since)
            cache.put(site, person, entry)
            for a in audiences:
                held = entry.memberships.get(a)
                if held is not None:
                    compared[(a, person)] = held
            derive(
                person,
                entry.rows,
                program.keep,
                now,
                since,
                states,
                signals=reads,
                exact=exact and entry.rows is rows,
            )
        return states, compared

    async def _stored(
        self,
        work: Mapping[str, tuple[set[str], Sequence[StoredAudience]]],
        persons: Sequence[tuple[str, str]],
        *,
        full: bool,
    ) -> dict[str, dict[str, dict[str, Stored]]]:
        """The stored memberships (site -> person -> audience) of ``persons`` in the audiences
        evaluated (``full``: in every live audience of their sites, for the cache)."""
        stored: dict[str, dict[str, dict[str, Stored]]] = {site: {} for site in work}
        if not persons:
            return stored
        audience_pairs = [
            (site, a.spec.id)
            for site, (_, ev) in work.items()
            for a in (self._definitions.live(site) if full else ev)
        ]
        wanted = set(persons)
        for site, a, p, st, v, e, pr in await self._store.query(
            memberships_sql(self._db, strings(sorted({p for _, p in persons}))),
            {"audiences": audience_pairs},
        ):
            if (str(site), str(p)) in wanted:
                stored[str(site)].setdefault(str(p), {})[str(a)] = Stored(
                    str(st), int(v), int(e), tuple(pr)
                )
        return stored

    def _outcome(
        self,
        site: str,
        evaluate: Sequence[StoredAudience],
        qualifying: Mapping[tuple[str, str], tuple[str, ...]],
        stored: Mapping[tuple[str, str], Stored],
        dues: Mapping[str, int],
        *,
        now: int,
        token: str,
        exit_reason: str,
        into: Outcome,
    ) -> None:
        for person, due in dues.items():
            into.dues.append(orjson.dumps({"site_id": site, "due_at": due, "person_id": person}))
        ttl = {a.spec.id: a.spec.ttl or 0 for a in evaluate}
        versions = {a.spec.id: a.version for a in evaluate}
        found = transitions(qualifying, stored, ttl_ms=ttl, now=now, exit_reason=exit_reason)
        for tr in found:
            if into.cached is not None:
                into.cached.append(
                    (
                        site,
                        tr.person,
                        tr.audience_id,
                        Stored(tr.state, tr.version, tr.entered_at, tr.products),
                    )
                )
            row = {
                "site_id": site,
                "audience_id": tr.audience_id,
                "person_id": tr.person,
                "version": tr.version,
                "products": tr.products,
                "entered_at": tr.entered_at,
                "audience_version": versions[tr.audience_id],
            }
            into.memberships.append(orjson.dumps({**row, "state": tr.state, "changed_at": now}))
            if tr.change:
                into.changes.append(
                    {**row, "change": tr.change, "reason": tr.reason, "at": now, "token": token}
                )
            if tr.change == "enter" and ttl[tr.audience_id]:
                due_at = tr.entered_at + ttl[tr.audience_id]
                into.dues.append(
                    orjson.dumps({"site_id": site, "due_at": due_at, "person_id": tr.person})
                )

    async def commit(self, outcome: Outcome, *, token: str) -> int:
        """Write what :meth:`assess` found (every site of a round at once: a few inserts per
        round, not per site); return the number of changes."""
        if outcome.dues:
            # Before the outbox: a due time written twice only costs one more evaluation, one
            # lost would leave a membership waiting for the person's next event.
            await self._store.insert_json_rows(
                "audience_due", b"\n".join(outcome.dues), dedup_token=f"due:{token}"
            )
        if outcome.cached is None and outcome.memberships:
            # Written around the cache: what it holds of these persons may be wrong now.
            self.cache.clear("memberships written around it")
        await self._outbox.write(token, outcome.changes, outcome.memberships)
        for site, person, audience_id, stored in outcome.cached or ():
            self.cache.apply(site, person, audience_id, stored)
        return len(outcome.changes)

    async def exit_members(
        self,
        site: str,
        audience_id: str,
        audience_version: int,
        rows: Sequence[Sequence[Any]],
        *,
        token: str,
        reason: str,
    ) -> int:
        """Exit every member of ``rows`` (person, version, products, entered_at) from an
        audience (deleted, or the person erased); return how many."""
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
        self.cache.clear("members exited")
        await self._outbox.write(token, changes, memberships)
        return len(changes)

    async def exit_all(self, site: str, audience: StoredAudience, *, token: str) -> int:
        """Exit every member of a deleted audience."""
        rows = await self._store.query(
            f"SELECT person_id, version, products, entered_at FROM {self._db}.memberships FINAL "
            "WHERE site_id = {s:String} AND audience_id = {a:String} AND state = 'in'",
            {"s": site, "a": audience.spec.id},
        )
        return await self.exit_members(
            site, audience.spec.id, audience.version, rows, token=token, reason="audience_deleted"
        )
