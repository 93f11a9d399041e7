"""``GET /p.gif``: the pixel, as a raw ASGI handler (no framework routing on the hot path).

Always answers the 43-byte GIF with no-cache headers, whatever happens behind it: an
acceptable pixel becomes a canonical event on the events topic; anything else becomes a record
with a reason on the invalid topic. The visitor cookie is (re)set only when consent allows.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from leadback.clock import Clock
from leadback.enrich.bots import BotDetector
from leadback.enrich.ip import client_ip, parse_networks
from leadback.errors import BackpressureError, InvalidInputError
from leadback.events import event_key
from leadback.identity.contacts import ContactCipher
from leadback.ingest.sites import SiteRegistry
from leadback.ingest.stats import IngestStats
from leadback.invalid import invalid_record, kafka_record
from leadback.kafka.delivery import Delivery
from leadback.logs import get_logger
from leadback.protocols.pixel import PixelPolicy, PixelRequest, parse_pixel
from leadback.settings import Settings

log = get_logger(__name__)

PIXEL_PATH: Final = "/p.gif"

# The smallest transparent 1x1 GIF (the same 43 bytes as nginx's empty_gif).
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x01\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
assert len(GIF) == 43

_BASE_HEADERS = [
    (b"content-type", b"image/gif"),
    (b"content-length", b"43"),
    (b"cache-control", b"no-store, no-cache, must-revalidate, max-age=0"),
    (b"pragma", b"no-cache"),
    (b"expires", b"Thu, 01 Jan 1970 00:00:00 GMT"),
    (b"x-content-type-options", b"nosniff"),
]


def _raw_head(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers)


#: The pixel's whole HTTP/1.1 response up to the blank line, for servers that write bytes.
RAW_HEAD = _raw_head(_BASE_HEADERS)


def raw_response(set_cookie: bytes | None, *, head: bool, keep_alive: bool) -> bytes:
    """The pixel's complete HTTP/1.1 response as bytes (no per-request work when plain)."""
    if set_cookie is None:
        return _RAW[head, keep_alive]
    return b"".join(
        (
            RAW_HEAD,
            b"set-cookie: ",
            set_cookie,
            b"\r\n" if keep_alive else b"\r\nconnection: close\r\n",
            b"\r\n" if head else b"\r\n" + GIF,
        )
    )


_RAW = {
    (head, keep_alive): RAW_HEAD
    + (b"" if keep_alive else b"connection: close\r\n")
    + (b"\r\n" if head else b"\r\n" + GIF)
    for head in (False, True)
    for keep_alive in (False, True)
}
_START_PLAIN = {"type": "http.response.start", "status": 200, "headers": _BASE_HEADERS}
_BODY = {"type": "http.response.body", "body": GIF, "more_body": False}
_EMPTY_BODY = {"type": "http.response.body", "body": b"", "more_body": False}

Scope = dict[str, Any]


