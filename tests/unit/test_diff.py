"""Membership transitions: the state machine the change topic is built from."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from leadback.audiences.diff import Stored, transitions

NOW = 1_000_000
A = "a"


def one(member: bool, stored: Stored | None, *, ttl: int = 0, products: tuple[str, ...] = ()):
    q = {(A, "p"): products} if member else {}
    s = {(A, "p"): stored} if stored else {}
    return transitions(q, s, ttl_ms={A: ttl}, now=NOW, exit_reason="no_longer_qualifies")


def test_enter_then_exit_bumps_versions() -> None:
    [t] = one(True, None)
    assert (t.state, t.change, t.version, t.entered_at) == ("in", "enter", 1, NOW)
    [t] = one(False, Stored("in", 1, 5))
    assert (t.state, t.change, t.reason, t.version) == ("out", "exit", "no_longer_qualifies", 2)
    [t] = one(True, Stored("out", 2, 5))
    assert (t.change, t.version) == ("enter", 3)


def test_nothing_changes_nothing_written() -> None:
    assert one(True, Stored("in", 1, 5)) == []
    assert one(False, None) == []
    assert one(False, Stored("out", 2, 5)) == []


def test_ttl_expires_and_blocks_re_entry_until_the_rule_stops_holding() -> None:
    [t] = one(True, Stored("in", 1, NOW - 100), ttl=100)
    assert (t.state, t.change, t.reason) == ("expired", "exit", "ttl_expired")
    assert one(True, Stored("expired", 2, NOW - 100), ttl=100) == []
    [t] = one(False, Stored("expired", 2, NOW - 100), ttl=100)
    assert (t.state, t.change, t.version) == ("out", "", 3)  # written, not published


def test_product_list_change_is_an_update() -> None:
    [t] = one(True, Stored("in", 1, 5, ("p1",)), products=("p1", "p2"))
    assert (t.change, t.products, t.entered_at) == ("update", ("p1", "p2"), 5)


states = st.sampled_from(["", "in", "out", "expired"])


@given(st.lists(st.tuples(st.booleans(), states, st.integers(0, 2 * NOW)), max_size=30))
def test_every_transition_is_one_version_up_and_changes_alternate(cases: list) -> None:
    qualifying = {}
    stored = {}
    for i, (member, state, entered) in enumerate(cases):
        key = (A, f"p{i}")
        if member:
            qualifying[key] = ()
        if state:
            stored[key] = Stored(state, 7, entered)
    for t in transitions(qualifying, stored, ttl_ms={A: NOW}, now=NOW, exit_reason="x"):
        old = stored.get((t.audience_id, t.person), Stored("", 0, 0))
        assert t.version == old.version + 1
        assert t.state != old.state or t.change
        if t.change == "enter":
            assert old.state != "in" and t.state == "in"
        if t.change == "exit":
            assert old.state == "in" and t.state in ("out", "expired")


def test_change_records_match_the_asyncapi_schema() -> None:
    from pathlib import Path

    import yaml

    from leadback.audiences.changes import change_record

    spec = yaml.safe_load((Path(__file__).parents[2] / "docs/asyncapi.yaml").read_text())
    schema = spec["components"]["schemas"]["AudienceChange"]
    record = change_record(
        {
            "site_id": "shop",
            "audience_id": "cart",
            "person_id": "u:42",
            "change": "exit",
            "reason": "ttl_expired",
            "version": 3,
            "audience_version": 2,
            "products": ("p1",),
            "at": NOW,
            "entered_at": NOW - 5,
        }
    )
    assert set(record) == set(schema["properties"]) == set(schema["required"])
    assert record["change"] in schema["properties"]["change"]["enum"]
    assert record["reason"] in schema["properties"]["reason"]["enum"]
    assert record["change_id"] == "cart:u:42:3"


def test_change_timestamps_are_the_canonical_form() -> None:
    from leadback.audiences.changes import ms_timestamp
    from leadback.events import format_ts

    days = [86_399_999, 86_400_000, 3_599_999, 1_795_478_399_999, 1_795_478_400_000]
    for ms in (0, 1, 59_999, 60_000, 1_795_436_559_943, 1_700_000_000_007, *days):
        assert ms_timestamp(ms) == format_ts(ms / 1000), ms


keys = st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["p1", "p2", "p3", "p4"]))
stored_memberships = st.builds(
    Stored,
    st.sampled_from(["in", "out", "expired"]),
    st.integers(1, 5),
    st.integers(0, NOW),
    st.sampled_from([(), ("x",)]),
)


@given(
    qualifying=st.dictionaries(keys, st.sampled_from([(), ("x",), ("y",)])),
    stored=st.dictionaries(keys, stored_memberships),
)
def test_transitions_come_in_audience_then_person_order(
    qualifying: dict[tuple[str, str], tuple[str, ...]], stored: dict[tuple[str, str], Stored]
) -> None:
    found = transitions(
        qualifying, stored, ttl_ms={"a": 0, "b": 10, "c": 0}, now=NOW, exit_reason="gone"
    )
    order = [(t.audience_id, t.person) for t in found]
    assert order == sorted(order)
    # One transition per key that moved, each decided by that key alone.
    for t in found:
        key = (t.audience_id, t.person)
        [alone] = transitions(
            {key: qualifying[key]} if key in qualifying else {},
            {key: stored[key]} if key in stored else {},
            ttl_ms={"a": 0, "b": 10, "c": 0},
            now=NOW,
            exit_reason="gone",
        )
        assert alone == t


def _plain(
    qualifying: dict[tuple[str, str], tuple[str, ...]],
    stored: dict[tuple[str, str], Stored],
    ttl_ms: dict[str, int],
) -> list[tuple[str, str, str, str, str, int, tuple[str, ...], int]]:
    """The state machine written out key by key, over every key (what ``transitions`` skips
    must be exactly what changes nothing here)."""
    out = []
    for key in sorted(qualifying.keys() | stored.keys()):
        old = stored.get(key, Stored("", 0, 0))
        member, products = key in qualifying, qualifying.get(key, ())
        ttl = ttl_ms.get(key[0], 0)
        expired = old.state == "in" and ttl > 0 and old.entered_at + ttl <= NOW
        if old.state == "in":
            state = "expired" if expired else ("in" if member else "out")
        elif old.state == "expired":
            state = "expired" if member else "out"
        else:
            state = "in" if member else old.state
        change = ""
        if old.state == "in" and state != "in":
            change = "exit"
        elif old.state != "in" and state == "in":
            change = "enter"
        elif state == "in" and products != old.products:
            change = "update"
        if state == old.state and not change:
            continue
        entered = NOW if change == "enter" else old.entered_at
        kept = products if state == "in" else old.products
        out.append((*key, state, change, old.version + 1, kept, entered))
    return out


@given(
    qualifying=st.dictionaries(keys, st.sampled_from([(), ("x",), ("y",), ("x", "y")])),
    stored=st.dictionaries(keys, stored_memberships),
)
def test_transitions_skip_exactly_the_keys_that_change_nothing(
    qualifying: dict[tuple[str, str], tuple[str, ...]], stored: dict[tuple[str, str], Stored]
) -> None:
    ttl = {"a": 0, "b": 10, "c": NOW // 2}
    found = transitions(qualifying, stored, ttl_ms=ttl, now=NOW, exit_reason="gone")
    assert [
        (t.audience_id, t.person, t.state, t.change, t.version, t.products, t.entered_at)
        for t in found
    ] == _plain(qualifying, stored, ttl)
