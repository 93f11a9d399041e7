"""The invalid-topic record: one shape for every source, no trait value or whole IP in it."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote, quote_plus

import orjson
from hypothesis import given
from hypothesis import strategies as st

from leadback.errors import InvalidInputError
from leadback.invalid import (
    REDACTED,
    InvalidRecord,
    InvalidRequest,
    invalid_record,
    kafka_record,
    redacted_body,
    redacted_query,
    rejected_event_record,
)
from leadback.protocols.query_string import parse_query

NOW = 1732345201.5  # 2024-11-23T07:00:01.500Z
UA = "Mozilla/5.0 (X11; Linux x86_64)"
NO_REQUEST: InvalidRequest = {
    "method": None,
    "path": None,
    "query": None,
    "body": None,
    "body_bytes": None,
    "user_agent": None,
    "ip": None,
}


def test_a_refused_pixel_query() -> None:
    query = b"site=nope&x=\xff" + b"y" * 9000
    record = invalid_record(
        "unknown_site",
        "'nope'",
        source="pixel",
        now=NOW,
        site_id="nope",
        field="site",
        method="GET",
        path="/p.gif",
        query=query,
        user_agent=UA,
        ip="203.0.113.77",
    )
    assert record == {
        "schema_version": 1,
        "reason": "unknown_site",
        "detail": "'nope'",
        "field": "site",
        "source": "pixel",
        "received_at": "2024-11-23T07:00:01.500Z",
        "site_id": "nope",
        "request": {
            "method": "GET",
            "path": "/p.gif",
            # bytes that are not UTF-8 are kept, one character each; cut to 8 KB
            "query": ("site=nope&x=\xff" + "y" * 9000)[:8192],
            "body": None,
            "body_bytes": None,
            "user_agent": UA,
            "ip": "203.0.113.0",
        },
    }
    assert list(record) == list(InvalidRecord.__annotations__)
    assert list(record["request"]) == list(InvalidRequest.__annotations__)
    assert kafka_record(record)[0] == b"nope"
    assert b"203.0.113.77" not in kafka_record(record)[1]


def test_a_refused_json_body() -> None:
    body = orjson.dumps({"batch": [{"type": "identify", "traits": {"email": "ann@x.example"}}]})
    record = invalid_record(
        "invalid_event",
        "type: Input should be ...",
        source="json",
        now=NOW,
        site_id="demo",
        field="type",
        method="POST",
        path="/v1/events",
        body=body,
        user_agent=UA,
        ip="2001:db8:abcd:12::1",
    )
    assert record["request"] == {
        "method": "POST",
        "path": "/v1/events",
        "query": None,
        "body": '{"batch":[{"type":"identify","traits":{"email":"[redacted]"}}]}',
        "body_bytes": len(body),
        "user_agent": UA,
        "ip": "2001:db8:abcd::",
    }


def test_a_record_with_nothing_known_about_the_request() -> None:
    record = invalid_record("missing_site", "", source="pixel", now=NOW)
    assert record["request"] == NO_REQUEST
    assert record["site_id"] is None
    assert record["field"] is None
    assert kafka_record(record)[0] is None


def test_long_details_and_user_agents_are_cut() -> None:
    record = invalid_record(
        "internal_error", "x" * 5000, source="pixel", now=NOW, user_agent="u" * 5000
    )
    assert record["detail"] == "x" * 1000
    assert record["request"]["user_agent"] == "u" * 1024


def test_the_key_is_the_site_else_the_truncated_ip() -> None:
    with_site = invalid_record(
        "unauthorized", "", source="json", now=NOW, site_id="shop", ip="10.1.2.3"
    )
    without_site = invalid_record("unauthorized", "", source="json", now=NOW, ip="10.1.2.3")
    assert kafka_record(with_site)[0] == b"shop"
    assert kafka_record(without_site)[0] == b"10.1.2.0"
    assert orjson.loads(kafka_record(without_site)[1]) == without_site


# --- a value on the events topic that the segmenter could not store ----------------------


def test_a_rejected_event_value() -> None:
    value = orjson.dumps({"site_id": "demo", "event_id": "e1", "traits": {"email_sha256": "ab"}})
    record = rejected_event_record("missing_visitor_id", value, "no visitor_id", 1_800_000_000.25)
    assert record == {
        "schema_version": 1,
        "reason": "missing_visitor_id",
        "detail": "no visitor_id",
        "field": None,
        "source": "segmenter",
        "received_at": "2027-01-15T08:00:00.250Z",
        "site_id": "demo",
        "request": {
            **NO_REQUEST,
            "body": '{"site_id":"demo","event_id":"e1","traits":{"email_sha256":"[redacted]"}}',
            "body_bytes": len(value),
        },
    }
    assert kafka_record(record)[0] == b"demo"


def test_a_rejected_value_that_is_not_json() -> None:
    record = rejected_event_record("not_json", b"\xffgarbage", "", NOW)
    assert record["site_id"] is None
    assert record["request"]["body"] == "\ufffdgarbage"
    assert record["request"]["body_bytes"] == 8
    for value in (b"[1, 2]", b'{"site_id": 7}', b"{not json"):
        assert rejected_event_record("not_json", value, "", NOW)["site_id"] is None


# --- redaction: trait values never in clear --------------------------------------------------


def test_query_trait_values_are_redacted_however_the_name_is_written() -> None:
    query = (
        b"site=nope&tr.email=ann%40example.com&tr%2Ephone=%2B4912345&%74r.zip=10115"
        b"&TR.city=Berlin&tr.=x&p.x=1&trx=keep&tr.flag"
    )
    assert redacted_query(query) == (
        "site=nope&tr.email=[redacted]&tr%2Ephone=[redacted]&%74r.zip=[redacted]"
        "&TR.city=[redacted]&tr.=[redacted]&p.x=1&trx=keep&tr.flag"
    )


_ENCODINGS: list[Callable[[str], str]] = [
    lambda text: quote(text, safe=""),
    lambda text: quote_plus(text, safe="."),
    lambda text: "".join(f"%{byte:02X}" for byte in text.encode()),
    lambda text: "".join(f"%{byte:02x}" for byte in text.encode()),
]
_NAMES = st.one_of(
    st.sampled_from(["tr.email", "tr.phone", "tr.", "site", "p.x", "trait", " tr.x"]),
    st.text(max_size=6).map(lambda text: "tr." + text),
    st.text(max_size=8),
)


@given(
    st.lists(
        st.tuples(_NAMES, st.text(min_size=1, max_size=12), st.sampled_from(_ENCODINGS)),
        min_size=1,
        max_size=6,
    )
)
def test_no_query_trait_survives_redaction_as_the_pixel_reads_it(
    params: list[tuple[str, str, Callable[[str], str]]],
) -> None:
    query = "&".join(f"{encode(name)}={quote(value, safe='')}" for name, value, encode in params)
    redacted = redacted_query(query.encode())
    read = parse_query(redacted.encode("latin-1"))
    traits = {name: value for name, value in read.items() if name.startswith("tr.")}
    assert set(traits.values()) <= {REDACTED}
    # everything but traits reads as before
    original = parse_query(query.encode())
    assert {k: v for k, v in read.items() if k not in traits} == {
        k: v for k, v in original.items() if not k.startswith("tr.")
    }


def test_json_trait_values_are_redacted_at_any_depth_with_keys_kept() -> None:
    body = orjson.dumps(
        [
            {"traits": {"email": "a@b.example", "plan": "pro"}},
            {"context": {"traits": ["a@b.example"]}},
            {"traits": "a@b.example"},
        ]
    )
    assert orjson.loads(redacted_body(body)) == [
        {"traits": {"email": REDACTED, "plan": REDACTED}},
        {"context": {"traits": REDACTED}},
        {"traits": REDACTED},
    ]


def test_json_without_traits_is_kept_as_sent() -> None:
    body = b'{"batch": [ {"type": "page_view"} ]}'
    assert redacted_body(body) == body.decode()
    assert redacted_body(b"") == ""


def test_a_body_that_is_not_json_but_may_hold_traits_is_dropped_whole() -> None:
    assert redacted_body(b'{"batch": [{"traits": {"email": "ann@x.example"') == REDACTED
    assert redacted_body(b'{"TRAITS": {"email": "ann@x.example"') == REDACTED
    assert redacted_body(b'{"\\u0074raits": {"email": "ann@x.example"') == REDACTED
    assert redacted_body(b"{not json") == "{not json"


def test_too_deep_json_is_replaced_not_recursed_without_end() -> None:
    doc: object = {"traits": {"email": "ann@x.example"}}
    for _ in range(200):
        doc = [doc]
    assert b"ann@x" not in redacted_body(orjson.dumps(doc)).encode()


def test_a_pixel_error_builds_a_record_without_the_trait_value() -> None:
    error = InvalidInputError("invalid_trait", "email does not normalize", field="traits.email")
    record = invalid_record(
        error.reason,
        error.detail,
        source="pixel",
        now=NOW,
        field=error.field,
        query=b"site=demo&tr.email=ann.lee%40nowhere",
    )
    assert b"ann.lee" not in kafka_record(record)[1]
    assert record["field"] == "traits.email"
