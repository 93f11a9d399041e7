"""The FastAPI part of ingest: ``POST /v1/events``, health, readiness, metrics.

Errors map to HTTP status in exactly one place (:func:`leadback.ingest.context.error_response`):
invalid input 400, auth 401, over-size 413, back-pressure 503 with ``Retry-After``.

What cannot be accepted goes to the invalid topic as a :mod:`leadback.invalid` record (which
keeps trait values and the write key off it).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from leadback.enrich.ip import client_ip
from leadback.errors import BackpressureError, InvalidInputError, LeadbackError
from leadback.events import event_key
from leadback.ingest.context import (
    Ctx,
    IngestContext,
    PayloadTooLarge,
    error_response,
    json_body_doc,
    read_body,
)
from leadback.ingest.sites import write_key_from_headers
from leadback.invalid import invalid_record, kafka_record
from leadback.protocols.jsonapi import BatchIn, canonical_from_json, parse_batch

router = APIRouter()


@router.post("/v1/events", openapi_extra=json_body_doc(BatchIn))
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
        body = await read_body(request, limits.max_batch_bytes)
        batch = parse_batch(body)
        items = batch.items
        if len(items) > limits.max_batch_events:
            raise PayloadTooLarge(
                f"{len(items)} events; at most {limits.max_batch_events} per batch"
            )
    except InvalidInputError as exc:
        _invalid(ctx, exc, site_id, request, ip, body, now)
        status = error_response(exc)
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
                    max_lag_ms=limits.event_time_max_lag_ms,
                    batch_sent_at=batch.sent_at,
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
        response = error_response(exc)
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
    """The FastAPI app with the routes above, the channels' routes and the one error mapping."""
    from leadback.ingest.channel_routes import CHANNEL_ROUTERS

    app = FastAPI(title="Leadback ingest", version="1", lifespan=lifespan)
    app.state.ctx = ctx
    app.include_router(router)
    for channel_router in CHANNEL_ROUTERS:
        app.include_router(channel_router)

    @app.exception_handler(LeadbackError)
    async def _leadback_error(_: Request, exc: LeadbackError) -> JSONResponse:
        return error_response(exc)

    return app
