"""``POST /v1/email/bounces`` through the real app over ASGI: hard bounces and complaints
become suppressions keyed by the address's hash, and the address never reaches the topic."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from leadback.clock import ManualClock
from leadback.identity.contacts import normalize_email, sha256_hex
from leadback.ingest.app import IngestApp, create_app
from leadback.settings import DEMO_WRITE_KEY, Settings, load_settings
from tests.unit.ingest_kit import CapturingDelivery, post

URL = "/v1/email/bounces"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path)


@pytest.fixture
def delivery() -> CapturingDelivery:
    return CapturingDelivery()


@pytest.fixture
def app(settings: Settings, delivery: CapturingDelivery) -> IngestApp:
    return create_app(settings, delivery, clock=ManualClock())  # type: ignore[arg-type]


@pytest.fixture
async def client(app: IngestApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://ingest.test") as c:
        yield c


def report(*items: tuple[str, str], reason: str = "") -> dict[str, Any]:
    return {"bounces": [{"email": e, "type": t, "reason": reason} for e, t in items]}


async def send(
    client: httpx.AsyncClient, body: Any, *, key: str | None = DEMO_WRITE_KEY
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.post(URL, content=content, headers=headers)


def suppressions(settings: Settings, delivery: CapturingDelivery) -> list[dict[str, Any]]:
    return delivery.on(settings.kafka.topic_events)


async def test_hard_bounces_and_complaints_suppress_the_address_hash_soft_ones_are_counted(
    client: httpx.AsyncClient, settings: Settings, delivery: CapturingDelivery
) -> None:
    body = report(
        ("bob@example.org", "hard"),
        (" Bob@Example.ORG ", "hard"),  # the same address: one suppression
        ("carol@example.org", "complaint"),
        ("dave@example.org", "soft"),
        reason="550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown",
    )
    response = await send(client, body)
    assert response.status_code == 200
    assert response.json() == {"received": 4, "suppressed": 2, "hard": 2, "complaint": 1, "soft": 1}
    bob, carol = suppressions(settings, delivery)
    assert bob["name"] == carol["name"] == "leadback.suppressed"
    assert bob["site_id"] == "demo" and bob["source"] == "signal"
    assert bob["properties"] == {
        "subject": f"email:{sha256_hex('bob@example.org')}",
        "channel": "email",
        "reason": "hard_bounce",
    }
    assert carol["properties"]["reason"] == "complaint"
    assert carol["properties"]["subject"] == f"email:{sha256_hex('carol@example.org')}"
    delivery.assert_nothing_in_clear(
        [b"bob@", b"Bob@", b"carol@", b"dave@", b"example.org", b"Recipient address"]
    )


async def test_the_hash_is_the_one_ingest_stores_for_the_same_address(
    app: IngestApp, client: httpx.AsyncClient, settings: Settings, delivery: CapturingDelivery
) -> None:
    identify = {"type": "identify", "user_id": "42", "traits": {"email": " Zoë@Example.com"}}
    assert (await post(app, [identify])).json()["accepted"] == 1
    assert (await send(client, report(("zoë@example.COM", "hard")))).status_code == 200
    event, signal = suppressions(settings, delivery)
    stored = event["traits"]["email_sha256"]
    assert signal["properties"]["subject"] == f"email:{stored}"
    assert stored == sha256_hex(normalize_email("zoë@example.com"))


async def test_the_write_key_is_read_like_post_events(
    client: httpx.AsyncClient, settings: Settings, delivery: CapturingDelivery
) -> None:
    body = orjson.dumps(report(("bob@example.org", "hard")))
    basic = base64.b64encode(f"{DEMO_WRITE_KEY}:".encode()).decode()
    for headers in ({"X-Write-Key": DEMO_WRITE_KEY}, {"Authorization": f"Basic {basic}"}):
        response = await client.post(URL, content=body, headers=headers)
        assert response.status_code == 200, headers
    for key in (None, "wrong-key"):
        response = await send(client, report(("bob@example.org", "hard")), key=key)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
    assert len(suppressions(settings, delivery)) == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", None),
        ({"bounce": []}, "bounces"),
        ({"bounces": {"email": "bob@example.org"}}, "bounces"),
        (report(("bob@example.org", "hard"), ("eve@example.org", "bogus")), "bounces[1].type"),
        ({"bounces": [{"type": "hard"}]}, "bounces[0].email"),
        (report(("bob@example.org", "hard"), ("not-an-address", "hard")), "bounces[1].email"),
        (report(("x" * 400 + "@example.org", "hard")), "bounces[0].email"),
    ],
)
async def test_an_invalid_body_is_a_400_naming_the_field_and_suppresses_nothing(
    client: httpx.AsyncClient,
    settings: Settings,
    delivery: CapturingDelivery,
    body: Any,
    field: str | None,
) -> None:
    response = await send(client, body)
    assert response.status_code == 400
    error = response.json()
    if field is None:
        assert error["error"] == "invalid_json"
    else:
        assert error["error"] == "invalid_body"
        assert error["detail"].startswith(f"{field}:"), error
    assert "not-an-address" not in response.text and "eve@" not in response.text
    assert suppressions(settings, delivery) == []


async def test_more_than_1000_reports_or_a_huge_body_is_a_413(
    client: httpx.AsyncClient, settings: Settings, delivery: CapturingDelivery
) -> None:
    many = report(*[(f"p{i}@example.org", "hard") for i in range(1001)])
    assert (await send(client, many)).status_code == 413
    huge = report(("bob@example.org", "hard"), reason="x" * 2_000_000)
    assert (await send(client, huge)).status_code == 413
    exactly = report(*[(f"p{i}@example.org", "hard") for i in range(1000)])
    response = await send(client, exactly)
    assert response.status_code == 200 and response.json()["suppressed"] == 1000
    assert len(suppressions(settings, delivery)) == 1000


async def test_the_route_is_documented(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    responses = spec["paths"][URL]["post"]["responses"]
    assert {"200", "400", "401", "413", "503"} <= set(responses)
