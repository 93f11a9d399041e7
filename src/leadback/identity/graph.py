"""The identity graph: which *person* each visitor id belongs to, so audiences see one person.

* An event with both ``anonymous_id`` A and ``user_id`` U (an ``identify``, or any event sent by
  a signed-in visitor) links A to the person of ``u:U``. If A was a person of its own, A's
  whole history moves; if A already belonged to another user (a shared device), only A moves.
* ``alias`` with ``properties.previous_id`` X and ``user_id`` U merges the persons of X and of
  ``u:X`` into the person of ``u:U`` (Segment's ``alias(previousId, userId)``).
* A visitor without a row is a person of its own; ``u:U`` is the person of user U unless an
  alias merged it elsewhere.

Rows live in ``identities`` (ReplacingMergeTree by version): each move writes the visitor's new
person. Links are few compared with events, so this runs in Python on the few events that carry
them; everything per event stays in ClickHouse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from leadback.clock import Clock, SystemClock
from leadback.store.client import ClickHouseStore
from leadback.store.literals import as_set, string_pairs


@dataclass(frozen=True)
class Link:
    """``visitor`` belongs to user ``user_id``; ``merge`` moves the whole person (alias)."""

    visitor: str
    user_id: str
    merge: bool = False

    @property
    def target(self) -> str:
        return f"u:{self.user_id}"


class _Versions:
    """Row versions: nanoseconds of the clock, strictly increasing within the process."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, int(self._clock.now() * 1e9))
        return self._last


class IdentityGraph:
    """Reads and updates ``identities`` for one database."""

    def __init__(self, store: ClickHouseStore, *, clock: Clock | None = None) -> None:
        self._store = store
        self._db = store.database
        self._versions = _Versions(clock or SystemClock())

    async def persons_of(self, site: str, visitors: Iterable[str]) -> dict[str, str]:
        """visitor -> person, for each of ``visitors`` (a visitor without a row is itself)."""
        return (await self.persons_of_sites({site: visitors}))[site]

    async def persons_of_sites(
        self, visitors: Mapping[str, Iterable[str]]
    ) -> dict[str, dict[str, str]]:
        """:meth:`persons_of` for several sites (site -> visitors) in one statement."""
        pairs = sorted({(site, v) for site, vs in visitors.items() for v in vs})
        found: dict[str, dict[str, str]] = {site: {} for site in visitors}
        for site, v in pairs:
            found[site][v] = v
        if not pairs:
            return found
        rows = await self._store.query(
            f"SELECT site_id, visitor_id, argMax(person_id, version) FROM {self._db}.identities "
            f"WHERE (site_id, visitor_id) IN {as_set(string_pairs(pairs))} "
            "GROUP BY site_id, visitor_id"
        )
        for site, visitor, person in rows:
            found[str(site)][str(visitor)] = str(person)
        return found

    async def visitors_of(self, site: str, persons: Iterable[str]) -> dict[str, set[str]]:
        """person -> its visitor ids (the person id itself included)."""
        return (await self.visitors_of_sites({site: persons}))[site]

    async def visitors_of_sites(
        self, persons: Mapping[str, Iterable[str]]
    ) -> dict[str, dict[str, set[str]]]:
        """:meth:`visitors_of` for several sites (site -> persons) in one statement."""
        pairs = sorted({(site, p) for site, ps in persons.items() for p in ps})
        found: dict[str, dict[str, set[str]]] = {site: {} for site in persons}
        for site, p in pairs:
            found[site][p] = {p}
        if not pairs:
            return found
        # Rows naming a wanted person (the bloom index `person_idx` finds them), then each of
        # those visitors' latest row: a visitor since moved elsewhere falls to the HAVING.
        wanted = as_set(string_pairs(pairs))
        rows = await self._store.query(
            f"SELECT site_id, visitor_id, argMax(person_id, version) AS person "
            f"FROM {self._db}.identities WHERE (site_id, visitor_id) IN (SELECT site_id, "
            f"visitor_id FROM {self._db}.identities WHERE (site_id, person_id) IN {wanted}) "
            f"GROUP BY site_id, visitor_id HAVING (site_id, person) IN {wanted}"
        )
        for site, visitor, person in rows:
            found[str(site)][str(person)].add(str(visitor))
        return found

    async def apply(self, site: str, links: list[Link], *, token: str) -> tuple[set[str], set[str]]:
        """Apply links in order; return (persons that lost visitors, visitors that moved).
        ``token`` names the round the links came from (a replayed round writes nothing new)."""
        return (await self.apply_sites({site: links}, token=token))[site]

    async def apply_sites(
        self, links: Mapping[str, Sequence[Link]], *, token: str
    ) -> dict[str, tuple[set[str], set[str]]]:
        """:meth:`apply` for several sites (site -> links, each in order): one lookup of the
        persons, one of their visitors and one insert, whatever the number of sites."""
        out: dict[str, tuple[set[str], set[str]]] = {site: (set(), set()) for site in links}
        ids: dict[str, set[str]] = {}
        for site, site_links in links.items():
            wanted = ids.setdefault(site, set())
            for link in site_links:
                wanted.update((link.visitor, link.target))
                if link.merge:
                    wanted.add(f"u:{link.visitor}")
        persons = await self.persons_of_sites(ids)
        pending: dict[str, list[Link]] = {}
        olds: dict[str, set[str]] = {}
        for site, site_links in links.items():
            person = persons[site]
            todo = [
                link
                for link in site_links
                if link.merge or person[link.visitor] != person[link.target]
            ]
            if todo:
                pending[site] = todo
                olds[site] = {person[link.visitor] for link in todo} | {
                    person[f"u:{link.visitor}"] for link in todo if link.merge
                }
        if not pending:
            return out
        members = await self.visitors_of_sites(olds)
        rows: list[bytes] = []
        for site, todo in pending.items():
            lost, moved = _moves(todo, persons[site], members[site])
            out[site] = (lost, set(moved))
            rows.extend(
                orjson.dumps(
                    {
                        "site_id": site,
                        "visitor_id": v,
                        "person_id": p,
                        "version": self._versions.next(),
                    }
                )
                for v, p in sorted(moved.items())
            )
        if rows:
            await self._store.insert_json_rows(
                "identities", b"\n".join(rows), dedup_token=f"identities:{token}"
            )
        return out

    async def forget(self, site: str, visitors: Iterable[str]) -> None:
        """Erase the rows of these visitors (erasure requests)."""
        await self._store.command(
            f"DELETE FROM {self._db}.identities WHERE site_id = {{s:String}} "
            "AND (visitor_id IN {v:Array(String)} OR person_id IN {v:Array(String)})",
            {"s": site, "v": sorted(set(visitors))},
        )


