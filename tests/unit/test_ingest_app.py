"""The ingest app in process (ASGI, a capturing delivery): its clock, and the records it
produces checked against the schemas published in docs/asyncapi.yaml."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from leadback.clock import ManualClock
from leadback.events import format_ts
from leadback.ingest.app import IngestApp, create_app
from leadback.invalid import rejected_event_record
from leadback.settings import Settings, load_settings
from tests.unit.ingest_kit import CapturingDelivery, pixel, post

SPEC = yaml.safe_load((Path(__file__).parents[2] / "docs/asyncapi.yaml").read_text())
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path, identity={"default_phone_region": "US"})


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1_800_000_000.0)  # 2027-01-15T08:00:00Z


@pytest.fixture
def delivery() -> CapturingDelivery:
    return CapturingDelivery()


@pytest.fixture
def app(settings: Settings, delivery: CapturingDelivery, clock: ManualClock) -> IngestApp:
    return create_app(settings, delivery, clock=clock)  # type: ignore[arg-type]


def _uuid7_ms(event_id: str) -> int:
    return int(event_id.replace("-", "")[:12], 16)


async def test_the_injected_clock_stamps_events_and_invalid_records(
    app: IngestApp, settings: Settings, delivery: CapturingDelivery, clock: ManualClock
) -> None:
    await pixel(app, b"site=demo&type=page_view")
    await pixel(app, b"site=nope")
    clock.advance(61.25)
    response = await post(app, [{"type": "page_view", "anonymous_id": "a"}, {"type": "nope"}])
    assert response.json()["accepted"] == 1

    first, second = delivery.on(settings.kafka.topic_events)
    assert first["received_at"] == "2027-01-15T08:00:00.000Z"
    assert _uuid7_ms(first["event_id"]) == 1_800_000_000_000
    assert second["received_at"] == "2027-01-15T08:01:01.250Z"
    assert _uuid7_ms(second["event_id"]) == 1_800_000_061_250
    refused_pixel, refused_event = delivery.on(settings.kafka.topic_invalid)
    assert (refused_pixel["reason"], refused_pixel["received_at"]) == (
        "unknown_site",
        "2027-01-15T08:00:00.000Z",
    )
    assert (refused_event["reason"], refused_event["received_at"]) == (
        "invalid_event",
        format_ts(clock.now()),
    )


# --- the records against the published schemas ----------------------------------------------

_KEYWORDS = {
    "type", "const", "enum", "required", "additionalProperties", "properties", "items",
    "$ref", "maxLength", "minimum", "format", "description",
}  # fmt: skip
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
    "null": (type(None),),
}


def check(value: Any, schema: dict[str, Any], where: str = "$") -> None:
    """Assert that ``value`` matches ``schema``: the JSON Schema keywords asyncapi.yaml uses
    (any other keyword in the schema is an error, so a YAML slip cannot pass unnoticed)."""
    assert set(schema) <= _KEYWORDS, (where, set(schema) - _KEYWORDS)
    if "$ref" in schema:
        target: Any = SPEC
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        check(value, target, where)
        return
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        allowed = tuple(t for name in names for t in _TYPES[name])
        is_bool = isinstance(value, bool)
        assert isinstance(value, allowed) and (not is_bool or bool in allowed), (where, value)
    if "const" in schema:
        assert value == schema["const"], where
    if "enum" in schema:
        assert value in schema["enum"], (where, value)
    if isinstance(value, str):
        assert len(value) <= schema.get("maxLength", len(value)), where
        if schema.get("format") == "date-time":
            assert TIMESTAMP.match(value), (where, value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        assert set(schema.get("required", [])) <= set(value), (where, set(value))
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(properties), (where, set(value) - set(properties))
        for key, item in value.items():
            if key in properties:
                check(item, properties[key], f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            check(item, schema["items"], f"{where}[{i}]")


def schema(name: str) -> dict[str, Any]:
    found: dict[str, Any] = SPEC["components"]["schemas"][name]
    return found


def test_the_checker_refuses_what_the_schema_does_not_allow() -> None:
    invalid = schema("InvalidInput")
    good = rejected_event_record("not_json", b"x", "", 1.8e9)
    check(good, invalid)
    for bad in (
        {**good, "raw": "x"},  # a key the schema does not list
        {k: v for k, v in good.items() if k != "field"},  # a required key missing
        {**good, "source": "ftp"},
        {**good, "received_at": "yesterday"},
        {**good, "request": {**good["request"], "body_bytes": "1"}},
        {**good, "request": {**good["request"], "body": "x" * 8193}},
    ):
        with pytest.raises(AssertionError):
            check(bad, invalid)


async def test_invalid_records_of_every_path_match_the_asyncapi_schema(
    app: IngestApp, settings: Settings, delivery: CapturingDelivery
) -> None:
    await pixel(app, b"site=nope&tr.email=ann%40x.example", method="HEAD")
    await pixel(app, b"type=page_view", headers=[])
    await pixel(app, b"site=demo&ts=yesterday")
    await post(app, [{"type": "identify", "traits": {"email": "ann@x.example"}}])
    await post(app, None, raw=b"{not json")
    await post(app, [{"type": "page_view"}], key="wrong-key")
    records = delivery.on(settings.kafka.topic_invalid)
    assert [(r["source"], r["reason"]) for r in records] == [
        ("pixel", "unknown_site"),
        ("pixel", "missing_site"),
        ("pixel", "invalid_timestamp"),
        ("json", "missing_identity"),
        ("json", "invalid_json"),
        ("json", "unauthorized"),
    ]
    records.append(rejected_event_record("not_json", b"{oops", "", 1.8e9))
    for record in records:
        check(record, schema("InvalidInput"))
        assert (
            list(record["request"]) == schema("InvalidInput")["properties"]["request"]["required"]
        )
    head, no_headers, with_site = records[:3]
    assert (head["request"]["method"], head["request"]["path"]) == ("HEAD", "/p.gif")
    assert head["request"]["query"] == "site=nope&tr.email=[redacted]"
    assert (no_headers["request"]["user_agent"], no_headers["site_id"]) == (None, None)
    assert (with_site["site_id"], with_site["field"]) == ("demo", "ts")
    assert records[3]["request"]["method"] == "POST"
    assert records[3]["request"]["path"] == "/v1/events"
    assert records[3]["request"]["user_agent"] == "agent/1.0"
    assert records[3]["request"]["ip"] == "127.0.0.0"  # httpx's ASGI client
    assert delivery.keys(settings.kafka.topic_invalid) == [
        b"nope", b"203.0.113.0", b"demo", b"demo", b"demo", b"127.0.0.0"
    ]  # fmt: skip


async def test_events_of_every_path_match_the_asyncapi_schema(
    app: IngestApp, settings: Settings, delivery: CapturingDelivery
) -> None:
    await pixel(app, b"site=demo&type=purchase&val=9.5&cur=eur&ts=1800000000000&consent=ads")
    await post(
        app,
        [
            {
                "type": "identify",
                "user_id": "u1",
                "traits": {"email": "ann@x.example"},
                "consent": {"status": "denied", "gpc": True},
            }
        ],
    )
    events = delivery.on(settings.kafka.topic_events)
    assert len(events) == 2
    for event in events:
        check(event, schema("CanonicalEvent"))
