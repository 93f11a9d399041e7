"""``POST /v1/events``: the client's ``timestamp`` becomes ``occurred_at``, corrected for the
client's clock skew by its ``sent_at`` (or the batch's) and clamped; the OpenAPI document
describes both fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from leadback.clock import ManualClock
from leadback.errors import ConfigError
from leadback.ingest.app import IngestApp, create_app
from leadback.settings import Settings, load_settings
from tests.unit.ingest_kit import CapturingDelivery, post

NOW = "2027-01-15T08:00:00.000Z"  # the clock below


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path, ingest={"event_time_max_lag_s": 86400})


@pytest.fixture
def delivery() -> CapturingDelivery:
    return CapturingDelivery()


@pytest.fixture
def app(settings: Settings, delivery: CapturingDelivery) -> IngestApp:
    clock = ManualClock(start=1_800_000_000.0)
    return create_app(settings, delivery, clock=clock)  # type: ignore[arg-type]


async def _times(
    app: IngestApp, delivery: CapturingDelivery, settings: Settings, body: Any
) -> list[tuple[str | None, str]]:
    response = await post(app, body)
    assert response.status_code == 200, response.text
    assert response.json()["rejected"] == 0, response.json()
    return [(e["sent_at"], e["occurred_at"]) for e in delivery.on(settings.kafka.topic_events)]


def _event(**times: str) -> dict[str, Any]:
    return {"type": "page_view", "anonymous_id": "a1", **times}


async def test_a_fast_client_clock_is_corrected_by_its_send_time(
    app: IngestApp, delivery: CapturingDelivery, settings: Settings
) -> None:
    # A phone one hour fast, which queued the event for ten minutes.
    body = [_event(timestamp="2027-01-15T08:50:00Z", sent_at="2027-01-15T09:00:00Z")]
    assert await _times(app, delivery, settings, body) == [
        ("2027-01-15T09:00:00.000Z", "2027-01-15T07:50:00.000Z")
    ]


async def test_the_batch_send_time_serves_events_without_their_own(
    app: IngestApp, delivery: CapturingDelivery, settings: Settings
) -> None:
    body = {
        "sent_at": "2027-01-15T10:00:00+02:00",  # = 08:00Z: a right clock, another zone
        "batch": [
            _event(timestamp="2027-01-15T09:59:30+02:00"),
            _event(timestamp="2027-01-15T09:00:00Z", sent_at="2027-01-15T09:00:05Z"),
        ],
    }
    assert await _times(app, delivery, settings, body) == [
        ("2027-01-15T08:00:00.000Z", "2027-01-15T07:59:30.000Z"),
        ("2027-01-15T09:00:05.000Z", "2027-01-15T07:59:55.000Z"),
    ]


async def test_times_are_clamped_to_now_and_the_allowed_lag(
    app: IngestApp, delivery: CapturingDelivery, settings: Settings
) -> None:
    body = [
        _event(timestamp="2027-01-16T08:00:00Z"),  # the future
        _event(timestamp="2026-01-15T08:00:00Z"),  # a year back: past the 1-day lag
        _event(timestamp="2027-01-15T07:00:00Z"),  # an hour back, no send time: as given
        _event(),  # no client time
    ]
    assert [t for _, t in await _times(app, delivery, settings, body)] == [
        NOW,
        "2027-01-14T08:00:00.000Z",
        "2027-01-15T07:00:00.000Z",
        NOW,
    ]


async def test_a_bad_batch_send_time_refuses_the_batch(app: IngestApp) -> None:
    response = await post(app, {"sent_at": "yesterday", "batch": [_event()]})
    assert response.status_code == 400
    assert response.json()["field"] == "sent_at"


async def test_openapi_documents_the_event_times(app: IngestApp) -> None:
    transport = httpx.ASGITransport(app=app.api)  # FastAPI serves everything but the pixel
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        spec = (await client.get("/openapi.json")).json()
    body = spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    schema = body["schema"]
    event = schema["properties"]["batch"]["items"]["properties"]
    assert "sent_at - timestamp" in event["timestamp"]["description"]
    assert "batch" in event["sent_at"]["description"]
    assert "sent_at" in schema["properties"]


def test_the_lag_is_a_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert load_settings(data_dir=tmp_path).ingest.event_time_max_lag_ms == 7 * 86_400_000
    monkeypatch.setenv("LEADBACK_INGEST_EVENT_TIME_MAX_LAG_S", "3600")
    assert load_settings(data_dir=tmp_path).ingest.event_time_max_lag_ms == 3_600_000
    monkeypatch.setenv("LEADBACK_INGEST_EVENT_TIME_MAX_LAG_S", "-1")
    with pytest.raises(ConfigError, match="event_time_max_lag_s"):
        load_settings(data_dir=tmp_path)
