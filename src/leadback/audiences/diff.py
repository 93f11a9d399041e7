"""Membership transitions: who qualifies now vs what is stored -> new states and changes.

States: ``in`` (a member), ``out`` (was one, left), ``expired`` (left because the membership
TTL ran out; does not re-enter until the rule has stopped holding once), none (never was).
Every transition bumps the membership's ``version`` by one, so consumers of the change topic
can drop anything not above the last version they applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

Key = tuple[str, str]  # (audience_id, person)


@dataclass(frozen=True)
class Stored:
    """A stored membership."""

    state: str
    version: int
    entered_at: int
    products: tuple[str, ...] = ()


@dataclass(frozen=True)
class Transition:
    """A membership to write; ``change`` is ``enter``/``exit``/``update``, or ``""`` for a
    silent state change (expired -> out) that is written but not published."""

    audience_id: str
    person: str
    state: str
    change: str
    reason: str
    version: int
    products: tuple[str, ...]
    entered_at: int


_NONE = Stored("", 0, 0)


def transitions(
    qualifying: Mapping[Key, tuple[str, ...]],
    stored: Mapping[Key, Stored],
    *,
    ttl_ms: Mapping[str, int],
    now: int,
    exit_reason: str,
) -> list[Transition]:
    """Compare who qualifies (with their products) with the stored memberships; the
    transitions in (audience, person) order."""
    out: list[Transition] = []
    # Most keys change nothing (a member who still qualifies with the same products, a
    # stored exit who still does not): those are passed over first, and only what changes
    # is worked out and sorted (a 50M round holds tens of thousands of keys and about 7,000
    # transitions).
    for key, products in qualifying.items():
        old = stored.get(key)
        if old is None:
            old = _NONE
        elif old.state == "in" and old.products == products:
            ttl = ttl_ms.get(key[0], 0)
            if not ttl or old.entered_at + ttl > now:
                continue
        found = _transition(key, old, True, products, ttl_ms, now, exit_reason)
        if found is not None:
            out.append(found)
    for key, old in stored.items():
        if old.state == "out" or key in qualifying:
            continue
        found = _transition(key, old, False, (), ttl_ms, now, exit_reason)
        if found is not None:
            out.append(found)
    out.sort(key=_order)
    return out


def _transition(
    key: Key,
    old: Stored,
    member: bool,
    products: tuple[str, ...],
    ttl_ms: Mapping[str, int],
    now: int,
    exit_reason: str,
) -> Transition | None:
    """The transition of one key (``None``: nothing to write)."""
    audience_id, person = key
    ttl = ttl_ms.get(audience_id, 0)
    expired = old.state == "in" and ttl > 0 and old.entered_at + ttl <= now
    if old.state == "in":
        state = "expired" if expired else ("in" if member else "out")
    elif old.state == "expired":
        state = "expired" if member else "out"
    else:
        state = "in" if member else old.state
    if old.state == "in" and state != "in":
        change, reason = "exit", "ttl_expired" if expired else exit_reason
    elif old.state != "in" and state == "in":
        change, reason = "enter", "qualifies"
    elif state == "in" and products != old.products:
        change, reason = "update", "products_changed"
    else:
        change, reason = "", ""
    if state == old.state and not change:
        return None
    entered = now if change == "enter" else old.entered_at
    kept = products if state == "in" else old.products
    return Transition(audience_id, person, state, change, reason, old.version + 1, kept, entered)


def _order(transition: Transition) -> Key:
    return (transition.audience_id, transition.person)
