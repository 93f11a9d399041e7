"""A web push service (RFC 8030 / 8291 / 8292) on a real local HTTP server.

It holds the browser's side of each subscription it hands out (a P-256 key pair and the 16-byte
auth secret, made by :meth:`FakePushService.subscribe`), and for every push it checks what real
push services check, answering as they do:

* ``TTL`` present, an integer and not 0 (pywebpush's default of 0 drops offline messages) -> 400
* ``Content-Encoding: aes128gcm`` -> 400; a body over 4096 bytes -> 413
* ``Authorization: vapid t=<JWT>, k=<key>`` missing -> 401; the ES256 signature not verifying
  with ``k``, ``aud`` not this service's origin, ``exp`` past or more than 24 h ahead, ``sub``
  not ``mailto:``/``https:``, or ``k`` not the applicationServerKey the subscription was made
  with -> 403
* an unknown subscription -> 404; an expired one -> 410

then DECRYPTS the payload with ``http_ece`` and the subscription's private key and records it
(:attr:`FakePushService.received`), answering 201 with a ``Location``. Tests queue other
answers (429 with ``Retry-After``, 500, ...) with :meth:`FakePushService.fail_next`, or make the
next request hang with :meth:`FakePushService.hang_next`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid.jwt import decode as decode_jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from leadback.destinations.base import PushSubscription
from tests.fakes.http_server import serve_app

MAX_BODY = 4096


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class BrowserKeys:
    """The browser's half of one subscription."""

    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    application_server_key: str | None  # the VAPID public key it subscribed with, if checked
    gone: int | None = None  # 404 or 410 once the subscription is dropped


@dataclass
class ReceivedPush:
    """One accepted push: its headers, the VAPID claims and the decrypted payload."""

    token: str
    headers: dict[str, str]
    claims: dict[str, Any]
    vapid_token: str
    payload: dict[str, Any]
    body_bytes: int


@dataclass
class FakePushService:
    now: Callable[[], float] = time.time
    origin: str = ""
    subscriptions: dict[str, BrowserKeys] = field(default_factory=dict)
    received: list[ReceivedPush] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (status, why)
    requests: int = 0
    _answers: deque[tuple[int, dict[str, str], str]] = field(default_factory=deque)
    _hang: asyncio.Event | None = None

    def subscribe(self, application_server_key: str | None = None) -> PushSubscription:
        """A new subscription, as ``PushManager.subscribe`` would give the page."""
        token = secrets.token_urlsafe(24)
        key = ec.generate_private_key(ec.SECP256R1())
        auth = secrets.token_bytes(16)
        self.subscriptions[token] = BrowserKeys(key, auth, application_server_key)
        public = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return PushSubscription(
            endpoint=f"{self.origin}/push/{token}", p256dh=b64url(public), auth=b64url(auth)
        )

    def drop(self, sub: PushSubscription, status: int = 410) -> None:
        """The browser unsubscribed (410) or the subscription expired (404)."""
        self.subscriptions[sub.endpoint.rsplit("/", 1)[1]].gone = status

    def fail_next(self, status: int, headers: dict[str, str] | None = None, body: str = "") -> None:
        """Answer the next request with ``status`` (after the checks pass)."""
        self._answers.append((status, headers or {}, body))

    def hang_next(self) -> asyncio.Event:
        """The next request waits until the returned event is set (a slow push service)."""
        self._hang = asyncio.Event()
        return self._hang

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/push/{token}", self._push, methods=["POST"])])

    def _refuse(self, status: int, why: str) -> Response:
        self.refused.append((status, why))
        return Response(json.dumps({"code": status, "error": why}), status_code=status)

    async def _push(self, request: Request) -> Response:
        self.requests += 1
        if self._hang is not None:
            hang, self._hang = self._hang, None
            await hang.wait()
        token = request.path_params["token"]
        keys = self.subscriptions.get(token)
        if keys is None:
            return self._refuse(404, "no such subscription")
        if keys.gone is not None:
            return self._refuse(keys.gone, "subscription expired or unsubscribed")
        ttl = request.headers.get("ttl")
        if ttl is None or not ttl.isdigit():
            return self._refuse(400, "TTL header missing")
        if int(ttl) == 0:
            return self._refuse(400, "TTL 0: the message would be dropped while offline")
        if request.headers.get("content-encoding") != "aes128gcm":
            return self._refuse(400, "Content-Encoding must be aes128gcm")
        urgency = request.headers.get("urgency", "normal")
        if urgency not in ("very-low", "low", "normal", "high"):
            return self._refuse(400, "bad Urgency")
        vapid = self._check_vapid(request.headers.get("authorization"), keys)
        if isinstance(vapid, Response):
            return vapid
        claims, jwt = vapid
        body = await request.body()
        if len(body) > MAX_BODY:
            return self._refuse(413, "payload too large")
        try:
            plain = http_ece.decrypt(
                body, private_key=keys.private_key, auth_secret=keys.auth, version="aes128gcm"
            )
        except http_ece.ECEException:
            return self._refuse(400, "payload does not decrypt")
        if self._answers:
            status, headers, text = self._answers.popleft()
            return Response(text, status_code=status, headers=headers)
        self.received.append(
            ReceivedPush(token, dict(request.headers), claims, jwt, json.loads(plain), len(body))
        )
        location = f"{self.origin}/m/{secrets.token_hex(8)}"
        return Response(status_code=201, headers={"Location": location})

    def _check_vapid(
        self, header: str | None, keys: BrowserKeys
    ) -> tuple[dict[str, Any], str] | Response:
        if not header:
            return self._refuse(401, "Authorization missing")
        scheme, _, params = header.partition(" ")
        if scheme.lower() != "vapid":
            return self._refuse(401, "Authorization scheme must be vapid")
        parts = dict(p.strip().split("=", 1) for p in params.split(",") if "=" in p)
        t, k = parts.get("t"), parts.get("k")
        if not t or not k:
            return self._refuse(401, "vapid needs t= and k=")
        try:
            claims: dict[str, Any] = decode_jwt(t, k)
        except (InvalidSignature, ValueError):
            return self._refuse(403, "JWT signature does not verify with k")
        now = self.now()
        if claims.get("aud") != self.origin:
            return self._refuse(403, f"aud {claims.get('aud')!r} is not {self.origin}")
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= now or exp > now + 86400:
            return self._refuse(403, "exp must be in the next 24 hours")
        sub = claims.get("sub", "")
        if not isinstance(sub, str) or not sub.startswith(("mailto:", "https://")):
            return self._refuse(403, "sub must be mailto: or https:")
        if keys.application_server_key and k != keys.application_server_key:
            return self._refuse(403, "k is not the key the browser subscribed with")
        return claims, t


@contextlib.asynccontextmanager
async def serve_push_service(
    now: Callable[[], float] = time.time,
) -> AsyncIterator[FakePushService]:
    """A :class:`FakePushService` served on a free loopback port (its ``origin`` set)."""
    fake = FakePushService(now=now)
    async with serve_app(fake.app()) as base:
        fake.origin = base
        yield fake
