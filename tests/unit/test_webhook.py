"""The webhook channel against a local receiver that verifies each request with the published
``standardwebhooks`` package (tests/fakes/webhook_receiver.py)."""

from __future__ import annotations

import base64
import email.utils
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from leadback.clock import ManualClock
from leadback.destinations.base import (
    Content,
    Delivered,
    DestinationRejected,
    DestinationUnavailable,
    Message,
    NoAddress,
)
from leadback.destinations.config import ChannelDeps
from leadback.destinations.webhook import (
    WebhookChannel,
    WebhookConfig,
    batch_id,
    build,
    secret_key,
    signature,
    webhook_result,
)
from leadback.errors import ConfigError
from tests.fakes.tls import make_certificates
from tests.fakes.webhook_receiver import FakeWebhookReceiver, serve_webhook_receiver

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


@pytest.fixture
def clock() -> ManualClock:
    # The receiver's library checks the timestamp against the wall clock (5 minutes).
    return ManualClock(start=time.time())


@pytest.fixture(autouse=True)
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)


@pytest.fixture
async def receiver() -> AsyncIterator[FakeWebhookReceiver]:
    async with serve_webhook_receiver(SECRET) as fake:
        yield fake


def config(url: str, **overrides: object) -> WebhookConfig:
    fields: dict[str, object] = {
        "id": "hook",
        "kind": "webhook",
        "url": url,
        "secret": {"env": "HOOK_SECRET"},
        **overrides,
    }
    return WebhookConfig.model_validate(fields)


def message(n: int = 1, **data: object) -> Message:
    return Message(
        delivery_id=f"dlv_{n}",
        site_id="demo",
        campaign_id="cart",
        person_id=f"p{n}",
        step=2,
        recipient=NoAddress(),
        content=Content(data={"offer": "SAVE10", **data}),
    )


def local(clock: ManualClock) -> ChannelDeps:
    return ChannelDeps(clock=clock, allow_private_targets=True)


