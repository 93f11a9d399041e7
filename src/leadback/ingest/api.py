"""The FastAPI part of ingest: ``POST /v1/events``, health, readiness, metrics.

Errors map to HTTP status in exactly one place (:func:`_error_response`): invalid input 400,
auth 401, over-size 413, back-pressure 503 with ``Retry-After``.

What cannot be accepted goes to the invalid topic as a :mod:`leadback.invalid` record (which
keeps trait values and the write key off it).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from leadback.clock import Clock
from leadback.enrich.bots import BotDetector
from leadback.enrich.ip import client_ip, parse_networks
from leadback.errors import AuthError, BackpressureError, InvalidInputError, LeadbackError
from leadback.events import event_key
from leadback.identity.contacts import ContactCipher
from leadback.ingest.sites import SiteRegistry, write_key_from_headers
from leadback.ingest.stats import IngestStats
from leadback.invalid import invalid_record, kafka_record
from leadback.kafka.delivery import Delivery
from leadback.protocols.jsonapi import canonical_from_json, parse_batch
from leadback.settings import Settings


class PayloadTooLarge(InvalidInputError):
    """The body is over the configured limit."""

    def __init__(self, detail: str) -> None:
        super().__init__("payload_too_large", detail)


class IngestContext:
    """What the routes need, built once per app."""

    def __init__(
        self,
        settings: Settings,
        sites: SiteRegistry,
        delivery: Delivery,
        stats: IngestStats,
        registry: CollectorRegistry,
        bots: BotDetector,
        cipher: ContactCipher,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.sites = sites
        self.delivery = delivery
        self.stats = stats
        self.registry = registry
        self.bots = bots
        self.cipher = cipher
        self.clock = clock
        self.trusted = parse_networks(settings.ingest.trusted_proxies)


def _ctx(request: Request) -> IngestContext:
    ctx: IngestContext = request.app.state.ctx
    return ctx


Ctx = Annotated[IngestContext, Depends(_ctx)]


def _error_response(exc: LeadbackError) -> JSONResponse:
    if isinstance(exc, BackpressureError):
        return JSONResponse(
            {"error": "backpressure", "detail": str(exc)},
            status_code=503,
            headers={"Retry-After": str(max(1, round(exc.retry_after)))},
        )
    if isinstance(exc, AuthError):
        return JSONResponse({"error": exc.reason, "detail": exc.detail}, status_code=401)
    if isinstance(exc, PayloadTooLarge):
        return JSONResponse({"error": exc.reason, "detail": exc.detail}, status_code=413)
    if isinstance(exc, InvalidInputError):
        return JSONResponse({"error": exc.reason, "detail": exc.detail}, status_code=400)
    return JSONResponse({"error": "internal_error"}, status_code=500)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


router = APIRouter()


@router.post("/v1/events")
async def post_events(
    request: Request,
    ctx: Ctx,
    authorization: Annotated[str | None, Header()] = None,
    x_write_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Accept a JSON batch of canonical events for the site the write key belongs to.

    200 with per-event results for any well-formed batch (events that fail validation are
    listed in ``errors`` and go to the invalid topic); 400 bad JSON or batch shape, 401 bad
    key, 413 over size or over the event count, 503 when local buffers are full.
    """
    now = ctx.clock.now()
    limits = ctx.settings.ingest
    peer = request.client.host if request.client else None
    ip = client_ip(peer, request.headers.get("x-forwarded-for"), ctx.trusted)
    ua = request.headers.get("user-agent")
    body = b""
    site_id: str | None = None
    try:
        site_id = ctx.sites.site_for_key(write_key_from_headers(authorization, x_write_key))
        body = await _read_body(request, limits.max_batch_bytes)
        items = parse_batch(body)
        if len(items) > limits.max_batch_events:
            raise PayloadTooLarge(
                f"{len(items)} events; at most {limits.max_batch_events} per batch"
            )
    except InvalidInputError as exc:
        _invalid(ctx, exc, site_id, request, ip, body, now)
        status = _error_response(exc)
        ctx.stats.requests[("events", status.status_code)] += 1
        return status
    consent_default = ctx.sites.consent_defaults.get(site_id, limits.consent_default)
    errors: list[dict[str, Any]] = []
    event_ids: list[str | None] = []
    accepted = 0
    try:
        for index, raw in enumerate(items):
            try:
                event = canonical_from_json(
                    raw,
                    site_id=site_id,
                    now=now,
                    peer_ip=ip,
                    header_user_agent=ua,
                    consent_default=consent_default,
                    honor_dnt=limits.honor_dnt,
                    bots=ctx.bots,
                    cipher=ctx.cipher,
                    default_phone_region=ctx.settings.identity.default_phone_region,
                )
                value = orjson.dumps(event)
                if len(value) > limits.max_event_bytes:
                    raise InvalidInputError(
                        "event_too_large", f"{len(value)} bytes > {limits.max_event_bytes}"
                    )
            except InvalidInputError as exc:
                errors.append(
                    {"index": index, "reason": exc.reason, "detail": exc.detail, "field": exc.field}
                )
                event_ids.append(None)
                _invalid(ctx, exc, site_id, request, ip, orjson.dumps(raw), now)
                continue
            ctx.delivery.submit(
                ctx.settings.kafka.topic_events,
                event_key(event["site_id"], event["visitor_id"]),
                value,
            )
            accepted += 1
            event_ids.append(event["event_id"])
    except BackpressureError as exc:
        ctx.stats.accepted["json"] += accepted
        response = _error_response(exc)
        ctx.stats.requests[("events", response.status_code)] += 1
        return response
    ctx.stats.accepted["json"] += accepted
    ctx.stats.requests[("events", 200)] += 1
    return JSONResponse(
        {"accepted": accepted, "rejected": len(errors), "errors": errors, "event_ids": event_ids}
    )


