"""A round's identity events applied: links to the identity graph, traits to the contact book.

Only the few events that carry identity (``user_id``, ``identify`` traits) reach here, found in
bulk by :mod:`leadback.audiences.digest`'s byte scans; everything per event stays in ClickHouse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from leadback.identity.contact_book import ContactBook, ContactUpdate
from leadback.identity.graph import IdentityGraph, Link, links_from_event


@dataclass(frozen=True)
class IdentityChanges:
    """What a round's identity events changed: persons that lost visitors, visitors that moved
    to another person, and how many links the events carried."""

    lost: set[str]
    moved: set[str]
    links: int


class IdentityUpdater:
    """Applies the identity events of one site's round."""

    def __init__(self, graph: IdentityGraph, contacts: ContactBook) -> None:
        self._graph = graph
        self._contacts = contacts

    async def apply(
        self, site: str, events: Sequence[dict[str, Any]], *, token: str
    ) -> IdentityChanges:
        """Save the events' traits and apply their links, in event order."""
        links: list[Link] = []
        updates: dict[str, ContactUpdate] = {}
        for e in events:
            link = links_from_event(e)
            if link is not None:
                links.append(link)
            traits = e.get("traits")
            if isinstance(traits, dict) and traits:
                visitor = str(e["visitor_id"])
                # When the visitor gave them: the event time (records written before it
                # existed have only received_at). Canonical timestamps compare as strings.
                at = str(e.get("occurred_at") or e["received_at"])
                update = updates.get(visitor)
                if update is None:
                    update = updates[visitor] = ContactUpdate(e.get("user_id") or "", at)
                update.traits.update(traits)
                update.at = max(update.at, at)
        await self._contacts.save(site, updates, token=token)
        if not links:
            return IdentityChanges(set(), set(), 0)
        lost, moved = await self._graph.apply(site, links, token=token)
        return IdentityChanges(lost, moved, len(links))
