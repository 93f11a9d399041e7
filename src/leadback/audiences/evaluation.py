"""Evaluation: who qualifies now, diffed against the stored memberships, becomes membership
rows, changes and due times handed to the outbox.

One statement finds the persons' visitors and one fixed statement reads their signal state, of
every site a round touched (:mod:`~.state_read`), another their stored memberships; the rules
run on the state as compiled functions (:mod:`~.program`). It also gives each person the next
moment their audiences could change with no new event (``audience_due``, read by the timer
pass).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from leadback.audiences.definitions import LoadedAudiences
from leadback.audiences.diff import Stored, transitions
from leadback.audiences.outbox import AudienceStats, ChangeOutbox
from leadback.audiences.query import memberships_sql, stored_entries
from leadback.audiences.repository import StoredAudience
from leadback.audiences.state_read import (
    STATE_WIDTH,
    PersonStates,
    group_states,
    keys_sql,
    persons_of,
    site_params,
    state_keys,
    state_sql,
)
from leadback.clock import Clock
from leadback.store.client import ClickHouseStore
from leadback.store.literals import string_pairs


@dataclass
class Outcome:
    """What an evaluation found, to write: change records, membership rows, due times."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    memberships: list[bytes] = field(default_factory=list)
    dues: list[bytes] = field(default_factory=list)


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
        reader: ClickHouseStore | None = None,
    ) -> None:
        self._store = store
        # The memberships read runs on a client of its own, beside the state read: the two
        # are independent, and ClickHouse runs them at once.
        self._reader = reader or store
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
        visitors: Mapping[str, set[str]] | None = None,
    ) -> Outcome:
        """The transitions of the persons of several sites (site -> (persons, audiences;
        None: the live ones)), not written yet: a round gathers every site's and commits them
        once. ``visitors`` (site -> visitor ids): their persons are evaluated too. Three
        statements whatever the number of sites: the identity rows (the visitors' persons and
        the persons' visitors), their state, their memberships."""
        resolve = visitors or {}
        work: dict[str, tuple[set[str], Sequence[StoredAudience]]] = {}
        for site, (persons, audiences) in requests.items():
            evaluate = self._definitions.live(site) if audiences is None else audiences
            if (persons or resolve.get(site)) and evaluate:
                work[site] = (set(persons), evaluate)
        outcome = Outcome()
        if not work:
            return outcome
        started = self._clock.monotonic()
        programs = {site: self._definitions.program(site, ev) for site, (_, ev) in work.items()}
        now = self.now_ms()
        params: dict[str, Any] = {
            **site_params({site: program.params for site, program in programs.items()}),
            "now": now,
            "since": now - self._store.settings.events_ttl_days * 86_400_000,
        }
        unresolved = [(site, v) for site in sorted(work) for v in sorted(resolve.get(site, ()))]
        ids = sorted({*unresolved, *((site, p) for site, (ps, _) in work.items() for p in ps)})
        identity = await self._store.query(keys_sql(self._db, string_pairs(ids)))
        for site, person in persons_of(unresolved, identity):
            work[site][0].add(person)
        pairs = [(site, p) for site, (persons, _) in sorted(work.items()) for p in sorted(persons)]
        keys = state_keys(pairs, identity)
        state_columns, rows = await asyncio.gather(
            self._store.query_columns(state_sql(self._db, keys), params, width=STATE_WIDTH),
            self._reader.query(memberships_sql(self._db, string_pairs(pairs))),
        )
        states = group_states(zip(*state_columns, strict=True))
        audience_pairs = [(site, a.spec.id) for site, (_, ev) in work.items() for a in ev]
        stored: dict[str, dict[tuple[str, str], Stored]] = {site: {} for site in work}
        for site, a, p, st, v, e, pr in stored_entries(rows, audience_pairs):
            stored[site][(a, p)] = Stored(st, v, e, pr)
        for site, (persons, evaluate) in sorted(work.items()):
            site_states = states.get(site, PersonStates())
            program = programs[site]
            self._outcome(
                site,
                evaluate,
                program.members(site_states, now),
                stored[site],
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
        await self._outbox.write(token, outcome.changes, outcome.memberships)
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
