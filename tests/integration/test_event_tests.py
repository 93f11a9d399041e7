"""The Python event tests answer what the feed's SQL answers, on the rows ClickHouse stored.

Random canonical events (properties with strings that hold numbers or almost do, integers to
the edges of 64 bits, doubles of every size, booleans, nulls, nested objects and lists, item
lists; fields missing or set) and random rule steps (every filter operator on properties,
nested paths and fields): each event is stored through ``JSONEachRow`` like the segmenter
stores it, and ``predicates.match_sql`` / ``product_ids_sql`` / ``signals.ELIGIBLE`` are read
back from ClickHouse for every event, against ``event_tests`` on the decoded event.
"""

from __future__ import annotations

import itertools
from typing import Any, get_args

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pydantic import ValidationError

from leadback.audiences.event_tests import (
    SignalTests,
    clickhouse_float,
    compile_match,
    eligible,
    product_ids,
    raw_text,
)
from leadback.audiences.predicates import match_sql, product_ids_sql
from leadback.audiences.rules import EventMatch, FieldName, Filter
from leadback.audiences.signals import ELIGIBLE, Signal, any_event, entries_select
from leadback.store.client import ClickHouseStore
from tests.conftest import store_examples
from tests.integration.audience_kit import event

KEYS = ["a", "b", "price", "product_id"]
PATHS = [*KEYS, "a.b", "a.price", "items"]
NUMBERISH = ["12", "1e2", " 5", "5 ", "+5", "-.5", "5.", "0x10", "inf", "-Infinity", "nan"]
WORDS = ["", "shoes", "/contact", "https://x.example/c/shoes", "é", "a\u2028b", 'q"uote', "true"]
_ids = itertools.count()

texts = st.one_of(st.sampled_from(NUMBERISH + WORDS), st.text(max_size=5))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, 1.5, 100.0, 1e-7, 1e-6, 1e20, 1e21, -0.0, 2.5e-5]),
    texts,
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=6,
)
items = st.lists(
    st.one_of(st.dictionaries(st.sampled_from(KEYS), values, max_size=3), scalars), max_size=3
)
properties = st.dictionaries(st.sampled_from(KEYS), values, max_size=4).flatmap(
    lambda p: st.one_of(st.just(p), items.map(lambda i: {**p, "items": i}))
)
maybe_text = st.one_of(st.none(), texts)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    e: dict[str, Any] = dict(
        event(
            draw(st.sampled_from(["s", "t", "u"])),
            draw(st.sampled_from(["v1", "v2", "e:x"])),
            draw(st.sampled_from(["page_view", "product_view", "custom"])),
            1_800_000_000.0,
            properties=draw(properties),
            url=draw(maybe_text),
            bot=draw(st.booleans()),
        )
    )
    e["event_id"] = f"t{next(_ids)}"
    e["name"] = draw(st.one_of(st.none(), st.sampled_from(["video_play", "x"])))
    e["referrer"] = draw(maybe_text)
    e["utm"] = {**e["utm"], "source": draw(maybe_text), "campaign": draw(maybe_text)}
    e["click_ids"] = {**e["click_ids"], "gclid": draw(maybe_text)}
    e["context"] = {**e["context"], "language": draw(st.sampled_from(["en", ""]))}
    e["source"] = draw(st.sampled_from(["json", "signal", "pixel"]))
    return e


filter_values = st.one_of(st.booleans(), st.floats(allow_nan=False, width=32), texts)


@st.composite
def filters(draw: st.DrawFn) -> Filter:
    where: dict[str, Any] = (
        {"property": draw(st.sampled_from(PATHS))}
        if draw(st.booleans())
        else {"field": draw(st.sampled_from(get_args(FieldName)))}
    )
    op = draw(st.sampled_from(get_args(Filter.model_fields["op"].annotation)))
    if op in ("in", "not_in"):
        value: Any = draw(st.lists(filter_values, min_size=1, max_size=3))
    elif op == "exists":
        value = None
    elif op in ("gt", "gte", "lt", "lte"):
        value = draw(st.one_of(st.integers(-100, 300), st.floats(-1e3, 1e3, width=32)))
    elif op in ("contains", "starts_with"):
        value = draw(texts)
    else:
        value = draw(filter_values)
    return valid_filter({**where, "op": op, "value": value})


def valid_filter(doc: dict[str, Any]) -> Filter:
    """The filter ``doc`` describes; a drawn combination the rules refuse is discarded."""
    try:
        return Filter.model_validate(doc)
    except ValidationError:
        assume(False)
        raise


def rule_steps(
    filters: st.SearchStrategy[Filter], max_filters: int
) -> st.SearchStrategy[EventMatch]:
    """Rule steps of one or two of the events' types, a name or none, and ``filters``."""
    return st.builds(
        lambda types, name, where: EventMatch(event=types, name=name, where=where),
        st.lists(st.sampled_from(["page_view", "product_view", "custom"]), min_size=1, max_size=2),
        st.sampled_from([None, "video_play"]),
        st.lists(filters, max_size=max_filters),
    )