def _invalid(
    ctx: IngestContext,
    exc: InvalidInputError,
    site_id: str | None,
    request: Request,
    ip: str | None,
    body: bytes,
    now: float,
) -> None:
    ctx.stats.invalid[exc.reason] += 1
    record = invalid_record(
        exc.reason,
        exc.detail,
        source="json",
        now=now,
        site_id=site_id,
        field=exc.field,
        method=request.method,
        path=request.url.path,
        body=body,
        user_agent=request.headers.get("user-agent"),
        ip=ip,
    )
    key, value = kafka_record(record)
    try:
        ctx.delivery.submit(ctx.settings.kafka.topic_invalid, key, value)
    except BackpressureError:
        ctx.stats.dropped += 1


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. No dependencies checked."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(ctx: Ctx) -> JSONResponse:
    """Readiness: 200 while events flow straight to Kafka, 503 while the broker is away."""
    d = ctx.delivery
    body = {
        "ready": d.ready,
        "queue_depth": d.queue_depth,
        "spool_bytes": d.spool_bytes,
        "spool_records": d.spool_records,
    }
    return JSONResponse(body, status_code=200 if d.ready else 503)


@router.get("/metrics")
async def metrics(ctx: Ctx) -> Response:
    """Prometheus exposition."""
    return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/")
async def index(ctx: Ctx) -> dict[str, Any]:
    """Where things are."""
    return {
        "service": "leadback-ingest",
        "pixel": "/p.gif?site=<site>&type=page_view&url=<url>",
        "events": "POST /v1/events",
        "docs": "/docs",
        "ready": ctx.delivery.ready,
    }


def build_api(ctx: IngestContext, lifespan: Any) -> FastAPI:
    """The FastAPI app with the routes above and the single error mapping."""
    app = FastAPI(title="Leadback ingest", version="1", lifespan=lifespan)
    app.state.ctx = ctx
    app.include_router(router)

    @app.exception_handler(LeadbackError)
    async def _leadback_error(_: Request, exc: LeadbackError) -> JSONResponse:
        return _error_response(exc)

    return app
