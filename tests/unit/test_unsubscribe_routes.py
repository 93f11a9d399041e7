"""One-click unsubscribe on ingest (RFC 8058) through the real app over ASGI: a GET never
unsubscribes, a POST does (and again), a bad token is a 400, and nothing ever redirects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from leadback.clock import ManualClock
from leadback.destinations.unsubscribe import unsubscribe_token, unsubscribe_url
from leadback.errors import BackpressureError
from leadback.events import event_key
from leadback.ingest.app import IngestApp, create_app
from leadback.settings import Settings, load_settings
from leadback.signed_tokens import TokenSigner
from tests.unit.ingest_kit import CapturingDelivery

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path)


@pytest.fixture
def delivery() -> CapturingDelivery:
    return CapturingDelivery()


@pytest.fixture
def app(settings: Settings, delivery: CapturingDelivery) -> IngestApp:
    return create_app(settings, delivery, clock=ManualClock(1_800_000_000.0))  # type: ignore[arg-type]


@pytest.fixture
def signer(app: IngestApp) -> TokenSigner:
    signer: TokenSigner = app.api.state.ctx.signer  # the key the dispatcher shares
    return signer


@pytest.fixture
async def client(app: IngestApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://ingest.test") as c:
        yield c


def token_for(signer: TokenSigner, channel: str = "email", person: str = "u:42") -> str:
    return unsubscribe_token(
        signer, site_id="demo", person_id=person, channel=channel, campaign_id="cart"
    )


def path(token: str) -> str:
    return unsubscribe_url("https://ingest.test", token).removeprefix("https://ingest.test")


def signals(settings: Settings, delivery: CapturingDelivery) -> list[dict[str, Any]]:
    return delivery.on(settings.kafka.topic_events)


def assert_plain_answer(response: httpx.Response) -> None:
    assert not response.is_redirect and "location" not in response.headers
    assert "set-cookie" not in response.headers
    assert response.headers["cache-control"] == "no-store"


async def test_opening_the_link_shows_a_button_and_unsubscribes_no_one(
    client: httpx.AsyncClient, signer: TokenSigner, settings: Settings, delivery: CapturingDelivery
) -> None:
    token = token_for(signer)
    for url in (path(token), path(token) + "/"):
        response = await client.get(url, headers=BROWSER)
        assert response.status_code == 200, url
        assert_plain_answer(response)
        assert response.headers["content-type"].startswith("text/html")
        assert '<form method="post"' in response.text
        assert "Stop receiving these e-mails?" in response.text
    assert signals(settings, delivery) == []


async def test_a_one_click_post_submits_a_suppression_signal_for_the_person(
    client: httpx.AsyncClient, signer: TokenSigner, settings: Settings, delivery: CapturingDelivery
) -> None:
    # What Gmail sends: multipart/form-data, no cookie, no auth, no Accept for HTML.
    response = await client.post(
        path(token_for(signer)), files={"List-Unsubscribe": (None, "One-Click")}
    )
    assert response.status_code == 200
    assert_plain_answer(response)
    assert response.text == "You are unsubscribed from these e-mails.\n"
    [signal] = signals(settings, delivery)
    assert signal["name"] == "leadback.suppressed"
    assert (signal["site_id"], signal["visitor_id"], signal["source"]) == ("demo", "u:42", "signal")
    assert signal["properties"] == {
        "subject": "person:u:42",
        "channel": "email",
        "reason": "unsubscribed",
        "campaign_id": "cart",
    }
    assert signal["received_at"] == "2027-01-15T08:00:00.000Z"
    assert delivery.keys(settings.kafka.topic_events) == [event_key("demo", "u:42")]


async def test_a_repeated_or_urlencoded_or_empty_post_answers_200_every_time(
    client: httpx.AsyncClient, signer: TokenSigner, settings: Settings, delivery: CapturingDelivery
) -> None:
    url = path(token_for(signer, channel="all"))
    urlencoded = await client.post(url, data={"List-Unsubscribe": "One-Click"})
    again = await client.post(url, data={"List-Unsubscribe": "One-Click"})
    button = await client.post(url + "/", headers=BROWSER)  # the page's form, or a bare POST
    for response in (urlencoded, again, button):
        assert response.status_code == 200
        assert_plain_answer(response)
    assert "You are unsubscribed" in button.text and "all our messages" in button.text
    assert button.headers["content-type"].startswith("text/html")
    sent = signals(settings, delivery)
    assert len(sent) == 3
    assert {s["properties"]["channel"] for s in sent} == {"all"}
    assert {s["properties"]["subject"] for s in sent} == {"person:u:42"}


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_forged_altered_or_foreign_token_is_a_400_and_changes_nothing(
    client: httpx.AsyncClient,
    signer: TokenSigner,
    settings: Settings,
    delivery: CapturingDelivery,
    method: str,
) -> None:
    good = token_for(signer)
    altered = good[:-2] + ("AA" if good[-2:] != "AA" else "BB")
    foreign = signer.sign("telegram", orjson.dumps({"s": "demo", "p": "u:42", "c": "email"}))
    other_key = token_for(TokenSigner(b"x" * 32))
    for token in (altered, foreign, other_key, "nonsense", "a" * 5000):
        response = await client.request(method, path(token))
        assert response.status_code == 400, token
        assert_plain_answer(response)
        if method == "POST":
            assert response.json()["error"] == "invalid_token"
        browser = await client.request(method, path(token), headers=BROWSER)
        assert browser.status_code == 400
        assert "This link is not valid" in browser.text
    assert signals(settings, delivery) == []


async def test_an_oversized_body_is_refused_without_unsubscribing(
    client: httpx.AsyncClient, signer: TokenSigner, settings: Settings, delivery: CapturingDelivery
) -> None:
    response = await client.post(path(token_for(signer)), content=b"x" * 20_000)
    assert response.status_code == 413
    assert signals(settings, delivery) == []


class FullDelivery(CapturingDelivery):
    def submit(self, topic: str, key: bytes | None, value: bytes) -> None:
        raise BackpressureError("buffers full", retry_after=2.0)


async def test_full_buffers_answer_503_with_retry_after(settings: Settings) -> None:
    app = create_app(settings, FullDelivery(), clock=ManualClock())  # type: ignore[arg-type]
    signer: TokenSigner = app.api.state.ctx.signer
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://ingest.test") as client:
        response = await client.post(
            path(token_for(signer)), data={"List-Unsubscribe": "One-Click"}
        )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"


async def test_the_routes_are_documented(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    post = spec["paths"]["/v1/unsubscribe/{token}"]["post"]
    assert {"200", "400", "413", "503"} <= set(post["responses"])
    assert set(spec["paths"]["/v1/unsubscribe/{token}"]["get"]["responses"]) >= {"200", "400"}
    assert "/v1/unsubscribe/{token}/" not in spec["paths"]
