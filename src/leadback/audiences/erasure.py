"""Erasure requests: a visitor or user leaves every audience (exits published first), then their
events, identity, contact details, signal state, memberships, timers, logged changes, scheduled
campaign steps, deliveries and channel addresses are deleted."""

from __future__ import annotations

from dataclasses import dataclass

from leadback.audiences.evaluation import Evaluator
from leadback.identity.graph import IdentityGraph
from leadback.logs import get_logger
from leadback.store.client import ClickHouseStore

log = get_logger(__name__)

# (table, column, parameter): the rows of an erased person, by visitor id or by person id.
_ERASED = (
    ("events", "visitor_id", "v"),
    ("contacts", "visitor_id", "v"),
    ("person_signals", "visitor_id", "v"),
    ("memberships", "person_id", "p"),
    ("audience_due", "person_id", "p"),
    ("audience_changes", "person_id", "p"),
    # The dispatcher's: scheduled steps, the delivery log, channel addresses. A suppression
    # of the erased person stays (the dispatcher writes it on the erasure's exit).
    ("campaign_steps", "person_id", "p"),
    ("deliveries", "person_id", "p"),
    ("push_subscriptions", "visitor_id", "v"),
    ("telegram_chats", "visitor_id", "v"),
)


@dataclass(frozen=True)
class Erasure:
    """What an erasure removed."""

    site: str
    persons: list[str]
    visitors: list[str]
    exits: int


class Eraser:
    """Carries out erasure requests; the caller holds the engine's lock."""

    def __init__(
        self, store: ClickHouseStore, identity: IdentityGraph, evaluator: Evaluator
    ) -> None:
        self._store = store
        self._db = store.database
        self._identity = identity
        self._evaluator = evaluator

    async def erase(self, site: str, *, visitor_id: str | None, user_id: str | None) -> Erasure:
        """Remove a visitor's or user's person (all its visitor ids); exits first."""
        starts = [x for x in (visitor_id, f"u:{user_id}" if user_id else None) if x]
        persons = set((await self._identity.persons_of(site, starts)).values())
        members = await self._identity.visitors_of(site, persons)
        visitors = sorted(set().union(*members.values()))
        person_list = sorted(persons)
        rows = await self._store.query(
            f"SELECT audience_id, person_id, version, products, entered_at, audience_version "
            f"FROM {self._db}.memberships FINAL WHERE site_id = {{s:String}} "
            "AND person_id IN {p:Array(String)} AND state = 'in'",
            {"s": site, "p": person_list},
        )
        exits = 0
        token = f"erase:{site}:{self._evaluator.now_ms()}"
        for audience_id in sorted({str(r[0]) for r in rows}):
            mine = [r[1:5] for r in rows if r[0] == audience_id]
            version = next(int(r[5]) for r in rows if r[0] == audience_id)
            exits += await self._evaluator.exit_members(
                site, audience_id, version, mine, token=f"{token}:{audience_id}", reason="erased"
            )
        params = {"s": site, "v": visitors, "p": person_list}
        for table, column, key in _ERASED:
            await self._store.command(
                f"DELETE FROM {self._db}.{table} WHERE site_id = {{s:String}} "
                f"AND {column} IN {{{key}:Array(String)}}",
                params,
            )
        # The key-value copies of their signal rows and memberships, by key (made in SQL: no
        # NUL byte travels as a parameter).
        for table, key in (("person_state", "v"), ("person_memberships", "p")):
            await self._store.command(
                f"DELETE FROM {self._db}.{table} WHERE k IN "
                f"(SELECT concat({{s:String}}, '\\0', arrayJoin({{{key}:Array(String)}})))",
                params,
            )
        await self._identity.forget(site, visitors)
        log.info("erased", site=site, persons=len(persons), visitors=len(visitors), exits=exits)
        return Erasure(site, person_list, visitors, exits)
