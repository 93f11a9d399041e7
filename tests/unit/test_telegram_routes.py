"""Ingest's Telegram routes in process: the deep link for a visitor, and the bot's webhook
turning ``/start <token>`` into a ``leadback.telegram_linked`` signal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from structlog.testing import capture_logs

from leadback.clock import ManualClock
from leadback.destinations.telegram_link import (
    telegram_start_token,
    telegram_visitor_id,
    telegram_webhook_path,
    telegram_webhook_secret,
)
from leadback.errors import BackpressureError
from leadback.identity.contacts import contact_cipher
from leadback.ingest.app import IngestApp, create_app
from leadback.settings import Settings, load_settings
from leadback.signed_tokens import TokenSigner
from tests.fakes.telegram import kicked_update, start_update
from tests.unit.ingest_kit import CapturingDelivery
from tests.unit.test_ingest_app import check, schema

VISITOR = "0123456789abcdef0123456789abcdef"
CHAT = 731234567
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


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
def signer(app: IngestApp) -> TokenSigner:
    signer: TokenSigner = app.api.state.ctx.signer
    return signer


async def request(app: IngestApp, method: str, url: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://ingest") as client:
        return await client.request(method, url, **kwargs)


async def post_update(
    app: IngestApp,
    update: Any,
    secret: str | None,
    site: str = "demo",
    destination: str = "tg-shop",
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if secret is not None:
        headers[SECRET_HEADER] = secret
    content = update if isinstance(update, bytes) else orjson.dumps(update)
    return await request(
        app, "POST", telegram_webhook_path(site, destination), content=content, headers=headers
    )


# --- the deep link ---------------------------------------------------------------------------


async def test_the_link_carries_the_visitors_signed_id(
    app: IngestApp, signer: TokenSigner, delivery: CapturingDelivery
) -> None:
    cookies = {"cookie": f"other=1; lb_vid={VISITOR}"}
    answer = await request(app, "GET", "/v1/telegram/tg-shop/link?bot=ShopBot", headers=cookies)
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    url = answer.json()["url"]
    assert url.startswith("https://t.me/ShopBot?start=")
    assert telegram_visitor_id(signer, url.rsplit("=", 1)[1]) == VISITOR

    moved = await request(
        app, "GET", "/v1/telegram/tg-shop/link?bot=ShopBot&redirect=1", headers=cookies
    )
    assert (moved.status_code, moved.headers["location"]) == (302, url)
    assert delivery.records == []  # a link is not an event


@pytest.mark.parametrize(
    ("path", "cookie", "error"),
    [
        ("/v1/telegram/tg-shop/link?bot=ShopBot", None, "no_visitor"),
        ("/v1/telegram/tg-shop/link?bot=ShopBot", "lb_vid=not-a-visitor-id", "no_visitor"),
        ("/v1/telegram/tg-shop/link?bot=ShopBot", f"lb_vidx={VISITOR}", "no_visitor"),
        ("/v1/telegram/tg-shop/link", f"lb_vid={VISITOR}", "invalid_bot"),
        ("/v1/telegram/tg-shop/link?bot=evil.example/x", f"lb_vid={VISITOR}", "invalid_bot"),
        ("/v1/telegram/Not%20An%20Id/link?bot=ShopBot", f"lb_vid={VISITOR}", "invalid_destination"),
    ],
)
async def test_no_link_without_a_visitor_or_a_bot(
    app: IngestApp, path: str, cookie: str | None, error: str
) -> None:
    headers = {"cookie": cookie} if cookie else {}
    answer = await request(app, "GET", path, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["error"] == error


# --- the webhook -----------------------------------------------------------------------------


async def test_start_with_a_token_links_the_chat(
    app: IngestApp, settings: Settings, signer: TokenSigner, delivery: CapturingDelivery
) -> None:
    token = telegram_start_token(signer, VISITOR)
    secret = telegram_webhook_secret(signer, "demo", "tg-shop")
    with capture_logs() as logs:
        answer = await post_update(app, start_update(1, CHAT, f"/start {token}"), secret)

    assert (answer.status_code, answer.content) == (200, b"")
    [signal] = delivery.on(settings.kafka.topic_events)
    assert (signal["name"], signal["source"], signal["site_id"]) == (
        "leadback.telegram_linked",
        "signal",
        "demo",
    )
    assert signal["visitor_id"] == VISITOR
    check(signal, schema("CanonicalEvent"))  # as docs/asyncapi.yaml publishes it
    assert delivery.keys(settings.kafka.topic_events) == [f"demo:{VISITOR}".encode()]
    properties = signal["properties"]
    assert properties.keys() == {"destination_id", "chat_enc"}
    assert properties["destination_id"] == "tg-shop"
    assert contact_cipher(settings).decrypt(properties["chat_enc"]) == str(CHAT)
    # Nothing about the chat in clear: not its id, not the user's name or username.
    delivery.assert_nothing_in_clear([str(CHAT).encode(), b"Ada", b"ada_l", token.encode()])
    assert str(CHAT) not in repr(logs) and token not in repr(logs)
    assert any(e["event"] == "telegram chat linked" for e in logs)


async def test_the_secret_header_must_be_this_webhooks(
    app: IngestApp, signer: TokenSigner, delivery: CapturingDelivery
) -> None:
    update = start_update(1, CHAT, f"/start {telegram_start_token(signer, VISITOR)}")
    for secret in [
        None,
        "",
        "wrong",
        telegram_webhook_secret(signer, "demo", "tg-other"),
        telegram_webhook_secret(signer, "other", "tg-shop"),
        telegram_webhook_secret(TokenSigner(b"z" * 32), "demo", "tg-shop"),
    ]:
        answer = await post_update(app, update, secret)
        assert answer.status_code == 401, secret
        assert answer.json()["error"] == "unauthorized"
    assert delivery.records == []


@pytest.mark.parametrize(
    "update",
    [
        start_update(2, CHAT, "/start"),  # opened the bot without a link
        start_update(3, CHAT, "/start not-a-valid-token"),
        start_update(4, CHAT, "/stop"),  # no visitor known from the chat alone
        start_update(5, CHAT, "hello"),
        kicked_update(6, CHAT),  # blocked: learnt at the next send (403)
        {"update_id": 7, "edited_message": {"text": "x"}},
        {"update_id": 8, "message": {"chat": {"id": "x"}, "text": "/start"}},
        {"no_update_id": True},
        [1, 2, 3],
        b"{not json",
        b"x" * 300_000,
    ],
)
async def test_other_updates_are_answered_200_and_dropped(
    app: IngestApp, signer: TokenSigner, delivery: CapturingDelivery, update: Any
) -> None:
    secret = telegram_webhook_secret(signer, "demo", "tg-shop")
    with capture_logs() as logs:
        answer = await post_update(app, update, secret)
    assert (answer.status_code, answer.content) == (200, b"")
    assert delivery.records == []
    assert [e["event"] for e in logs] == ["telegram update dropped"]
    assert str(CHAT) not in repr(logs)


async def test_a_group_start_and_an_unknown_site_are_dropped(
    app: IngestApp, signer: TokenSigner, delivery: CapturingDelivery
) -> None:
    token = telegram_start_token(signer, VISITOR)
    group = start_update(9, -100123, f"/start@ShopBot {token}", chat_type="group")
    secret = telegram_webhook_secret(signer, "demo", "tg-shop")
    assert (await post_update(app, group, secret)).status_code == 200
    private = start_update(10, CHAT, f"/start {token}")
    gone = telegram_webhook_secret(signer, "gone", "tg-shop")
    assert (await post_update(app, private, gone, site="gone")).status_code == 200
    assert delivery.records == []
    assert app.api.state.ctx.stats.invalid["telegram_unknown_site"] == 1

    # "/start@ShopBot <token>" in a private chat is the same command.
    named = start_update(11, CHAT, f"/start@ShopBot {token}")
    assert (await post_update(app, named, secret)).status_code == 200
    assert len(delivery.records) == 1


async def test_full_buffers_answer_503_so_telegram_redelivers(
    app: IngestApp, signer: TokenSigner, delivery: CapturingDelivery
) -> None:
    def full(*_: Any) -> None:
        raise BackpressureError("buffers full", retry_after=2.0)

    delivery.submit = full  # type: ignore[method-assign]
    update = start_update(1, CHAT, f"/start {telegram_start_token(signer, VISITOR)}")
    answer = await post_update(app, update, telegram_webhook_secret(signer, "demo", "tg-shop"))
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"


async def test_openapi_describes_both_routes(app: IngestApp) -> None:
    paths = (await request(app, "GET", "/openapi.json")).json()["paths"]
    link = paths["/v1/telegram/{destination_id}/link"]["get"]["responses"]
    hook = paths["/v1/telegram/{site_id}/{destination_id}/webhook"]["post"]["responses"]
    assert {"200", "302", "400"} <= link.keys()
    assert {"200", "401", "503"} <= hook.keys()