def test_the_standard_webhooks_vector() -> None:
    key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert (
        signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


async def test_one_message_is_one_signed_post_the_receiver_verifies(
    clock: ManualClock, receiver: FakeWebhookReceiver
) -> None:
    ch = build(config(receiver.url, headers={"X-Tenant": "shop"}), local(clock))
    try:
        [result] = await ch.send_batch([message()])
        [again] = await ch.send_batch([message()])  # a retry of the same delivery
    finally:
        await ch.aclose()
    assert isinstance(result, Delivered) and isinstance(again, Delivered)
    assert receiver.unverified == []
    first, second = receiver.received
    assert first.payload == {
        "offer": "SAVE10",
        "type": "leadback.campaign.step",
        "timestamp": first.payload["timestamp"],
        "delivery_id": "dlv_1",
        "site_id": "demo",
        "campaign_id": "cart",
        "person_id": "p1",
        "step": 2,
    }
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "dlv_1"
    assert first.headers["webhook-timestamp"] == str(int(clock.now()))
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-tenant"] == "shop"


async def test_a_wrong_secret_fails_verification_at_the_receiver(clock: ManualClock) -> None:
    other = "whsec_" + base64.b64encode(b"z" * 32).decode()
    async with serve_webhook_receiver(other) as receiver:
        ch = build(config(receiver.url), local(clock))
        try:
            [result] = await ch.send_batch([message()])
        finally:
            await ch.aclose()
    assert type(result) is DestinationRejected and result.status == 401
    assert receiver.received == [] and len(receiver.unverified) == 1


async def test_batch_mode_carries_up_to_batch_size_messages_per_post(
    clock: ManualClock, receiver: FakeWebhookReceiver
) -> None:
    ch = build(config(receiver.url, batch_size=3), local(clock))
    assert ch.max_batch == 3
    try:
        results = await ch.send_batch([message(n) for n in range(5)])
        # The same deliveries in another order: the same batch id (a retry is recognised).
        await ch.send_batch([message(2), message(0), message(1)])
    finally:
        await ch.aclose()
    assert all(isinstance(r, Delivered) for r in results) and len(results) == 5
    assert [len(r.payload["data"]) for r in receiver.received] == [3, 2, 3]
    batch = receiver.received[0]
    assert batch.payload["type"] == "leadback.deliveries"
    assert [d["delivery_id"] for d in batch.payload["data"]] == ["dlv_0", "dlv_1", "dlv_2"]
    assert {d["type"] for d in batch.payload["data"]} == {"leadback.campaign.step"}
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert ids[0] == ids[2] != ids[1]
    assert ids[0] == batch_id(["dlv_0", "dlv_1", "dlv_2"])


async def test_a_failed_batch_fails_each_of_its_messages(
    clock: ManualClock, receiver: FakeWebhookReceiver
) -> None:
    receiver.answer_next(503, {"Retry-After": "7"})
    ch = build(config(receiver.url, batch_size=2), local(clock))
    try:
        results = await ch.send_batch([message(1), message(2), message(3)])
    finally:
        await ch.aclose()
    assert [type(r) for r in results] == [DestinationUnavailable, DestinationUnavailable, Delivered]
    assert results[0] is results[1] and results[0].retry_after == 7  # type: ignore[union-attr]


async def test_answers_map_to_what_the_dispatcher_should_do(
    clock: ManualClock, receiver: FakeWebhookReceiver
) -> None:
    when = email.utils.formatdate(clock.now() + 90, usegmt=True)
    receiver.answer_next(429, {"Retry-After": "30"})
    receiver.answer_next(503, {"Retry-After": when})
    receiver.answer_next(500)
    receiver.answer_next(410)
    receiver.answer_next(400)
    ch = build(config(receiver.url), local(clock))
    try:
        results = [(await ch.send_batch([message(n)]))[0] for n in range(5)]
    finally:
        await ch.aclose()
    throttled, unavailable, error, gone, bad = results
    assert type(throttled) is DestinationUnavailable and throttled.retry_after == 30
    assert type(unavailable) is DestinationUnavailable
    assert unavailable.retry_after is not None and 89 <= unavailable.retry_after <= 90
    assert type(error) is DestinationUnavailable and error.retry_after is None
    assert type(gone) is DestinationRejected and gone.reason == "webhook_gone"
    assert type(bad) is DestinationRejected and bad.reason == "http_400"


async def test_redirects_are_never_followed(
    clock: ManualClock, receiver: FakeWebhookReceiver
) -> None:
    receiver.answer_next(302)
    receiver.answer_next(307)
    ch = build(config(receiver.url), local(clock))
    try:
        results = await ch.send_batch([message(1), message(2)])
    finally:
        await ch.aclose()
    assert [(type(r), r.status) for r in results] == [  # type: ignore[union-attr]
        (DestinationRejected, 302),
        (DestinationRejected, 307),
    ]
    assert receiver.redirected_hits == 0


async def test_a_host_resolving_to_loopback_is_refused_unless_allowed(
    clock: ManualClock, receiver: FakeWebhookReceiver
) -> None:
    port = httpx.URL(receiver.url).port
    url = f"https://localhost:{port}/hook"
    ch = build(config(url), ChannelDeps(clock=clock, allow_private_targets=False))
    try:
        [result] = await ch.send_batch([message()])
    finally:
        await ch.aclose()
    assert type(result) is DestinationRejected and result.reason == "target_not_allowed"
    assert receiver.received == receiver.unverified == []


def test_plain_http_is_refused_at_build_unless_private_targets_are_allowed(
    clock: ManualClock,
) -> None:
    with pytest.raises(ConfigError, match="scheme"):
        build(config("http://hooks.example.com/x"), ChannelDeps(clock=clock))


async def test_tls_to_the_pinned_address_with_the_hosts_name(
    clock: ManualClock, tmp_path: Path
) -> None:
    certs = make_certificates(tmp_path, "hooks.test")

    class Resolver:
        async def resolve(self, host: str, port: int) -> list[str]:
            assert host == "hooks.test"
            return ["127.0.0.1"]

    async with serve_webhook_receiver(SECRET, **certs.server_options()) as receiver:
        port = httpx.URL(receiver.url).port
        deps = ChannelDeps(
            clock=clock,
            allow_private_targets=True,
            transport=httpx.AsyncHTTPTransport(verify=certs.client_context()),
        )
        ch = WebhookChannel(config(f"https://hooks.test:{port}/hook"), deps, resolver=Resolver())
        try:
            [result] = await ch.send_batch([message()])
        finally:
            await ch.aclose()
    assert isinstance(result, Delivered)
    [hit] = receiver.received
    assert hit.headers["host"] == f"hooks.test:{port}"


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_" + base64.b64encode(b"short").decode(),  # 5 bytes
        "whsec_not*base64!",
        "whsec_" + base64.b64encode(b"x" * 65).decode(),
    ],
)
def test_weak_or_malformed_secrets_fail_without_echoing_them(secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        secret_key(secret)
    assert secret.removeprefix("whsec_") not in str(info.value)


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer abc"},
        {"webhook-signature": "v1,x"},
        {"Content-Type": "text/plain"},
        {"X-Ok": "one\r\nInjected: yes"},
        {"Bad Name": "x"},
    ],
)
def test_static_headers_cannot_override_ours_or_carry_credentials(
    headers: dict[str, str],
) -> None:
    with pytest.raises(ValidationError):
        config("https://hooks.example.com/x", headers=headers)


@pytest.mark.parametrize("url", ["http://[::1", "not a url", "ftp://hooks.example.com/x"])
def test_urls_that_are_not_http_are_refused_by_validation(url: str) -> None:
    with pytest.raises(ValidationError, match="url"):
        config(url)


def test_a_plain_string_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="secret"):
        config("https://hooks.example.com/x", secret=SECRET)


@pytest.mark.parametrize(
    ("status", "kind", "reason"),
    [
        (200, Delivered, None),
        (204, Delivered, None),
        (301, DestinationRejected, "http_301"),
        (404, DestinationRejected, "http_404"),
        (410, DestinationRejected, "webhook_gone"),
        (429, DestinationUnavailable, "http_429"),
        (502, DestinationUnavailable, "http_502"),
        (504, DestinationUnavailable, "http_504"),
        (501, DestinationUnavailable, "http_501"),
    ],
)
def test_status_mapping(status: int, kind: type, reason: str | None) -> None:
    result = webhook_result(status, {}, "", now=0.0)
    assert type(result) is kind
    assert getattr(result, "reason", None) == reason