steps = rule_steps(filters(), 2)


@store_examples(120)
@given(batch=st.lists(events(), min_size=1, max_size=8), tests=st.lists(steps, min_size=1))
async def test_python_tests_answer_like_the_stored_rows(
    db: ClickHouseStore, batch: list[dict[str, Any]], tests: list[EventMatch]
) -> None:
    bodies = [orjson.dumps(e) for e in batch]
    await db.insert_json_rows("events", b"\n".join(bodies), dedup_token=batch[0]["event_id"])
    columns = [f"toUInt8({match_sql(m)})" for m in tests]
    keys = ["product_id", "a.b"]
    rows = await db.query(
        f"SELECT event_id, [{', '.join(columns)}], "
        f"[{', '.join(product_ids_sql(k) for k in keys)}], toUInt8({ELIGIBLE}) "
        f"FROM {db.database}.events WHERE event_id IN {{ids:Array(String)}}",
        {"ids": [e["event_id"] for e in batch]},
    )
    stored = {str(r[0]): r[1:] for r in rows}
    assert len(stored) == len(batch)
    compiled = [compile_match(m) for m in tests]
    for body in bodies:
        e = orjson.loads(body)  # what the segmenter reads off the topic
        matched, ids, ok = stored[e["event_id"]]
        assert [int(t(e)) for t in compiled] == list(matched), (e, tests)
        assert [product_ids(e, k) for k in keys] == [list(p) for p in ids], e
        assert eligible(e) == bool(ok), e


@st.composite
def signal_sets(draw: st.DrawFn) -> list[Signal]:
    found = []
    for site in ("s", "t"):
        for step in draw(st.lists(steps, max_size=3)):
            key = draw(st.sampled_from([None, "product_id", "a.b"]))
            found.append(Signal(site, match_sql(step), key, draw(st.booleans()), match=step))
        if draw(st.booleans()):
            found.append(any_event(site, draw(st.sampled_from([None, "product_id"]))))
    return found


@store_examples(60)
@given(batch=st.lists(events(), min_size=1, max_size=8), signals=signal_sets())
async def test_signal_tests_make_the_feeds_entries(
    db: ClickHouseStore, batch: list[dict[str, Any]], signals: list[Signal]
) -> None:
    assume(signals)
    bodies = [orjson.dumps(e) for e in batch]
    await db.insert_json_rows("events", b"\n".join(bodies), dedup_token=batch[0]["event_id"])
    source = f"{db.database}.events WHERE {ELIGIBLE} AND event_id IN {{ids:Array(String)}}"
    columns = {"event_id": "event_id", "site_id": "site_id"}
    rows = await db.query(
        f"SELECT event_id, entries FROM ({entries_select(signals, columns, source)})",
        {"ids": [e["event_id"] for e in batch]},
    )
    fed = {str(r[0]): sorted((int(s), str(p), bool(k)) for s, p, k in r[1]) for r in rows}
    tests = SignalTests(signals)
    for body in bodies:
        e = orjson.loads(body)
        assert sorted(tests.entries(e)) == fed.get(e["event_id"], []), e


def test_a_signal_without_its_step_cannot_be_tested_in_python() -> None:
    step = EventMatch(event=["page_view"])
    with pytest.raises(ValueError, match="no rule step"):
        SignalTests([Signal("s", match_sql(step), None, times=True)])


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.5, "1.5"),
        (100.0, "100"),
        (1e20, "100000000000000000000"),
        (1e21, "1e21"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (-0.0, "-0"),
        (2**64 - 1, "18446744073709551615"),
        ({"b": [1, 2.50, None, True]}, '{"b":[1,2.5,null,true]}'),
        ("a\u2028b", '"a\\u2028b"'),
    ],
)
def test_values_print_as_clickhouse_prints_them(value: Any, text: str) -> None:
    assert raw_text(value) == text


def test_strings_read_as_numbers_only_whole() -> None:
    assert [clickhouse_float(s) for s in ("12", "1e2", "+5", "-.5", "5.", "0012")] == [
        12.0,
        100.0,
        5.0,
        -0.5,
        5.0,
        12.0,
    ]
    assert [clickhouse_float(s) for s in (" 5", "5 ", "0x10", "1_000", "١٢", "", "e5")] == [0.0] * 7


def test_item_numbers_beyond_64_bits_come_back_as_strings() -> None:
    # ClickHouse hands each item on as text and reads it again: 1e20 prints as 21 digits,
    # too many for a 64-bit integer, and reads back as a string (seen with chDB 26.9).
    items = [{"product_id": 1e20}, {"product_id": {"a": -1e19}}, {"product_id": -0.0}]
    e = {"properties": {"product_id": -0.0, "items": items}}
    assert product_ids(e, "product_id") == [
        "-0",  # printed once
        "100000000000000000000",
        '{"a":"-10000000000000000000"}',
        "0",  # printed, read back as the integer 0, printed again
    ]
