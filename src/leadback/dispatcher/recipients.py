"""What the dispatcher knows about the people whose steps came due, loaded in bulk per site:
their visitor ids, traits, contact details, consent, suppressions, channel addresses and
current audience memberships. One query per kind for a whole timer pass, none per person."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import orjson

from leadback.destinations.base import PushSubscription
from leadback.destinations.push_subscription import subscription_from_json
from leadback.errors import ContactDecryptError, InvalidInputError
from leadback.identity.contacts import ContactCipher
from leadback.identity.graph import IdentityGraph
from leadback.logs import get_logger
from leadback.store.client import ClickHouseStore

log = get_logger(__name__)

MARKETING = "marketing"


@dataclass
class Person:
    """One person as the dispatcher sees them at send time."""

    person_id: str
    visitors: set[str] = field(default_factory=set)
    traits: dict[str, Any] = field(default_factory=dict)  # merged, contact tokens included
    consent: bool = False  # marketing allowed by their latest consent (no GPC)
    suppressed: dict[str, str] = field(default_factory=dict)  # channel or "all" -> reason
    push: list[tuple[str, str, PushSubscription]] = field(default_factory=list)
    # (endpoint sha256, visitor, subscription), oldest first
    telegram: dict[str, tuple[str, int]] = field(default_factory=dict)  # dest -> (visitor, chat)
    memberships: dict[str, tuple[str, int, list[str]]] = field(default_factory=dict)
    # audience -> (state, entered_at, products)

    def suppression(self, channel: str) -> str | None:
        """Why this person gets nothing on ``channel``, or None."""
        return self.suppressed.get("all") or self.suppressed.get(channel)


def allows_marketing(consent: Any) -> bool:
    """An event's consent (status, purposes, gpc) allows messages:
    granted for ``all`` or ``marketing``, and no Global Privacy Control signal."""
    status, purposes, gpc = consent[0], list(consent[1]), bool(consent[2])
    return status == "granted" and not gpc and bool({"all", MARKETING} & set(purposes))


class RecipientLoader:
    """Loads :class:`Person` records for a site in bulk."""

    def __init__(self, store: ClickHouseStore, cipher: ContactCipher) -> None:
        self._store = store
        self._db = store.database
        self._identity = IdentityGraph(store)
        self.cipher = cipher

    async def load(
        self,
        site: str,
        persons: Collection[str],
        audiences: Collection[str],
        kinds: Collection[str] = ("webpush", "telegram"),
    ) -> dict[str, Person]:
        """Every person of ``persons`` (unknown ones come back empty: no consent, no address);
        push subscriptions and Telegram chats are read only for the channel ``kinds`` asked."""
        members = await self._identity.visitors_of(site, persons)
        people = {p: Person(p, visitors=set(members.get(p, {p}))) for p in persons}
        owner = {v: p.person_id for p in people.values() for v in p.visitors}
        visitors = sorted(owner)
        params = {"s": site, "v": visitors}
        db = self._db
        # Traits: the person's own row last, so what was said as the person wins.
        rows = await self._store.query(
            f"SELECT visitor_id, argMax(traits, updated_at), max(updated_at) FROM {db}.contacts "
            "WHERE site_id = {s:String} AND visitor_id IN {v:Array(String)} GROUP BY visitor_id "
            "ORDER BY 3",
            params,
        )
        for visitor, traits, _ in rows:
            people[owner[str(visitor)]].traits.update(orjson.loads(traits))
        latest: dict[str, Any] = {}
        # The consent said last in real time wins: by event time, then arrival. By arrival
        # alone, an import of old events (stamped with the site's default consent) would
        # overrule an opt-out given since.
        rows = await self._store.query(
            "SELECT visitor_id, max((occurred_at, received_at)), "
            "argMax((consent.status, consent.purposes, consent.gpc), (occurred_at, received_at)) "
            f"FROM {db}.events "
            "WHERE site_id = {s:String} AND visitor_id IN {v:Array(String)} "
            "AND source != 'signal' GROUP BY visitor_id",
            params,
        )
        for visitor, at, consent in rows:
            person = owner[str(visitor)]
            if person not in latest or at > latest[person][0]:
                latest[person] = (at, consent)
        for person, (_, consent) in latest.items():
            people[person].consent = allows_marketing(consent)
        await self._suppressions(site, people)
        if "webpush" in kinds:
            await self._push(site, people, owner, params)
        if "telegram" in kinds:
            await self._telegram(site, people, owner, params)
        if audiences:
            rows = await self._store.query(
                f"SELECT audience_id, person_id, state, entered_at, products "
                f"FROM {db}.memberships FINAL WHERE site_id = {{s:String}} "
                "AND person_id IN {p:Array(String)} AND audience_id IN {a:Array(String)}",
                {"s": site, "p": sorted(people), "a": sorted(audiences)},
            )
            for audience, person, state, entered, products in rows:
                people[str(person)].memberships[str(audience)] = (
                    str(state),
                    int(entered),
                    list(products),
                )
        return people

    async def _suppressions(self, site: str, people: dict[str, Person]) -> None:
        subjects: dict[str, list[str]] = {}
        for p in people.values():
            subjects.setdefault(f"person:{p.person_id}", []).append(p.person_id)
            for v in p.visitors:
                subjects.setdefault(f"person:{v}", []).append(p.person_id)
            for kind in ("email", "phone"):
                digest = p.traits.get(f"{kind}_sha256")
                if isinstance(digest, str):
                    subjects.setdefault(f"{kind}:{digest}", []).append(p.person_id)
        if not subjects:
            return
        rows = await self._store.query(
            f"SELECT subject, channel, argMax(reason, at), argMax(active, at) "
            f"FROM {self._db}.suppressions WHERE site_id = {{s:String}} "
            "AND subject IN {x:Array(String)} GROUP BY subject, channel",
            {"s": site, "x": sorted(subjects)},
        )
        for subject, channel, reason, active in rows:
            if not active:
                continue
            for person in subjects[str(subject)]:
                people[person].suppressed.setdefault(str(channel) or "all", str(reason))

    async def _push(
        self, site: str, people: dict[str, Person], owner: dict[str, str], params: dict[str, Any]
    ) -> None:
        rows = await self._store.query(
            f"SELECT visitor_id, endpoint_sha256, argMax(subscription_enc, at), "
            f"argMax(active, at), max(at) FROM {self._db}.push_subscriptions "
            "WHERE site_id = {s:String} AND visitor_id IN {v:Array(String)} "
            "GROUP BY visitor_id, endpoint_sha256 ORDER BY 5",
            params,
        )
        for visitor, digest, token, active, _ in rows:
            if not active or not token:
                continue
            try:
                subscription = subscription_from_json(self.cipher.decrypt(str(token)))
            except (ContactDecryptError, InvalidInputError) as exc:
                log.warning("a push subscription does not decrypt", error=type(exc).__name__)
                continue
            people[owner[str(visitor)]].push.append((str(digest), str(visitor), subscription))

    async def _telegram(
        self, site: str, people: dict[str, Person], owner: dict[str, str], params: dict[str, Any]
    ) -> None:
        rows = await self._store.query(
            f"SELECT visitor_id, destination_id, argMax(chat_enc, at), argMax(active, at), "
            f"max(at) FROM {self._db}.telegram_chats WHERE site_id = {{s:String}} "
            "AND visitor_id IN {v:Array(String)} GROUP BY visitor_id, destination_id ORDER BY 5",
            params,
        )
        for visitor, destination, token, active, _ in rows:
            person = people[owner[str(visitor)]]
            if not active or not token:
                person.telegram.pop(str(destination), None)
                continue
            try:
                chat = int(self.cipher.decrypt(str(token)))
            except (ContactDecryptError, ValueError) as exc:
                log.warning("a Telegram chat id does not decrypt", error=type(exc).__name__)
                continue
            person.telegram[str(destination)] = (str(visitor), chat)

    def contact(self, person: Person, kind: str) -> str | None:
        """The person's clear e-mail or phone (decrypted now), or None."""
        return self.decrypted(person, kind)

    def decrypted(self, person: Person, field: str) -> str | None:
        """A contact field's clear value (``<field>_enc`` decrypted now), or None."""
        token = person.traits.get(f"{field}_enc")
        if not isinstance(token, str):
            return None
        try:
            return self.cipher.decrypt(token)
        except ContactDecryptError:
            log.warning("a contact detail does not decrypt", field=field)
            return None
