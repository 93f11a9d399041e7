"""A set of audience definitions checked together: references resolved within the set and
against stored definitions, the first problem named by its field, an order to write in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leadback.audiences.rules import AudienceSpec, parse_audience
from leadback.audiences.validation import (
    AudienceSet,
    parse_audience_set,
    validate_audience_set,
)
from leadback.errors import InvalidInputError

SITES = ("shop", "demo")
VIEWS = {"did": {"event": "page_view"}}
PER_PRODUCT = {"property": "product_id"}


def spec(audience_id: str, rule: Any = None, *, site: str = "shop", **extra: Any) -> AudienceSpec:
    return parse_audience({"id": audience_id, "site": site, "rule": rule or VIEWS, **extra})


def refers(audience_id: str, *targets: str, site: str = "shop") -> AudienceSpec:
    rule = {"all": [{"in_audience": t} for t in targets]} if targets else VIEWS
    return spec(audience_id, rule, site=site)


def ids(specs: list[AudienceSpec]) -> list[str]:
    return [s.id for s in specs]


def problem(
    audiences: AudienceSet, stored: Sequence[AudienceSpec] = (), sites: Sequence[str] | None = SITES
) -> tuple[str, str | None, str]:
    with pytest.raises(InvalidInputError) as caught:
        validate_audience_set(audiences, stored, sites=sites)
    return caught.value.reason, caught.value.field, caught.value.detail


def test_an_audience_listed_before_the_one_it_refers_to_is_written_after_it() -> None:
    listed = [refers("top", "middle"), refers("middle", "base"), refers("base"), refers("lone")]
    ordered = validate_audience_set(AudienceSet(listed), [], sites=SITES)
    assert ids(ordered) == ["base", "lone", "middle", "top"]


def test_references_resolve_against_stored_audiences_and_the_set_replaces_them() -> None:
    stored = [refers("base"), refers("old", "base")]
    assert ids(validate_audience_set(AudienceSet([refers("new", "old")]), stored, sites=SITES)) == [
        "new"
    ]
    # The set's `old` no longer refers to `base`, so `base` may become product-level.
    changed = AudienceSet([spec("base", products=PER_PRODUCT), refers("old")])
    assert ids(validate_audience_set(changed, stored, sites=SITES)) == ["base", "old"]


@pytest.mark.parametrize(
    ("listed", "field", "words"),
    [
        ([refers("a"), refers("b", "missing")], "audiences[1].rule", "no audience 'missing'"),
        ([refers("a", "b"), refers("b", "a")], "audiences[0].rule", "cycle: a -> b -> a"),
        ([refers("a", "a")], "audiences[0].rule", "cycle: a -> a"),
        (
            [refers("a", "p"), spec("p", products=PER_PRODUCT)],
            "audiences[0].rule",
            "'p' is product-level",
        ),
        ([refers("a", "x", site="demo")], "audiences[0].rule", "no audience 'x'"),  # other site
    ],
    ids=["unknown", "cycle", "self", "product_level_target", "other_site"],
)
def test_reference_problems_name_the_definition(
    listed: list[AudienceSpec], field: str, words: str
) -> None:
    reason, at, detail = problem(AudienceSet(listed), stored=[refers("x")])
    assert (reason, at) == ("invalid_audience", field)
    assert words in detail


def test_a_cycle_through_a_stored_audience_is_refused() -> None:
    stored = [refers("a"), refers("b", "a")]
    reason, field, detail = problem(AudienceSet([refers("a", "b")]), stored)
    assert (reason, field) == ("invalid_audience", "audiences[0].rule")
    assert "cycle" in detail


def test_an_audience_others_refer_to_cannot_become_product_level() -> None:
    stored = [refers("base"), refers("user", "base")]
    one = AudienceSet([spec("base", products=PER_PRODUCT)], single=True)
    reason, field, detail = problem(one, stored)
    assert (reason, field) == ("invalid_audience", "products")
    assert "user refer(s) to 'base'" in detail


def test_sites_are_checked_only_when_given() -> None:
    elsewhere = AudienceSet([refers("a"), refers("b", site="nowhere")])
    assert problem(elsewhere)[:2] == ("unknown_site", "audiences[1].site")
    assert ids(validate_audience_set(elsewhere, [], sites=None)) == ["a", "b"]


@pytest.mark.parametrize(
    ("document", "single", "count"),
    [
        ({"id": "a", "site": "shop", "rule": VIEWS}, True, 1),
        ([{"id": "a", "site": "shop", "rule": VIEWS}], False, 1),
        (
            {
                "audiences": [
                    {"id": "a", "site": "shop", "rule": VIEWS},
                    {"id": "b", "site": "shop", "rule": VIEWS},
                ]
            },
            False,
            2,
        ),
    ],
)
def test_documents_hold_one_audience_or_a_list(document: Any, single: bool, count: int) -> None:
    parsed = parse_audience_set(document)
    assert (parsed.single, len(parsed.specs)) == (single, count)


def test_field_names_follow_the_document_shape() -> None:
    bad = {"id": "a", "site": "shop", "rule": {"idle": "soon"}}
    with pytest.raises(InvalidInputError) as one:
        parse_audience_set(bad)
    with pytest.raises(InvalidInputError) as listed:
        parse_audience_set({"audiences": [{"id": "ok", "site": "shop", "rule": VIEWS}, bad]})
    assert (one.value.field, listed.value.field) == ("rule.idle", "audiences[1].rule.idle")
    unknown = {"id": "a", "site": "shop", "rule": {"in_audience": "missing"}}
    assert problem(parse_audience_set(unknown))[1] == "rule"
    assert problem(parse_audience_set([unknown]))[1] == "audiences[0].rule"


@given(st.data())
def test_any_listing_of_an_acyclic_set_is_written_referred_to_first(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 8))
    names = [f"a{i}" for i in range(n)]
    # a_i may refer only to a_j with j < i: no cycle, whatever order the file lists them in.
    targets = [data.draw(st.sets(st.sampled_from(names[:i]))) if i else set() for i in range(n)]
    listed = data.draw(st.permutations([refers(names[i], *sorted(targets[i])) for i in range(n)]))
    ordered = validate_audience_set(AudienceSet(listed), [], sites=SITES)
    assert sorted(ids(ordered)) == sorted(names)
    position = {s.id: k for k, s in enumerate(ordered)}
    for name, referred in zip(names, targets, strict=True):
        assert all(position[t] < position[name] for t in referred)
