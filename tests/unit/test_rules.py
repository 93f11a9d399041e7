"""The rule language: validation messages that point at the field, durations, SQL literals."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from leadback.audiences.compiler import compile_rule
from leadback.audiences.durations import format_duration, parse_duration
from leadback.audiences.predicates import literal
from leadback.audiences.query import VersionedAudience, build_evaluation
from leadback.audiences.rules import AudienceSpec, parse_audience, parse_audiences
from leadback.errors import InvalidInputError


def audience(rule: Any, **extra: Any) -> dict[str, Any]:
    return {"id": "a1", "site": "shop", "rule": rule, **extra}


@pytest.mark.parametrize(
    ("doc", "field", "words"),
    [
        (audience({"did": {"event": "nope"}}), "rule.did.event[0]", "Input should be"),
        (audience({"all": [{"idle": "5x"}]}), "rule.all[0].idle", "not a duration"),
        (audience({"foo": 1}), "rule", "exactly one of the keys"),
        (audience({"did": {"event": "lead"}, "idle": "1h"}), "rule", "exactly one of"),
        (
            audience({"did": {"event": "purchase", "where": [{"property": "v", "op": "gt"}]}}),
            "rule.did.where[0]",
            "needs one value",
        ),
        (
            audience(
                {
                    "did": {
                        "event": "purchase",
                        "where": [{"property": "v", "value": 1}],
                        "count": {"min": 3, "max": 2},
                    }
                }
            ),
            "rule.did.count",
            "below count.min",
        ),
        (
            audience(
                {
                    "did": {
                        "event": "purchase",
                        "where": [{"property": "v", "op": "gt", "value": float("inf")}],
                    }
                }
            ),
            "rule.did.where[0]",
            "finite number",
        ),
        (
            audience(
                {"did": {"event": "purchase", "where": [{"property": "v", "value": float("nan")}]}}
            ),
            "rule.did.where[0]",
            "finite number",
        ),
        (audience({"not": {"any": []}}), "rule.not.any", "at least 1"),
        ({"id": "Bad Id", "site": "shop", "rule": {"idle": "1h"}}, "id", "pattern"),
        (audience({"idle": "1h"}, ttl="0s"), "ttl", "between 1s"),
        (
            audience({"then_not": {"did": {"event": "add_to_cart"}, "then": {"event": "x"}}}),
            "rule.then_not.then.event[0]",
            "Input should be",
        ),
    ],
)
def test_validation_errors_name_the_field(doc: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        parse_audience(doc)
    assert err.value.reason == "invalid_audience"
    assert err.value.field == field, str(err.value)
    assert words in str(err.value)


def test_a_list_reports_which_audience_is_wrong() -> None:
    docs = {"audiences": [audience({"idle": "1h"}), {**audience({"idle": "1y"}), "id": "b"}]}
    with pytest.raises(InvalidInputError) as err:
        parse_audiences(docs)
    assert err.value.field == "audiences[1].rule.idle"


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="twice"):
        parse_audiences([audience({"idle": "1h"}), audience({"idle": "2h"})])


def test_document_round_trip_keeps_the_spec() -> None:
    spec = parse_audience(
        yaml.safe_load(
            """
id: cart
site: shop
ttl: 7d
products: {property: sku}
rule:
  all:
    - then_not: {did: {event: add_to_cart, within: 7d}, then: {event: purchase}, within: 1h}
    - sequence: {steps: [{event: product_view}, {event: [add_to_cart, checkout]}], within: 30m}
    - any: [{idle: 1h}, {seen_within: 2d}]
    - not: {did: {event: page_view, count: 3, where: [{field: url, op: starts_with, value: x}]}}
"""
        )
    )
    assert parse_audience(spec.to_document()) == spec
    assert spec.to_document()["rule"]["all"][0]["then_not"]["within"] == "1h"


@given(st.integers(1, 999_999), st.sampled_from("smhdw"))
def test_durations_round_trip(n: int, unit: str) -> None:
    text = f"{n}{unit}"
    try:
        ms = parse_duration(text)
    except ValueError:
        return  # over three years
    assert parse_duration(format_duration(ms)) == ms


@given(st.text(max_size=50))
def test_string_literals_cannot_break_out(value: str) -> None:
    sql = literal(value)
    assert sql.startswith("'") and sql.endswith("'")
    inner = sql[1:-1]
    # every quote inside is escaped, and no escape is left dangling at the end
    i = 0
    while i < len(inner):
        if inner[i] == "\\":
            i += 2
            continue
        assert inner[i] != "'"
        i += 1
    assert i == len(inner)


def test_in_audience_cycles_and_unknown_references_are_refused() -> None:
    a = parse_audience(audience({"in_audience": "b"}))
    b = parse_audience({**audience({"in_audience": "a1"}), "id": "b"})
    with pytest.raises(InvalidInputError, match="cycle"):
        compile_rule(a, {"b": b})
    with pytest.raises(InvalidInputError, match="no audience 'b'"):
        compile_rule(a, {})


def test_statement_has_one_group_for_person_level_audiences() -> None:
    specs = [
        parse_audience(audience({"idle": "1h"})),
        parse_audience({**audience({"did": {"event": "lead"}}), "id": "b"}),
        parse_audience({**audience({"did": {"event": "product_view"}}), "id": "c", "products": {}}),
    ]
    by_id: dict[str, AudienceSpec] = {s.id: s for s in specs}
    q = build_evaluation("db", [VersionedAudience(s, 1) for s in specs], by_id, incremental=True)
    assert q.members.count("FROM st GROUP BY person\n") == 1
    assert q.members.count("GROUP BY person, product\n") == 1
    assert "FROM db.person_state" in q.members
    assert "FROM db.events" not in q.members
    assert "{vids:Array(String)}" in q.members
    assert q.thresholds == frozenset({3_600_000})
    # idle reads the latest time; did the times of leads; the product audience its own.
    kinds = {(s.predicate, s.product_key, s.times) for s in q.signals}
    assert kinds == {
        ("1", None, False),
        ("(type = 'lead')", None, True),
        ("(type = 'product_view')", "product_id", True),
        ("1", "product_id", False),
    }
    raw = build_evaluation(
        "db", [VersionedAudience(s, 1) for s in specs], by_id, incremental=True, source="events"
    )
    assert "FROM db.events" in raw.members and "person_state" not in raw.members


def test_the_shipped_examples_are_valid() -> None:
    from pathlib import Path

    root = Path(__file__).parents[2]
    specs = parse_audiences(yaml.safe_load((root / "examples/audiences.yaml").read_text()))
    assert len(specs) == 6
    by_id = {s.id: s for s in specs}
    for spec in specs:
        compile_rule(spec, by_id)


def test_trigger_types_say_which_events_can_change_an_audience() -> None:
    from leadback.audiences.compiler import trigger_types

    cart = parse_audience(
        audience({"then_not": {"did": {"event": "add_to_cart"}, "then": {"event": "purchase"}}})
    )
    assert trigger_types(cart, {}) == {"add_to_cart", "purchase"}
    idle = parse_audience({**audience({"all": [{"did": {"event": "lead"}}, {"idle": "1h"}]})})
    assert trigger_types(idle, {}) is None
    uses = parse_audience(
        {**audience({"all": [{"in_audience": "a1"}, {"did": {"event": "signup"}}]}), "id": "b"}
    )
    assert trigger_types(uses, {"a1": cart}) == {"add_to_cart", "purchase", "signup"}
