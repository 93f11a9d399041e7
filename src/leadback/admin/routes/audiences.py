"""Audience definitions: list, create or update (one, or a set at once), validate, read,
delete, explain. Sets are checked by :mod:`leadback.audiences.validation`, as
``leadback audiences apply --offline`` checks them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from leadback.admin.deps import Ctx, Engine, Members, Repository, Site, SiteFilter
from leadback.admin.schemas import (
    ApplyResult,
    AudienceDetail,
    AudienceList,
    AudienceStatus,
    AudienceStatusList,
    AudienceSummary,
    Definition,
    DeleteResult,
    Document,
    ErrorBody,
    Explanation,
    ValidateResult,
    WriteResult,
)
from leadback.audiences.durations import format_duration
from leadback.audiences.refresh import refresh_statuses, state_of
from leadback.audiences.repository import Written
from leadback.audiences.rules import parse_audience
from leadback.audiences.validation import AudienceSet, parse_audience_set
from leadback.errors import InvalidInputError
from leadback.events import format_datetime

TAG = "audiences"
router = APIRouter(tags=[TAG])


def _write_result(w: Written) -> WriteResult:
    spec = w.stored.spec
    return WriteResult(
        site=spec.site,
        id=spec.id,
        version=w.stored.version,
        changed=w.changed,
        status=w.status,
        definition=spec.to_document(),
    )


@router.get("/audiences", summary="List audiences with their sizes")
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
                updated_at=format_datetime(a.updated_at),
            )
            for a in stored
        ]
    )


@router.get("/audiences:status", summary="Which audiences are live, and backfill progress")
async def audience_statuses(site: SiteFilter, ctx: Ctx) -> AudienceStatusList:
    """Per active audience: ``live`` once its current version is evaluated as events arrive;
    before that the phase it is in (``backfill`` of its new signals over stored history, then
    ``evaluate`` of everyone of the site) with ranges done of the phase."""
    stored = [a for a in await ctx.repository.all() if site is None or a.spec.site == site]
    evaluated = await ctx.repository.evaluated_versions()
    latest = {(r.site, r.audience_id, r.version): r for r in await refresh_statuses(ctx.store)}
    found = []
    for a in stored:
        status = latest.get((a.spec.site, a.spec.id, a.version))
        state = state_of(a, evaluated.get((a.spec.site, a.spec.id)), status)
        live = state == "live"
        found.append(
            AudienceStatus(
                site=a.spec.site,
                id=a.spec.id,
                version=a.version,
                state=state,
                done=status.done if status else 0,
                total=status.total if status else 0,
                fraction=1.0 if live else status.fraction if status else 0.0,
                rows_read=status.rows_read if status else 0,
                started_at=format_datetime(status.started_at) if status else None,
                updated_at=format_datetime(status.updated_at) if status else None,
            )
        )
    return AudienceStatusList(audiences=found)


@router.post("/audiences:apply", summary="Create or update several audiences at once")
async def apply_audiences(body: Document, ctx: Ctx) -> ApplyResult:
    """Validates every definition (and their ``in_audience`` references to each other and to
    stored audiences) before writing any; then writes them, referred-to audiences first."""
    written = await ctx.repository.apply(parse_audience_set(body), sites=ctx.settings.sites)
    if any(w.changed for w in written):
        ctx.engine.changed.set()
    return ApplyResult(audiences=[_write_result(w) for w in written])


@router.post(
    "/audiences:validate",
    summary="Validate audiences without writing them",
    responses={422: {"model": ErrorBody, "description": "the first problem found"}},
)
async def validate_audiences(body: Document, ctx: Ctx) -> ValidateResult:
    """The same checks as ``audiences:apply``; nothing is written."""
    audiences = parse_audience_set(body)
    await ctx.repository.validate(audiences, sites=ctx.settings.sites)
    return ValidateResult(valid=True, audiences=len(audiences.specs))


@router.put(
    "/sites/{site}/audiences/{audience_id}",
    summary="Create or update one audience",
    responses={201: {"model": WriteResult, "description": "created"}},
)
async def put_audience(
    site: Site, audience_id: str, body: Definition, ctx: Ctx, response: Response
) -> WriteResult:
    """The body is one definition; ``site`` and ``id`` may be left out (taken from the path)
    and must match it when given. 201 when created, 200 otherwise; an unchanged definition
    keeps its version."""
    doc: dict[str, Any] = dict(body)
    for key, value in (("site", site), ("id", audience_id)):
        if doc.setdefault(key, value) != value:
            raise InvalidInputError(
                "invalid_audience", f"`{key}` differs from the path ({value!r})", field=key
            )
    one = AudienceSet([parse_audience(doc)], single=True)
    [written] = await ctx.repository.apply(one, sites=ctx.settings.sites)
    if written.changed:
        ctx.engine.changed.set()
    if written.status == "created":
        response.status_code = 201
    return _write_result(written)


@router.get("/sites/{site}/audiences/{audience_id}", summary="One audience and its size")
async def get_audience(
    site: Site, audience_id: str, repo: Repository, members: Members
) -> AudienceDetail:
    stored = await repo.get(site, audience_id)
    return AudienceDetail(
        site=stored.spec.site,
        id=stored.spec.id,
        version=stored.version,
        updated_at=format_datetime(stored.updated_at),
        size=await members.size(site, audience_id),
        definition=stored.spec.to_document(),
    )


@router.delete(
    "/sites/{site}/audiences/{audience_id}",
    summary="Delete an audience (its members exit)",
    responses={409: {"model": ErrorBody, "description": "another audience refers to it"}},
)
async def delete_audience(site: Site, audience_id: str, ctx: Ctx) -> DeleteResult:
    deleted = await ctx.repository.delete(site, audience_id)
    ctx.engine.changed.set()
    return DeleteResult(site=site, id=audience_id, version=deleted.version)


@router.get(
    "/sites/{site}/audiences/{audience_id}/explain", summary="The SQL an audience compiles to"
)
async def explain_audience(
    site: Site, audience_id: str, repo: Repository, engine: Engine
) -> Explanation:
    stored = await repo.get(site, audience_id)
    site_audiences = {a.spec.id: a.spec for a in await repo.site(site)}
    sql = engine.explain(stored.spec, stored.version, site_audiences)
    return Explanation(
        rule=sql["rule"], signals=sql["signals"], members=sql["members"], previous=sql["previous"]
    )
