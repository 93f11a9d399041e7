"""Which events link identities (the graph itself is tested against ClickHouse)."""

from __future__ import annotations

from leadback.identity.graph import Link, links_from_event


def test_an_event_with_both_ids_links_the_anonymous_id_to_the_user() -> None:
    link = links_from_event({"type": "page_view", "anonymous_id": "a1", "user_id": "42"})
    assert link == Link("a1", "42")
    assert link.target == "u:42"


def test_alias_merges_the_previous_id() -> None:
    event = {"type": "alias", "user_id": "new", "properties": {"previous_id": "old"}}
    assert links_from_event(event) == Link("old", "new", merge=True)


def test_events_without_a_user_or_anonymous_id_link_nothing() -> None:
    assert links_from_event({"type": "identify", "anonymous_id": "a1", "user_id": None}) is None
    assert links_from_event({"type": "purchase", "anonymous_id": None, "user_id": "42"}) is None
    assert links_from_event({"type": "alias", "user_id": "x", "properties": {}}) is None
    same = {"type": "alias", "user_id": "x", "properties": {"previous_id": "x"}}
    assert links_from_event(same) is None
