"""The admin API app: audience definitions, sizes, members, exports, explain, erasure.

Every ``/v1`` route needs ``Authorization: Bearer <token>``; ``/docs``, ``/openapi.json`` and
``/healthz`` do not. Errors map to HTTP status in one place (:func:`error_response`): a bad
definition 422 ``{error, detail, field}``, unknown site or audience 404, an audience still
referred to 409, ClickHouse away 503 with ``Retry-After``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from leadback.admin.deps import (
    AdminContext,
    Ctx,
    Engine,
    Members,
    Repository,
    Site,
    SiteFilter,
    require_token,
)
from leadback.admin.members import (
    EXPORT_COLUMNS,
    MemberQueries,
    decode_cursor,
    encode_cursor,
    export_csv,
    export_jsonl,
)
from leadback.admin.tokens import admin_tokens
from leadback.audiences.compiler import compile_rule
from leadback.audiences.engine import AudienceEngine
from leadback.audiences.repository import NotFoundError, StoredAudience
from leadback.audiences.rules import (
    AudienceSpec,
    format_duration,
    parse_audience,
    parse_audiences,
    parse_duration,
    references,
)
from leadback.errors import (
    AuthError,
    BackpressureError,
    InvalidInputError,
    LeadbackError,
    RetryableError,
)
from leadback.events import format_ts
from leadback.logs import get_logger
from leadback.settings import Settings
from leadback.store.client import ClickHouseStore

log = get_logger(__name__)

RETRY_AFTER_S = 5
_STATUS = {"unauthorized": 401, "not_found": 404, "unknown_site": 404, "in_use": 409}
_EXAMPLE = {
    "name": "Cart abandoners",
    "ttl": "7d",
    "rule": {
        "all": [
            {
                "then_not": {
                    "did": {"event": "add_to_cart", "within": "7d"},
                    "then": {"event": "purchase"},
                }
            },
            {"idle": "1h"},
        ]
    },
}


# -- response models -------------------------------------------------------------------------


class ErrorBody(BaseModel):
    error: str = Field(description="stable reason code")
    detail: str = ""
    field: str | None = Field(None, description="where in the input, e.g. rule.all[0].idle")


class AudienceSummary(BaseModel):
    site: str
    id: str
    name: str
    version: int
    ttl: str | None
    product_level: bool
    members: int
    updated_at: str


class AudienceList(BaseModel):
    audiences: list[AudienceSummary]


class AudienceDetail(BaseModel):
    site: str
    id: str
    version: int
    updated_at: str
    size: int
    definition: dict[str, Any]


class WriteResult(BaseModel):
    site: str
    id: str
    version: int
    changed: bool
    status: Literal["created", "updated", "unchanged"]
    definition: dict[str, Any]


class ApplyResult(BaseModel):
    audiences: list[WriteResult]


class ValidateResult(BaseModel):
    valid: bool
    audiences: int


class DeleteResult(BaseModel):
    site: str
    id: str
    version: int


class SizeBucket(BaseModel):
    start: str
    end: str
    enters: int
    exits: int
    size: int = Field(description="members at the end of the bucket")


class SizeSeries(BaseModel):
    site: str
    id: str
    start: str
    end: str
    step: str
    buckets: list[SizeBucket]


class MemberOut(BaseModel):
    visitor_id: str = Field(description="the person: a visitor id, or u:<user_id>")
    entered_at: str
    products: list[str]
    version: int


class MembersPage(BaseModel):
    site: str
    id: str
    members: list[MemberOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null: done")


class Explanation(BaseModel):
    rule: str = Field(description="the rule as a SQL boolean over one person's events")
    members: str = Field(description="the statement that finds who qualifies among visitors")
    previous: str = Field(description="the statement that reads their stored memberships")


class ErasureResult(BaseModel):
    site: str
    persons: list[str]
    visitors: list[str]
    exits: int


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    404: {"model": ErrorBody, "description": "unknown site or audience"},
    422: {"model": ErrorBody, "description": "invalid input"},
    503: {"model": ErrorBody, "description": "ClickHouse unavailable; see Retry-After"},
}


# -- the one error mapping -------------------------------------------------------------------


def error_response(exc: Exception) -> JSONResponse:
    """Leadback error -> HTTP response."""
    if isinstance(exc, InvalidInputError):
        status = _STATUS.get(exc.reason, 422)
        body = {"error": exc.reason, "detail": exc.detail, "field": exc.field}
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        return JSONResponse(body, status_code=status, headers=headers)
    if isinstance(exc, RetryableError | BackpressureError):
        retry = getattr(exc, "retry_after", RETRY_AFTER_S)
        log.warning("admin request failed; retryable", error=str(exc))
        return JSONResponse(
            {"error": "unavailable", "detail": "storage unavailable; retry later", "field": None},
            status_code=503,
            headers={"Retry-After": str(max(1, round(retry)))},
        )
    log.error("admin request failed", error=str(exc), kind=type(exc).__name__)
    return JSONResponse({"error": "internal_error", "detail": "", "field": None}, status_code=500)


def _request_error(exc: RequestValidationError) -> InvalidInputError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    return InvalidInputError(
        "invalid_request", str(first.get("msg", "invalid request")), field=".".join(loc) or None
    )


# -- helpers ---------------------------------------------------------------------------------


def _ts(ms: int) -> str:
    return format_ts(ms / 1000)


def _iso(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return format_ts(dt.timestamp())


def _ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


async def _write(ctx: AdminContext, spec: AudienceSpec) -> WriteResult:
    try:
        await ctx.repository.get(spec.site, spec.id)
        existed = True
    except NotFoundError:
        existed = False
    stored, changed = await ctx.repository.put(spec)
    status: Literal["created", "updated", "unchanged"] = (
        "unchanged" if not changed else "updated" if existed else "created"
    )
    return WriteResult(
        site=spec.site,
        id=spec.id,
        version=stored.version,
        changed=changed,
        status=status,
        definition=stored.spec.to_document(),
    )


def _parse_document(body: Any) -> tuple[list[AudienceSpec], bool]:
    """One audience (errors name fields like ``rule.all[0].idle``), a list, or
    ``{audiences: [...]}`` (``audiences[2].rule...``); and whether it was a single one."""
    if isinstance(body, dict) and "audiences" not in body:
        return [parse_audience(body)], True
    return parse_audiences(body), False


async def _validate_together(
    ctx: AdminContext, specs: list[AudienceSpec], *, single: bool = False
) -> list[AudienceSpec]:
    """Check a set of definitions against each other and the stored ones, before writing any;
    return them in an order to write (an audience after those it refers to)."""

    def at(i: int, key: str) -> str:
        return key if single else f"audiences[{i}].{key}"

    for i, spec in enumerate(specs):
        ctx.check_site(spec.site, field=at(i, "site"))
    by_site: dict[str, dict[str, AudienceSpec]] = {}
    for stored in await ctx.repository.all():
        by_site.setdefault(stored.spec.site, {})[stored.spec.id] = stored.spec
    for spec in specs:
        by_site.setdefault(spec.site, {})[spec.id] = spec
    for i, spec in enumerate(specs):
        others = {k: v for k, v in by_site[spec.site].items() if k != spec.id}
        try:
            compile_rule(spec, others)
        except InvalidInputError as exc:
            raise InvalidInputError(exc.reason, exc.detail, field=at(i, "rule")) from exc
        users = sorted(o.id for o in others.values() if spec.id in references(o.rule))
        if spec.products is not None and users:
            raise InvalidInputError(
                "invalid_audience",
                f"{', '.join(users)} refer(s) to {spec.id!r}; it cannot become product-level",
                field=at(i, "products"),
            )
    ordered: list[AudienceSpec] = []
    pending = list(specs)
    while pending:  # compile_rule refused cycles, so every round places at least one
        waiting = {(s.site, s.id) for s in pending}
        ready = [s for s in pending if not {(s.site, r) for r in references(s.rule)} & waiting]
        ordered.extend(ready)
        pending = [s for s in pending if s not in ready]
    return ordered


def _detail(stored: StoredAudience, size: int) -> AudienceDetail:
    return AudienceDetail(
        site=stored.spec.site,
        id=stored.spec.id,
        version=stored.version,
        updated_at=_iso(stored.updated_at),
        size=size,
        definition=stored.spec.to_document(),
    )


# -- routes ----------------------------------------------------------------------------------

router = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses=_ERRORS)
AUDIENCES = "audiences"
MEMBERS = "members"
PRIVACY = "privacy"

Definition = Annotated[dict[str, Any], Body(examples=[{"site": "shop", "id": "x", **_EXAMPLE}])]
Document = Annotated[
    list[dict[str, Any]] | dict[str, Any],
    Body(
        description="one audience, a list of them, or {audiences: [...]}",
        examples=[{"audiences": [{"site": "shop", "id": "cart_abandoners", **_EXAMPLE}]}],
    ),
]


@router.get("/audiences", tags=[AUDIENCES], summary="List audiences with their sizes")
async def list_audiences(site: SiteFilter, repo: Repository, members: Members) -> AudienceList:
    """Active audiences (of one site with ``?site=``), each with its current member count."""
    stored = [a for a in await repo.all() if site is None or a.spec.site == site]
    sizes = await members.sizes(site)
    return AudienceList(
        audiences=[
            AudienceSummary(
                site=a.spec.site,
                id=a.spec.id,
                name=a.spec.name,
                version=a.version,
                ttl=format_duration(a.spec.ttl) if a.spec.ttl else None,
                product_level=a.spec.products is not None,
                members=sizes.get((a.spec.site, a.spec.id), 0),
                updated_at=_iso(a.updated_at),
            )
            for a in stored
        ]
    )


@router.post(
    "/audiences:apply", tags=[AUDIENCES], summary="Create or update several audiences at once"
)
async def apply_audiences(body: Document, ctx: Ctx) -> ApplyResult:
    """Validates every definition (and their ``in_audience`` references to each other and to
    stored audiences) before writing any; then writes them, referred-to audiences first."""
    specs, single = _parse_document(body)
    ordered = await _validate_together(ctx, specs, single=single)
    written = {(r.site, r.id): r for r in [await _write(ctx, s) for s in ordered]}
    if any(r.changed for r in written.values()):
        ctx.engine.changed.set()
    return ApplyResult(audiences=[written[(s.site, s.id)] for s in specs])


@router.post(
    "/audiences:validate",
    tags=[AUDIENCES],
    summary="Validate audiences without writing them",
    responses={422: {"model": ErrorBody, "description": "the first problem found"}},
)
async def validate_audiences(body: Document, ctx: Ctx) -> ValidateResult:
    """The same checks as ``audiences:apply``; nothing is written."""
    specs, single = _parse_document(body)
    await _validate_together(ctx, specs, single=single)
    return ValidateResult(valid=True, audiences=len(specs))


@router.put(
    "/sites/{site}/audiences/{audience_id}",
    tags=[AUDIENCES],
    summary="Create or update one audience",
    responses={201: {"model": WriteResult, "description": "created"}},
)
async def put_audience(
    site: Site, audience_id: str, body: Definition, ctx: Ctx, response: Response
) -> WriteResult:
    """The body is one definition; ``site`` and ``id`` may be left out (taken from the path)
    and must match it when given. 201 when created, 200 otherwise; an unchanged definition
    keeps its version."""
    doc = dict(body)
    for key, value in (("site", site), ("id", audience_id)):
        if doc.setdefault(key, value) != value:
            raise InvalidInputError(
                "invalid_audience", f"`{key}` differs from the path ({value!r})", field=key
            )
    spec = parse_audience(doc)
    await _validate_together(ctx, [spec], single=True)
    result = await _write(ctx, spec)
    if result.changed:
        ctx.engine.changed.set()
    if result.status == "created":
        response.status_code = 201
    return result


@router.get(
    "/sites/{site}/audiences/{audience_id}", tags=[AUDIENCES], summary="One audience and its size"
)
async def get_audience(
    site: Site, audience_id: str, repo: Repository, members: Members
) -> AudienceDetail:
    stored = await repo.get(site, audience_id)
    return _detail(stored, await members.size(site, audience_id))


@router.delete(
    "/sites/{site}/audiences/{audience_id}",
    tags=[AUDIENCES],
    summary="Delete an audience (its members exit)",
    responses={409: {"model": ErrorBody, "description": "another audience refers to it"}},
)
async def delete_audience(site: Site, audience_id: str, ctx: Ctx) -> DeleteResult:
    deleted = await ctx.repository.delete(site, audience_id)
    ctx.engine.changed.set()
    return DeleteResult(site=site, id=audience_id, version=deleted.version)


@router.get(
    "/sites/{site}/audiences/{audience_id}/explain",
    tags=[AUDIENCES],
    summary="The SQL an audience compiles to",
)
async def explain_audience(
    site: Site, audience_id: str, repo: Repository, engine: Engine
) -> Explanation:
    stored = await repo.get(site, audience_id)
    site_audiences = {a.spec.id: a.spec for a in await repo.site(site)}
    sql = engine.explain(stored.spec, stored.version, site_audiences)
    return Explanation(rule=sql["rule"], members=sql["members"], previous=sql["previous"])


@router.get(
    "/sites/{site}/audiences/{audience_id}/size",
    tags=[MEMBERS],
    summary="Audience size over time",
)
async def audience_size(
    site: Site,
    audience_id: str,
    repo: Repository,
    members: Members,
    engine: Engine,
    from_: Annotated[
        datetime | None, Query(alias="from", description="ISO 8601; default: 24 steps ago")
    ] = None,
    to: Annotated[datetime | None, Query(description="ISO 8601; default: now")] = None,
    step: Annotated[str, Query(description="bucket width: 15m, 1h, 1d, ...")] = "1h",
) -> SizeSeries:
    """Per bucket: enters, exits and the size at its end (changes before ``from`` count)."""
    try:
        step_ms = parse_duration(step)
    except ValueError as exc:
        raise InvalidInputError("invalid_request", str(exc), field="step") from exc
    await repo.get(site, audience_id)
    end = _ms(to) if to is not None else (engine.now_ms() // step_ms + 1) * step_ms
    start = _ms(from_) if from_ is not None else end - 24 * step_ms
    buckets = await members.size_over_time(site, audience_id, start=start, end=end, step=step_ms)
    return SizeSeries(
        site=site,
        id=audience_id,
        start=_ts(start),
        end=_ts(end),
        step=format_duration(step_ms),
        buckets=[
            SizeBucket(
                start=_ts(b.start),
                end=_ts(min(b.start + step_ms, end)),
                enters=b.enters,
                exits=b.exits,
                size=b.size,
            )
            for b in buckets
        ],
    )


@router.get(
    "/sites/{site}/audiences/{audience_id}/members",
    tags=[MEMBERS],
    summary="Members, a page at a time",
)
async def audience_members(
    site: Site,
    audience_id: str,
    repo: Repository,
    members: Members,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> MembersPage:
    """Ordered by person id; follow ``next_cursor`` until it is null."""
    after = decode_cursor(cursor)
    await repo.get(site, audience_id)
    page = await members.page(site, audience_id, after=after, limit=limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return MembersPage(
        site=site,
        id=audience_id,
        members=[
            MemberOut(
                visitor_id=m.person_id,
                entered_at=_ts(m.entered_at),
                products=m.products,
                version=m.version,
            )
            for m in page
        ],
        next_cursor=encode_cursor(page[-1].person_id) if more else None,
    )


@router.get(
    "/sites/{site}/audiences/{audience_id}/export",
    tags=[MEMBERS],
    summary="Export all members with contact hashes",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/csv": {}, "application/x-ndjson": {}},
            "description": "columns: " + ", ".join(EXPORT_COLUMNS),
        }
    },
)
async def export_members(
    site: Site,
    audience_id: str,
    repo: Repository,
    members: Members,
    fmt: Annotated[Literal["csv", "jsonl"], Query(alias="format")] = "csv",
) -> StreamingResponse:
    """Streams every member (read page by page): visitor_id, entered_at, products (``|``-joined
    in CSV), email_sha256, phone_sha256 (from any of the person's visitors). Encrypted contact
    details are never exported."""
    await repo.get(site, audience_id)
    body = (
        export_csv(members, site, audience_id)
        if fmt == "csv"
        else export_jsonl(members, site, audience_id)
    )
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    filename = f"{site}-{audience_id}.{fmt}"
    return StreamingResponse(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.delete(
    "/sites/{site}/visitors/{visitor_id}",
    tags=[PRIVACY],
    summary="Erase a visitor (and the person it belongs to)",
)
async def erase_visitor(site: Site, visitor_id: str, engine: Engine) -> ErasureResult:
    """Removes the person's events, identity links, contacts and memberships, after publishing
    an ``exit`` (reason ``erased``) for each audience they were in."""
    erased = await engine.erase(site, visitor_id=visitor_id, user_id=None)
    return ErasureResult(
        site=site, persons=erased.persons, visitors=erased.visitors, exits=erased.exits
    )


@router.delete(
    "/sites/{site}/users/{user_id}",
    tags=[PRIVACY],
    summary="Erase a user (and every visitor linked to them)",
)
async def erase_user(site: Site, user_id: str, engine: Engine) -> ErasureResult:
    """Like erasing a visitor, starting from the person of ``u:<user_id>``."""
    erased = await engine.erase(site, visitor_id=None, user_id=user_id)
    return ErasureResult(
        site=site, persons=erased.persons, visitors=erased.visitors, exits=erased.exits
    )


# -- the app ---------------------------------------------------------------------------------


def create_admin_app(settings: Settings, engine: AudienceEngine, store: ClickHouseStore) -> FastAPI:
    """The admin API around the engine and store of the process that owns ClickHouse."""
    tokens = tuple(t.encode() for t in admin_tokens(settings))
    app = FastAPI(
        title="Leadback admin",
        version="1",
        summary="Audience definitions, members, exports and erasure",
        openapi_tags=[
            {"name": AUDIENCES, "description": "definitions: rules as data, versioned"},
            {"name": MEMBERS, "description": "who is in an audience, and how that changed"},
            {"name": PRIVACY, "description": "erasure requests"},
        ],
    )
    app.state.admin = AdminContext(settings, engine, store, MemberQueries(store), tokens)
    app.include_router(router)

    @app.get("/healthz", summary="Liveness", include_in_schema=True)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.exception_handler(LeadbackError)
    async def _leadback_error(_: Request, exc: LeadbackError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_request_error(exc))

    return app
