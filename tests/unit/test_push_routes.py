"""``POST``/``DELETE /v1/push/subscriptions`` on the ingest app (in process, capturing delivery):
both ways to authenticate, validation naming the field, and nothing in clear on the topic."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from leadback.clock import ManualClock
from leadback.destinations.base import Content, Delivered, Message
from leadback.destinations.config import ChannelDeps
from leadback.destinations.push_subscription import subscription_from_json
from leadback.destinations.vapid import public_key_b64
from leadback.destinations.webpush import WebPushConfig, build
from leadback.errors import BackpressureError
from leadback.ingest.app import IngestApp, create_app
from leadback.settings import DEMO_WRITE_KEY, Settings, load_settings
from tests.fakes.push_service import serve_push_service
from tests.unit.ingest_kit import CapturingDelivery

PATH = "/v1/push/subscriptions"
VISITOR = "0123456789abcdef0123456789abcdef"
ENDPOINT = "https://fcm.googleapis.com/fcm/send/dXk1Y2tUbk9fQ2p5OnJ1blRpbWU"
# A real P-256 point (the RFC 8291 example's user agent key) and a 16-byte secret.
P256DH = "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
AUTH = "BTBZMqHH6r4Tts7J_aSIgg"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path)


@pytest.fixture
def delivery() -> CapturingDelivery:
    return CapturingDelivery()


@pytest.fixture
def app(settings: Settings, delivery: CapturingDelivery) -> IngestApp:
    return create_app(settings, delivery, clock=ManualClock())  # type: ignore[arg-type]


def subscription(
    endpoint: str = ENDPOINT, p256dh: str = P256DH, auth: str = AUTH
) -> dict[str, Any]:
    return {"endpoint": endpoint, "expirationTime": None, "keys": {"p256dh": p256dh, "auth": auth}}


async def call(
    app: IngestApp,
    body: Any,
    *,
    method: str = "POST",
    key: str | None = DEMO_WRITE_KEY,
    cookie: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> httpx.Response:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    if cookie is not None:
        sent["Cookie"] = f"lb_vid={cookie}"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://ingest") as client:
        return await client.request(
            method, PATH, content=raw if raw is not None else orjson.dumps(body), headers=sent
        )


def signals(settings: Settings, delivery: CapturingDelivery) -> list[dict[str, Any]]:
    return delivery.on(settings.kafka.topic_events)


async def test_a_server_with_the_write_key_subscribes_a_visitor(
    app: IngestApp, settings: Settings, delivery: CapturingDelivery
) -> None:
    response = await call(app, {"subscription": subscription(), "anonymous_id": VISITOR})
    assert response.status_code == 202
    [signal] = signals(settings, delivery)
    assert response.json() == {"event_id": signal["event_id"]}
    assert (signal["name"], signal["source"], signal["site_id"], signal["visitor_id"]) == (
        "leadback.push_subscribed",
        "signal",
        "demo",
        VISITOR,
    )
    assert delivery.keys(settings.kafka.topic_events) == [f"demo:{VISITOR}".encode()]
    props = signal["properties"]
    assert props["endpoint_sha256"] == hashlib.sha256(ENDPOINT.encode()).hexdigest()
    cipher = app.api.state.ctx.cipher
    stored = subscription_from_json(cipher.decrypt(props["subscription_enc"]))
    assert (stored.endpoint, stored.p256dh, stored.auth) == (ENDPOINT, P256DH, AUTH)
    delivery.assert_nothing_in_clear(
        [ENDPOINT.encode(), b"dXk1Y2tUbk9fQ2p5OnJ1blRpbWU", P256DH.encode(), AUTH.encode()]
    )


async def test_a_user_id_keys_the_signal_like_that_users_events(
    app: IngestApp, settings: Settings, delivery: CapturingDelivery
) -> None:
    response = await call(app, {"subscription": subscription(), "user_id": "u-42"})
    assert response.status_code == 202
    assert signals(settings, delivery)[0]["visitor_id"] == "u:u-42"


async def test_the_page_subscribes_with_the_visitor_cookie(
    app: IngestApp, settings: Settings, delivery: CapturingDelivery
) -> None:
    response = await call(
        app,
        {"subscription": subscription(), "site": "demo"},
        key=None,
        cookie=VISITOR,
        headers={"Sec-Fetch-Site": "same-site"},
    )
    assert response.status_code == 202, response.text
    [signal] = signals(settings, delivery)
    assert (signal["site_id"], signal["visitor_id"]) == ("demo", VISITOR)


async def test_unsubscribe_sends_the_same_endpoint_hash_for_the_same_visitor(
    app: IngestApp, settings: Settings, delivery: CapturingDelivery
) -> None:
    await call(app, {"subscription": subscription(), "site": "demo"}, key=None, cookie=VISITOR)
    response = await call(
        app, {"endpoint": ENDPOINT, "site": "demo"}, method="DELETE", key=None, cookie=VISITOR
    )
    assert response.status_code == 202
    subscribed, unsubscribed = signals(settings, delivery)
    assert unsubscribed["name"] == "leadback.push_unsubscribed"
    assert unsubscribed["event_id"] == response.json()["event_id"]
    assert unsubscribed["visitor_id"] == subscribed["visitor_id"] == VISITOR
    assert unsubscribed["properties"] == {
        "endpoint_sha256": subscribed["properties"]["endpoint_sha256"]
    }
    delivery.assert_nothing_in_clear([ENDPOINT.encode()])


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"key": None}, "no write key, no cookie"),
        ({"key": "wrong-key"}, "unknown write key"),
        ({"key": None, "cookie": "not-a-visitor-id"}, "junk cookie"),
        (
            {"key": None, "cookie": VISITOR, "headers": {"Sec-Fetch-Site": "cross-site"}},
            "another site's page",
        ),
    ],
)
async def test_unauthenticated_calls_are_401(
    app: IngestApp, delivery: CapturingDelivery, kwargs: dict[str, Any], why: str
) -> None:
    body = {"subscription": subscription(), "site": "demo"}
    response = await call(app, body, **kwargs)
    assert response.status_code == 401, why
    assert response.json()["error"] == "unauthorized"
    assert delivery.records == []


def keyed(**fields: str) -> dict[str, Any]:
    """A write-key body with the subscription's ``fields`` replaced."""
    return {"subscription": subscription(**fields), "anonymous_id": "a"}


