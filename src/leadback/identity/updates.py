"""A round's identity events applied: links to the identity graph, traits to the contact book.

Only the few events that carry identity (``user_id``, ``identify`` traits) reach here, found in
bulk by :mod:`leadback.audiences.digest`'s byte scans; everything per event stays in ClickHouse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    """Applies the identity events of a round, for every site in it at once."""

    def __init__(self, graph: IdentityGraph, contacts: ContactBook) -> None:
        self._graph = graph
        self._contacts = contacts

    async def apply(
        self, site: str, events: Sequence[dict[str, Any]], *, token: str
    ) -> IdentityChanges:
        """Save the events' traits and apply their links, in event order."""
        return (await self.apply_sites({site: events}, token=token))[site]

    async def apply_sites(
        self, events: Mapping[str, Sequence[dict[str, Any]]], *, token: str
    ) -> dict[str, IdentityChanges]:
        """:meth:`apply` for several sites (site -> its events): a statement or two per step
        whatever the number of sites."""
        links: dict[str, list[Link]] = {}
        updates: dict[str, dict[str, ContactUpdate]] = {}
        for site, site_events in events.items():
            site_links = links[site] = []
            site_updates = updates[site] = {}
            for e in site_events:
                link = links_from_event(e)
                if link is not None:
                    site_links.append(link)
                traits = e.get("traits")
                if isinstance(traits, dict) and traits:
                    visitor = str(e["visitor_id"])
                    # When the visitor gave them: the event time (records written before it
                    # existed have only received_at). Canonical timestamps compare as strings.
                    at = str(e.get("occurred_at") or e["received_at"])
                    update = site_updates.get(visitor)
                    if update is None:
                        update = site_updates[visitor] = ContactUpdate(e.get("user_id") or "", at)
                    update.traits.update(traits)
                    update.at = max(update.at, at)
        await self._contacts.save_sites(updates, token=token)
        applied = await self._graph.apply_sites(
            {site: site_links for site, site_links in links.items() if site_links}, token=token
        )
        return {
            site: IdentityChanges(*applied.get(site, (set(), set())), len(links[site]))
            for site in events
        }
