"""Ingest in process for unit tests: the real app over ASGI, a delivery that keeps what it gets."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from leadback.ingest.app import IngestApp
from leadback.settings import DEMO_WRITE_KEY


class CapturingDelivery:
    """Stands in for :class:`leadback.kafka.delivery.Delivery`: keeps what is submitted."""

    ready = True

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes]] = []

    def submit(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.records.append((topic, key, value))

    def set_latency_observer(self, observe: Any) -> None:
        return None

    def on(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(value) for t, _, value in self.records if t == topic]

    def keys(self, topic: str) -> list[bytes | None]:
        return [key for t, key, _ in self.records if t == topic]

    def assert_nothing_in_clear(self, clear: list[bytes]) -> None:
        assert self.records
        for _, _, value in self.records:
            for text in clear:
                assert text not in value, (text, value)


async def pixel(
    app: IngestApp,
    query: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
    method: str = "GET",
) -> bytes:
    """One pixel through the app's ASGI handler; the response body (the GIF)."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": "/p.gif",
        "query_string": query,
        "headers": headers if headers is not None else [(b"user-agent", b"Mozilla/5.0")],
        "client": ("203.0.113.7", 50000),
        "scheme": "https",
    }
    await app(scope, None, send)
    assert sent[0]["status"] == 200
    body: bytes = sent[1]["body"]
    return body


async def post(
    app: IngestApp, body: Any, key: str = DEMO_WRITE_KEY, *, raw: bytes | None = None
) -> httpx.Response:
    """``POST /v1/events`` with ``body`` as JSON (or ``raw`` bytes as they are)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
        return await client.post(
            "/v1/events",
            content=orjson.dumps(body) if raw is None else raw,
            headers={"X-Write-Key": key, "User-Agent": "agent/1.0"},
        )