class PixelHandler:
    """The ASGI handler for the pixel route."""

    def __init__(
        self,
        settings: Settings,
        sites: SiteRegistry,
        delivery: Delivery,
        stats: IngestStats,
        bots: BotDetector,
        cipher: ContactCipher,
        clock: Clock,
    ) -> None:
        ing = settings.ingest
        self._clock = clock
        self._delivery = delivery
        self._stats = stats
        self._topic = settings.kafka.topic_events
        self._invalid_topic = settings.kafka.topic_invalid
        self._max_event = ing.max_event_bytes
        self._trusted = parse_networks(ing.trusted_proxies)
        self._policy = PixelPolicy(
            known_sites=sites.known,
            consent_default_by_site=sites.consent_defaults,
            consent_default=ing.consent_default,
            honor_dnt=ing.honor_dnt,
            max_query_bytes=ing.max_query_bytes,
            contact_cipher=cipher,
            default_phone_region=settings.identity.default_phone_region,
            event_time_max_lag_ms=ing.event_time_max_lag_ms,
        )
        self._bots = bots
        self._cookie_prefix = ing.cookie_name.encode() + b"="
        attrs = f"; Max-Age={ing.cookie_max_age_days * 86400}; Path=/"
        if ing.cookie_domain:
            attrs += f"; Domain={ing.cookie_domain}"
        # Third-party contexts need SameSite=None, which browsers accept only with Secure;
        # over plain HTTP (local development) fall back to Lax so the cookie still works.
        self._cookie_secure = (attrs + "; HttpOnly; Secure; SameSite=None").encode()
        self._cookie_plain = (attrs + "; HttpOnly; SameSite=Lax").encode()

    def handle(
        self,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        peer_ip: str | None,
        https: bool,
        *,
        head: bool = False,
    ) -> bytes | None:
        """One pixel request (lower-case header names) -> the ``Set-Cookie`` value to send,
        if any. Never raises for anything a client sends: the event is submitted, or a
        record with the reason goes to the invalid topic. ``head``: a ``HEAD`` request."""
        now = self._clock.now()
        ua = cookie = gpc = dnt = lang = xff = proto = None
        for name, value in headers:
            if name == b"user-agent":
                ua = value
            elif name == b"cookie":
                cookie = value
            elif name == b"accept-language":
                lang = value
            elif name == b"sec-gpc":
                gpc = value
            elif name == b"dnt":
                dnt = value
            elif name == b"x-forwarded-for":
                xff = value
            elif name == b"x-forwarded-proto":
                proto = value
        if self._trusted and xff is not None:
            ip = client_ip(peer_ip, xff.decode("latin-1"), self._trusted)
        else:
            ip = peer_ip
        req = PixelRequest(
            query=query,
            user_agent=ua.decode("latin-1") if ua is not None else None,
            ip=ip,
            cookie_visitor_id=self._cookie_value(cookie) if cookie else None,
            gpc_header=gpc.decode("latin-1") if gpc is not None else None,
            dnt_header=dnt.decode("latin-1") if dnt is not None else None,
            accept_language=lang.decode("latin-1") if lang is not None else None,
        )
        set_cookie: str | None = None
        stats = self._stats
        try:
            result = parse_pixel(req, self._policy, self._bots, now=now)
            event = result.event
            value = orjson.dumps(event)
            if len(value) > self._max_event:
                raise InvalidInputError("event_too_large", f"{len(value)} bytes")
            self._delivery.submit(
                self._topic, event_key(event["site_id"], event["visitor_id"]), value
            )
            stats.pixel_accepted += 1
            set_cookie = result.set_cookie_visitor_id
        except InvalidInputError as exc:
            self._reject(exc.reason, exc.detail, exc.field, req, now, head)
        except BackpressureError:
            stats.dropped += 1
            log.error("pixel dropped: memory queue and spool are full")
        except Exception as exc:
            log.exception("pixel handling failed")
            self._reject("internal_error", repr(exc), None, req, now, head)
        stats.pixel_requests += 1
        if set_cookie is None:
            return None
        secure = https or proto == b"https"
        return (
            self._cookie_prefix
            + set_cookie.encode()
            + (self._cookie_secure if secure else self._cookie_plain)
        )

    async def __call__(self, scope: Scope, send: Any) -> None:
        """The pixel as an ASGI handler (the server's inline fast path answers most)."""
        peer = scope.get("client")
        set_cookie = self.handle(
            scope.get("query_string", b""),
            scope["headers"],
            peer[0] if peer else None,
            scope.get("scheme") == "https",
            head=scope.get("method") == "HEAD",
        )
        if set_cookie is None:
            start: dict[str, Any] = _START_PLAIN
        else:
            start = {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_BASE_HEADERS, (b"set-cookie", set_cookie)],
            }
        await send(start)
        await send(_EMPTY_BODY if scope.get("method") == "HEAD" else _BODY)

    def _cookie_value(self, header: bytes) -> str | None:
        return cookie_value(header, self._cookie_prefix)

    def _reject(
        self,
        reason: str,
        detail: str,
        field: str | None,
        req: PixelRequest,
        now: float,
        head: bool,
    ) -> None:
        self._stats.invalid[reason] += 1
        record = invalid_record(
            reason,
            detail,
            source="pixel",
            now=now,
            site_id=_site_param(req.query),
            field=field,
            method="HEAD" if head else "GET",
            path=PIXEL_PATH,
            query=req.query,
            user_agent=req.user_agent,
            ip=req.ip,
        )
        key, value = kafka_record(record)
        try:
            self._delivery.submit(self._invalid_topic, key, value)
        except BackpressureError:
            self._stats.dropped += 1


def cookie_value(header: bytes, prefix: bytes) -> str | None:
    """The value of the first ``name=value`` pair of a ``Cookie`` header whose ``prefix`` is
    ``name=``: the same answer as splitting on ``;`` and stripping each pair, found with
    ``bytes.find`` (a browser sends a dozen cookies; only one is ours)."""
    at = header.find(prefix)
    while at != -1:
        start = header.rfind(b";", 0, at) + 1
        if not header[start:at].strip():  # only whitespace since the pair began
            end = header.find(b";", at)
            value = header[at + len(prefix) : end if end != -1 else len(header)]
            return value.rstrip().decode("latin-1")
        at = header.find(prefix, at + 1)
    return None


def _site_param(query: bytes) -> str | None:
    for part in query.split(b"&"):
        if part.startswith(b"site="):
            value = part[5:].decode("latin-1")[:64]
            return value or None
    return None
