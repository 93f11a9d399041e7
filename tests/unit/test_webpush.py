"""The web push channel against a local push service that checks VAPID and decrypts what it
gets (tests/fakes/push_service.py)."""

from __future__ import annotations

import asyncio
import base64
import email.utils
from collections.abc import AsyncIterator

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from leadback.clock import ManualClock
from leadback.destinations.base import (
    Content,
    Delivered,
    DestinationRejected,
    DestinationUnavailable,
    Message,
    PushSubscription,
    RecipientGone,
)
from leadback.destinations.config import ChannelDeps
from leadback.destinations.vapid import public_key_b64
from leadback.destinations.webpush import (
    ELLIPSIS,
    MAX_PLAINTEXT,
    WebPushConfig,
    build,
    push_payload,
    push_result,
)
from leadback.errors import ConfigError
from tests.fakes.push_service import FakePushService, serve_push_service


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def vapid(monkeypatch: pytest.MonkeyPatch) -> str:
    """A VAPID key pair: the private key in $VAPID_KEY (PEM), the public key returned."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    monkeypatch.setenv("VAPID_KEY", pem)
    return public_key_b64(key)


def config(public_key: str, **overrides: object) -> WebPushConfig:
    fields: dict[str, object] = {
        "id": "push",
        "kind": "webpush",
        "vapid_private_key": {"env": "VAPID_KEY"},
        "vapid_public_key": public_key,
        "subject": "mailto:ops@shop.example",
        **overrides,
    }
    return WebPushConfig.model_validate(fields)


def message(sub: PushSubscription, n: int = 1, **content: str) -> Message:
    fields = {"subject": "Your cart", "text": "Come back", "url": "https://shop.example/cart"}
    return Message(
        delivery_id=f"d{n}",
        site_id="demo",
        campaign_id="c1",
        person_id=f"p{n}",
        step=1,
        recipient=sub,
        content=Content(**{**fields, **content}),
    )


@pytest.fixture
async def service(clock: ManualClock) -> AsyncIterator[FakePushService]:
    async with serve_push_service(now=clock.now) as fake:
        yield fake


def channel(vapid: str, clock: ManualClock, **overrides: object):  # type: ignore[no-untyped-def]
    return build(config(vapid, **overrides), ChannelDeps(clock=clock, allow_private_targets=True))


async def test_a_push_arrives_encrypted_and_decrypts_to_the_message(
    vapid: str, clock: ManualClock, service: FakePushService
) -> None:
    sub = service.subscribe(application_server_key=vapid)
    ch = channel(vapid, clock, ttl_s=3600, urgency="high")
    try:
        [result] = await ch.send_batch([message(sub)])
    finally:
        await ch.aclose()
    assert isinstance(result, Delivered)
    assert result.status == 201
    assert result.provider_id is not None and result.provider_id.startswith(service.origin + "/m/")
    [push] = service.received
    assert push.payload == {
        "title": "Your cart",
        "body": "Come back",
        "url": "https://shop.example/cart",
        "delivery_id": "d1",
    }
    assert (push.headers["ttl"], push.headers["urgency"]) == ("3600", "high")
    assert push.claims["aud"] == service.origin
    assert push.claims["sub"] == "mailto:ops@shop.example"
    assert 0 < push.claims["exp"] - clock.now() <= 86400


async def test_two_push_services_in_one_batch_each_get_their_own_audience(
    vapid: str, clock: ManualClock, service: FakePushService
) -> None:
    async with serve_push_service(now=clock.now) as other:
        subs = [service.subscribe(vapid), other.subscribe(vapid), service.subscribe(vapid)]
        ch = channel(vapid, clock)
        try:
            results = await ch.send_batch([message(s, n) for n, s in enumerate(subs)])
        finally:
            await ch.aclose()
        assert all(isinstance(r, Delivered) for r in results), results
        assert [p.claims["aud"] for p in other.received] == [other.origin]
    assert [p.claims["aud"] for p in service.received] == [service.origin] * 2
    assert service.refused == other.refused == []


async def test_the_vapid_token_is_reused_per_origin_until_near_expiry(
    vapid: str, clock: ManualClock, service: FakePushService
) -> None:
    sub = service.subscribe(vapid)
    ch = channel(vapid, clock)
    try:
        await ch.send_batch([message(sub, 1), message(sub, 2)])
        clock.advance(12 * 3600 - 1800)  # half an hour left: too close, a new token
        await ch.send_batch([message(sub, 3)])
    finally:
        await ch.aclose()
    first, second, third = (p.vapid_token for p in service.received)
    assert first == second != third
    assert all(p.claims["exp"] > clock.now() for p in service.received[2:])


async def test_a_key_the_browser_did_not_subscribe_with_is_refused(
    vapid: str, clock: ManualClock, service: FakePushService
) -> None:
    other_key = public_key_b64(ec.generate_private_key(ec.SECP256R1()))
    sub = service.subscribe(application_server_key=other_key)
    ch = channel(vapid, clock)
    try:
        [result] = await ch.send_batch([message(sub)])
    finally:
        await ch.aclose()
    assert type(result) is DestinationRejected
    assert (result.status, result.reason) == (403, "http_403")


@pytest.mark.parametrize("status", [404, 410])
async def test_a_gone_subscription_is_reported_for_deletion(
    vapid: str, clock: ManualClock, service: FakePushService, status: int
) -> None:
    sub = service.subscribe(vapid)
    service.drop(sub, status)
    ch = channel(vapid, clock)
    try:
        [result] = await ch.send_batch([message(sub)])
    finally:
        await ch.aclose()
    assert isinstance(result, RecipientGone)
    assert (result.why, result.status) == ("subscription_gone", status)
    token = sub.endpoint.rsplit("/", 1)[1]
    assert token not in str(result) + result.response


async def test_throttling_and_server_errors_are_retryable(
    vapid: str, clock: ManualClock, service: FakePushService
) -> None:
    sub = service.subscribe(vapid)
    service.fail_next(429, {"Retry-After": "120"})
    service.fail_next(503)
    service.fail_next(429, {"Retry-After": email.utils.formatdate(clock.now() + 600, usegmt=True)})
    ch = channel(vapid, clock)
    try:
        results = [(await ch.send_batch([message(sub, n)]))[0] for n in range(3)]
    finally:
        await ch.aclose()
    assert all(type(r) is DestinationUnavailable for r in results)
    assert [(r.status, r.retry_after) for r in results] == [(429, 120), (503, None), (429, 600)]  # type: ignore[union-attr]


@pytest.mark.parametrize("status", [400, 403, 413])
async def test_permanent_refusals_are_rejected_without_the_endpoint(
    vapid: str, clock: ManualClock, service: FakePushService, status: int
) -> None:
    sub = service.subscribe(vapid)
    service.fail_next(status, body=f'{{"error": "bad", "endpoint": "{sub.endpoint}"}}')
    ch = channel(vapid, clock)
    try:
        [result] = await ch.send_batch([message(sub)])
    finally:
        await ch.aclose()
    assert type(result) is DestinationRejected
    assert result.status == status
    assert '"error": "bad"' in result.response
    assert sub.endpoint not in result.response
    assert sub.endpoint.rsplit("/", 1)[1] not in result.response


async def test_a_slow_push_service_times_out_as_unavailable(
    vapid: str, clock: ManualClock, service: FakePushService
) -> None:
    sub = service.subscribe(vapid)
    release = service.hang_next()
    ch = channel(vapid, clock, timeout_s=0.3)
    try:
        [result] = await ch.send_batch([message(sub)])
    finally:
        release.set()
        await ch.aclose()
    assert type(result) is DestinationUnavailable
    assert result.reason == "timeout"


async def test_a_long_body_is_shortened_to_fit_one_record(
    vapid: str, clock: ManualClock, service: FakePushService
) -> None:
    sub = service.subscribe(vapid)
    long_body = "Привет! " * 1000  # 2 bytes a letter: ~15 kB
    ch = channel(vapid, clock)
    try:
        results = await ch.send_batch(
            [message(sub, 1, text=long_body), message(sub, 2, subject="x" * 5000)]
        )
    finally:
        await ch.aclose()
    delivered, refused = results
    assert isinstance(delivered, Delivered)
    [push] = service.received
    body = push.payload["body"]
    assert body.endswith(ELLIPSIS) and long_body.startswith(body[:-1])
    assert len(orjson.dumps(push.payload)) <= MAX_PLAINTEXT
    assert push.body_bytes <= 4096
    assert type(refused) is DestinationRejected and refused.reason == "payload_too_large"


async def test_endpoints_that_cannot_be_sent_to_are_invalid_addresses(
    vapid: str, clock: ManualClock, service: FakePushService
) -> None:
    sub = service.subscribe(vapid)
    bad_keys = PushSubscription(sub.endpoint, p256dh=sub.p256dh[:40], auth=sub.auth)
    guarded = build(config(vapid), ChannelDeps(clock=clock, allow_private_targets=False))
    try:
        [private] = await guarded.send_batch([message(sub)])  # http and loopback
        [metadata] = await guarded.send_batch(
            [message(PushSubscription("https://169.254.169.254/x", sub.p256dh, sub.auth))]
        )
        [keys] = await guarded.send_batch([message(bad_keys)])
        [junk] = await guarded.send_batch(
            [message(PushSubscription("https://[::1", sub.p256dh, sub.auth))]
        )
    finally:
        await guarded.aclose()
    for result in (private, metadata, junk):
        assert isinstance(result, RecipientGone)
        assert (result.why, result.reason) == ("invalid_address", "target_not_allowed")
    assert isinstance(keys, RecipientGone) and keys.reason == "invalid_subscription"
    assert service.requests == 0


async def test_many_messages_run_concurrently_up_to_the_limit(
    vapid: str, clock: ManualClock, service: FakePushService
) -> None:
    subs = [service.subscribe(vapid) for _ in range(12)]
    ch = channel(vapid, clock, concurrency=3)
    try:
        results = await asyncio.wait_for(
            ch.send_batch([message(s, n) for n, s in enumerate(subs)]), 30
        )
    finally:
        await ch.aclose()
    assert all(isinstance(r, Delivered) for r in results)
    assert sorted(p.payload["delivery_id"] for p in service.received) == sorted(
        f"d{n}" for n in range(12)
    )


# --- configuration ------------------------------------------------------------------------


def test_ttl_zero_and_bad_settings_are_refused(vapid: str) -> None:
    with pytest.raises(ValidationError, match="ttl_s"):
        config(vapid, ttl_s=0)
    with pytest.raises(ValidationError, match="urgency"):
        config(vapid, urgency="urgent")
    with pytest.raises(ValidationError, match="subject"):
        config(vapid, subject="ops@shop.example")
    with pytest.raises(ValidationError, match="vapid_public_key"):
        config(vapid[:-4])
    with pytest.raises(ValidationError, match="vapid_private_key"):
        config(vapid, vapid_private_key="-----BEGIN PRIVATE KEY-----...")


def test_a_public_key_that_is_not_the_private_keys_fails_the_build(
    vapid: str, clock: ManualClock
) -> None:
    other = public_key_b64(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ConfigError, match="not the public key"):
        build(config(other), ChannelDeps(clock=clock))


async def test_a_raw_base64url_private_key_is_accepted(
    monkeypatch: pytest.MonkeyPatch, clock: ManualClock, service: FakePushService
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.private_numbers().private_value.to_bytes(32, "big")
    monkeypatch.setenv("VAPID_KEY", base64.urlsafe_b64encode(raw).rstrip(b"=").decode())
    public = public_key_b64(key)
    ch = channel(public, clock)
    try:
        [result] = await ch.send_batch([message(service.subscribe(public))])
    finally:
        await ch.aclose()
    assert isinstance(result, Delivered)


# --- pure parts ---------------------------------------------------------------------------


@given(st.text(max_size=300), st.text(max_size=6000), st.none() | st.text(max_size=300))
def test_payloads_always_fit_or_are_refused(title: str, body: str, url: str | None) -> None:
    try:
        data = push_payload(title, body, url, "d1")
    except DestinationRejected as exc:
        assert exc.reason == "payload_too_large"
        assert (
            len(orjson.dumps({"title": title, "body": "", "url": url, "delivery_id": "d1"}))
            > MAX_PLAINTEXT
        )
        return
    assert len(data) <= MAX_PLAINTEXT
    doc = orjson.loads(data)
    assert (doc["title"], doc["url"]) == (title, url)
    if doc["body"] != body:  # shortened: a prefix, and as long as would fit
        assert doc["body"] == "" or body.startswith(doc["body"].removesuffix(ELLIPSIS).rstrip())
        assert len(orjson.dumps({**doc, "body": body})) > MAX_PLAINTEXT


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (201, Delivered),
        (202, Delivered),
        (400, DestinationRejected),
        (401, DestinationRejected),
        (403, DestinationRejected),
        (404, RecipientGone),
        (410, RecipientGone),
        (413, DestinationRejected),
        (429, DestinationUnavailable),
        (500, DestinationUnavailable),
        (502, DestinationUnavailable),
    ],
)
def test_status_mapping(status: int, kind: type) -> None:
    assert type(push_result(status, {}, "", now=0.0)) is kind