SUB = "subscription."


@pytest.mark.parametrize(
    ("body", "auth", "field"),
    [
        ({"subscription": subscription()}, "key", "anonymous_id"),
        ({"subscription": subscription(), "user_id": "u-1"}, "cookie", "user_id"),
        ({**keyed(), "site": "demo"}, "cookie", "anonymous_id"),
        ({"subscription": subscription()}, "cookie", "site"),
        ({"subscription": subscription(), "site": "elsewhere"}, "cookie", "site"),
        ({**keyed(), "site": "other"}, "key", "site"),
        (keyed(endpoint="http://push.example/x"), "key", SUB + "endpoint"),
        (keyed(endpoint="https://10.0.0.5/x"), "key", SUB + "endpoint"),
        (keyed(endpoint="https://push.example/" + "x" * 2100), "key", SUB + "endpoint"),
        (keyed(p256dh=b64(b"\x04" + b"\x01" * 64)), "key", SUB + "keys.p256dh"),  # off the curve
        (keyed(p256dh=P256DH[:-10]), "key", SUB + "keys.p256dh"),
        (keyed(p256dh="not base64!"), "key", SUB + "keys.p256dh"),
        (keyed(auth=b64(b"x" * 15)), "key", SUB + "keys.auth"),
        ({"subscription": {"endpoint": ENDPOINT}, "anonymous_id": "a"}, "key", SUB + "keys"),
        ({**keyed(), "extra": 1}, "key", "extra"),
        ({"anonymous_id": "a"}, "key", "subscription"),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(
    app: IngestApp, delivery: CapturingDelivery, body: dict[str, Any], auth: str, field: str
) -> None:
    who: dict[str, Any] = {"key": None, "cookie": VISITOR} if auth == "cookie" else {}
    response = await call(app, body, **who)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field
    assert delivery.records == []


async def test_bad_json_is_400_and_a_huge_body_is_413(app: IngestApp) -> None:
    bad = await call(app, None, raw=b'{"subscription": ')
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_json")
    huge = await call(app, {"subscription": subscription(), "anonymous_id": "a" * 9000})
    assert huge.status_code == 413


async def test_private_endpoints_are_accepted_where_the_dispatcher_allows_them(
    tmp_path: Path, delivery: CapturingDelivery
) -> None:
    settings = load_settings(data_dir=tmp_path, dispatcher={"allow_private_targets": True})
    app = create_app(settings, delivery, clock=ManualClock())  # type: ignore[arg-type]
    body = {"subscription": subscription("http://127.0.0.1:9999/push/x"), "anonymous_id": "a"}
    assert (await call(app, body)).status_code == 202


async def test_full_buffers_answer_503(app: IngestApp, delivery: CapturingDelivery) -> None:
    def full(topic: str, key: bytes | None, value: bytes) -> None:
        raise BackpressureError("buffers full", retry_after=2.0)

    delivery.submit = full  # type: ignore[method-assign]
    response = await call(app, {"subscription": subscription(), "anonymous_id": "a"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"


async def test_openapi_documents_bodies_and_statuses(app: IngestApp) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://ingest") as client:
        spec = (await client.get("/openapi.json")).json()
    path = spec["paths"][PATH]
    for method in ("post", "delete"):
        assert set(path[method]["responses"]) >= {"202", "400", "401", "413", "503"}
        schema = path[method]["requestBody"]["content"]["application/json"]["schema"]
        assert "$defs" not in orjson.dumps(schema).decode()
    post = path["post"]["requestBody"]["content"]["application/json"]["schema"]
    keys = post["properties"]["subscription"]["properties"]["keys"]["properties"]
    assert set(keys) == {"p256dh", "auth"}
    assert (
        "endpoint"
        in path["delete"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    )


async def test_a_subscription_saved_through_ingest_receives_a_push(
    tmp_path: Path, delivery: CapturingDelivery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored form round-trips: what ingest encrypts, the dispatcher decrypts and the web
    push channel sends to; the browser's side decrypts the message."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    monkeypatch.setenv("VAPID_KEY", pem.decode())
    settings = load_settings(data_dir=tmp_path, dispatcher={"allow_private_targets": True})
    clock = ManualClock()
    app = create_app(settings, delivery, clock=clock)  # type: ignore[arg-type]
    async with serve_push_service(now=clock.now) as service:
        browser = service.subscribe(application_server_key=public_key_b64(key))
        body = {"subscription": subscription(browser.endpoint, browser.p256dh, browser.auth)}
        response = await call(app, {**body, "site": "demo"}, key=None, cookie=VISITOR)
        assert response.status_code == 202
        [signal] = signals(settings, delivery)
        stored = app.api.state.ctx.cipher.decrypt(signal["properties"]["subscription_enc"])
        config = WebPushConfig.model_validate(
            {
                "id": "push",
                "kind": "webpush",
                "vapid_private_key": {"env": "VAPID_KEY"},
                "vapid_public_key": public_key_b64(key),
                "subject": "https://shop.example/contact",
            }
        )
        channel = build(config, ChannelDeps(clock=clock, allow_private_targets=True))
        try:
            [result] = await channel.send_batch(
                [
                    Message(
                        delivery_id="d1",
                        site_id="demo",
                        campaign_id="c",
                        person_id=signal["visitor_id"],
                        step=1,
                        recipient=subscription_from_json(stored),
                        content=Content(subject="Hi", text="Your cart misses you"),
                    )
                ]
            )
        finally:
            await channel.aclose()
    assert isinstance(result, Delivered)
    assert service.received[0].payload["body"] == "Your cart misses you"