def links_from_event(event: dict[str, object]) -> Link | None:
    """The link an event carries, if any (see the module docstring)."""
    user_id = event.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        return None
    if event.get("type") == "alias":
        props = event.get("properties")
        previous = props.get("previous_id") if isinstance(props, dict) else None
        if isinstance(previous, str) and previous and previous != user_id:
            return Link(previous, user_id, merge=True)
    anonymous_id = event.get("anonymous_id")
    if isinstance(anonymous_id, str) and anonymous_id:
        return Link(anonymous_id, user_id)
    return None


def _moves(
    links: Sequence[Link], person: dict[str, str], members: dict[str, set[str]]
) -> tuple[set[str], dict[str, str]]:
    """Apply one site's pending links in order to ``person`` (visitor -> person) and
    ``members`` (person -> visitors); return (persons that lost visitors, visitor -> new person)."""
    moved: dict[str, str] = {}
    lost: set[str] = set()

    def move(visitors: Iterable[str], target: str, old: str) -> None:
        for v in visitors:
            if person.get(v) != target:
                person[v] = target
                moved[v] = target
        members.setdefault(target, {target}).update(visitors)
        lost.add(old)

    for link in links:
        target = person[link.target]
        sources = [person[link.visitor]]
        if link.merge:
            sources.append(person[f"u:{link.visitor}"])
        for old in sources:
            if old == target:
                continue
            group = members.pop(old, {old})
            if link.merge or not old.startswith("u:"):
                move(group, target, old)
            else:
                # A device shared with another user: only this visitor changes hands.
                move([link.visitor], target, old)
                members[old] = group - {link.visitor}
    return lost, moved
