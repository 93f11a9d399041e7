"""Who is in an audience: its size over time, member pages, and a streamed export (the
queries are :class:`~leadback.admin.members.MemberQueries`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from leadback.admin.deps import Engine, Members, Repository, Site
from leadback.admin.members import (
    EXPORT_COLUMNS,
    decode_cursor,
    encode_cursor,
    export_csv,
    export_jsonl,
)
from leadback.admin.schemas import MemberOut, MembersPage, SizeBucket, SizeSeries
from leadback.audiences.durations import format_duration, parse_duration
from leadback.errors import InvalidInputError
from leadback.events import format_ts

TAG = "members"
router = APIRouter(tags=[TAG])


def _ts(ms: int) -> str:
    return format_ts(ms / 1000)


def _ms(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


@router.get("/sites/{site}/audiences/{audience_id}/size", summary="Audience size over time")
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
    # "now" is the engine's clock, the one its memberships are stamped with.
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


@router.get("/sites/{site}/audiences/{audience_id}/members", summary="Members, a page at a time")
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
