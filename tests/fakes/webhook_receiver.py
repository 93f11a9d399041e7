"""A webhook receiver on a real local HTTP server that verifies every request the way a
Standard Webhooks consumer does: with the published ``standardwebhooks`` package
(``Webhook(secret).verify(body, headers)``: signature, ``webhook-id``, timestamp within 5
minutes of the wall clock).

Verified requests are kept in :attr:`FakeWebhookReceiver.received` (and answered 200, or with
what a test queued with :meth:`FakeWebhookReceiver.answer_next`: 429 with ``Retry-After``, 500,
410, a 302 to ``/elsewhere``, ...); requests that fail verification are answered 401 and kept in
:attr:`FakeWebhookReceiver.unverified`. ``/elsewhere`` counts the requests that followed a
redirect (there must be none).
"""

from __future__ import annotations

import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.http_server import serve_app


@dataclass
class ReceivedWebhook:
    path: str
    headers: dict[str, str]
    body: bytes
    payload: Any


@dataclass
class FakeWebhookReceiver:
    secret: str
    url: str = ""  # the hook's URL once served
    received: list[ReceivedWebhook] = field(default_factory=list)
    unverified: list[tuple[dict[str, str], bytes, str]] = field(default_factory=list)
    redirected_hits: int = 0
    _answers: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)

    def answer_next(self, status: int, headers: dict[str, str] | None = None) -> None:
        """Answer the next verified request with ``status`` (and ``headers``)."""
        self._answers.append((status, headers or {}))

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/hook", self._hook, methods=["POST"]),
                Route("/elsewhere", self._elsewhere, methods=["GET", "POST"]),
            ]
        )

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except WebhookVerificationError as exc:
            self.unverified.append((headers, body, str(exc)))
            return Response(json.dumps({"error": str(exc)}), status_code=401)
        self.received.append(ReceivedWebhook(request.url.path, headers, body, payload))
        if self._answers:
            status, extra = self._answers.popleft()
            if 300 <= status < 400:
                extra = {"Location": "/elsewhere", **extra}
            return Response(status_code=status, headers=extra)
        return Response(status_code=200)

    async def _elsewhere(self, request: Request) -> Response:
        self.redirected_hits += 1
        return Response(status_code=200)


@contextlib.asynccontextmanager
async def serve_webhook_receiver(secret: str, **tls: Any) -> AsyncIterator[FakeWebhookReceiver]:
    """A :class:`FakeWebhookReceiver` served on a free loopback port (``url`` set to its hook);
    ``tls``: uvicorn's ``ssl_certfile``/``ssl_keyfile``."""
    fake = FakeWebhookReceiver(secret)
    async with serve_app(fake.app(), **tls) as base:
        fake.url = f"{base}/hook"
        yield fake
