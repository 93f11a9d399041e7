"""Ingest end to end (ASGI, no server, a capturing delivery): traits never leave in clear."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from leadback.identity.contacts import ContactCipher, sha256_hex
from leadback.ingest.app import IngestApp, create_app
from leadback.ingest.pixel import GIF
from leadback.settings import DEMO_WRITE_KEY, Settings, load_settings

KEY = ContactCipher.generate_key()
EMAIL = "Ann.Lee@Example.com"
CLEAR = [b"Ann.Lee", b"ann.lee", b"Example.com", b"example.com", b"5550123"]


class CapturingDelivery:
    """Stands in for :class:`leadback.kafka.delivery.Delivery`: keeps what is submitted."""

    ready = True

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes]] = []

    def submit(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.records.append((topic, key, value))

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(value) for t, _, value in self.records if t == topic]

    def assert_nothing_in_clear(self) -> None:
        assert self.records
        for _, _, value in self.records:
            for clear in CLEAR:
                assert clear not in value, (clear, value)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        data_dir=tmp_path,
        identity={"contact_keys": [SecretStr(KEY)], "default_phone_region": "US"},
    )


@pytest.fixture
def delivery() -> CapturingDelivery:
    return CapturingDelivery()


@pytest.fixture
def app(settings: Settings, delivery: CapturingDelivery) -> IngestApp:
    return create_app(settings, delivery)  # type: ignore[arg-type]


async def pixel(app: IngestApp, query: bytes) -> bytes:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/p.gif",
        "query_string": query,
        "headers": [(b"user-agent", b"Mozilla/5.0")],
        "client": ("203.0.113.7", 50000),
        "scheme": "https",
    }
    await app(scope, None, send)
    assert sent[0]["status"] == 200
    body: bytes = sent[1]["body"]
    return body


async def test_pixel_contact_traits_reach_the_topic_only_hashed_and_encrypted(
    app: IngestApp, settings: Settings, delivery: CapturingDelivery
) -> None:
    body = await pixel(
        app, b"site=demo&type=identify&tr.email=Ann.Lee%40Example.com&tr.phone=415-555-0123"
    )
    assert body == GIF
    [event] = delivery.on(settings.kafka.topic_events)
    traits = event["traits"]
    assert traits["email_sha256"] == sha256_hex("ann.lee@example.com")
    assert traits["phone_sha256"] == sha256_hex("+14155550123")
    assert ContactCipher([KEY]).decrypt(traits["email_enc"]) == "ann.lee@example.com"
    delivery.assert_nothing_in_clear()


async def test_pixel_with_an_invalid_trait_gets_the_gif_and_a_redacted_invalid_record(
    app: IngestApp, settings: Settings, delivery: CapturingDelivery
) -> None:
    assert await pixel(app, b"site=demo&tr.email=Ann.Lee%40Example&tr.phone=5550123") == GIF
    assert delivery.on(settings.kafka.topic_events) == []
    [record] = delivery.on(settings.kafka.topic_invalid)
    assert record["reason"] == "invalid_trait"
    delivery.assert_nothing_in_clear()


async def test_pixel_without_traits_is_unchanged(
    app: IngestApp, settings: Settings, delivery: CapturingDelivery
) -> None:
    await pixel(app, b"site=demo&p.x=1")
    [event] = delivery.on(settings.kafka.topic_events)
    assert event["traits"] == {}


async def post(app: IngestApp, body: Any, key: str = DEMO_WRITE_KEY) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        return await client.post(
            "/v1/events", content=orjson.dumps(body), headers={"X-Write-Key": key}
        )


async def test_json_contact_traits_reach_the_topic_only_hashed_and_encrypted(
    app: IngestApp, settings: Settings, delivery: CapturingDelivery
) -> None:
    batch = [
        {
            "type": "identify",
            "user_id": "u-1",
            "traits": {"email": EMAIL, "phone": "(415) 555-0123", "plan": "pro"},
        },
        {"type": "identify", "user_id": "u-2", "traits": {"email": "Ann.Lee@Example"}},
        {"type": "identify", "user_id": "u-3", "traits": {"email_sha256": "0" * 64}},
        {"type": "identify", "user_id": "u-4", "traits": {"mail": EMAIL}, "bogus": 1},
    ]
    response = await post(app, {"batch": batch})
    assert response.status_code == 200
    answer = response.json()
    assert answer["accepted"] == 1
    assert [(e["index"], e["reason"], e["field"]) for e in answer["errors"]] == [
        (1, "invalid_trait", "traits.email"),
        (2, "invalid_trait", "traits.email_sha256"),
        (3, "invalid_event", "bogus"),
    ]
    assert b"ann.lee" not in response.content.lower()
    [event] = delivery.on(settings.kafka.topic_events)
    assert event["traits"]["plan"] == "pro"
    assert event["traits"]["email_sha256"] == sha256_hex("ann.lee@example.com")
    invalid = delivery.on(settings.kafka.topic_invalid)
    assert [r["reason"] for r in invalid] == ["invalid_trait", "invalid_trait", "invalid_event"]
    assert '"mail":"[redacted]"' in invalid[2]["request"]["body"]  # keys kept, values not
    delivery.assert_nothing_in_clear()


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"batch": [{"type": "identify", "traits": {"email": EMAIL}}]}, "wrong-key"),
        ([{"type": "identify", "traits": {"email": EMAIL}}], "wrong-key"),
        ({"batch": {"traits": {"email": EMAIL}}}, DEMO_WRITE_KEY),  # not a list
    ],
)
async def test_refused_batches_leave_no_trait_in_clear(
    app: IngestApp, delivery: CapturingDelivery, body: Any, key: str
) -> None:
    response = await post(app, body, key)
    assert response.status_code in (400, 401)
    delivery.assert_nothing_in_clear()


async def test_unparseable_body_that_mentions_traits_is_dropped(
    app: IngestApp, settings: Settings, delivery: CapturingDelivery
) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        response = await client.post(
            "/v1/events",
            content=b'{"batch": [{"traits": {"email": "Ann.Lee@Example.com"',
            headers={"X-Write-Key": DEMO_WRITE_KEY},
        )
    assert response.status_code == 400
    [record] = delivery.on(settings.kafka.topic_invalid)
    assert record["reason"] == "invalid_json"
    assert record["request"]["body"] == "[redacted]"
    delivery.assert_nothing_in_clear()
