"""Bounce and complaint reports for the e-mail channel: ``POST /v1/email/bounces``.

Whoever learns of bounces (an SMTP relay's log processor, a provider's webhook relay) posts
them with the site's write key::

    {"bounces": [{"email": "bob@example.org", "type": "hard", "reason": "550 5.1.1 ..."}]}

A hard bounce or a complaint suppresses the address on the e-mail channel: a
``leadback.suppressed`` signal with subject ``email:<sha256 of the normalized address>``
(the hash ingest stores as ``email_sha256``), reason ``hard_bounce`` or ``complaint``. A soft
bounce (mailbox full, greylisting) is counted and ignored: the next send may succeed.

Only the hash reaches the events topic. The ``reason`` text is accepted but not kept: bounce
texts quote addresses. The whole body is checked before any signal is submitted, so a 400
changes nothing.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from leadback.errors import InvalidInputError, LeadbackError
from leadback.identity.contacts import normalize_email, sha256_hex
from leadback.ingest.context import Ctx, IngestContext, PayloadTooLarge, error_response, read_body
from leadback.ingest.signals import submit_signal
from leadback.ingest.sites import write_key_from_headers

router = APIRouter(tags=["channels"])

MAX_BOUNCES: Final = 1000
MAX_BODY: Final = 1_048_576  # 1000 reports with generous reasons
_REASONS: Final = {"hard": "hard_bounce", "complaint": "complaint"}


class Bounce(BaseModel):
    """One report about one address."""

    model_config = ConfigDict(extra="ignore")

    email: str = Field(max_length=320, description="the address the mail went to")
    type: Literal["hard", "soft", "complaint"] = Field(
        description="hard: the mailbox does not exist; soft: temporary; complaint: marked as spam"
    )
    reason: str = Field("", max_length=4000, description="the bounce text (not stored)")


class BounceReport(BaseModel):
    bounces: list[Bounce] = Field(max_length=MAX_BOUNCES)


class BounceCounts(BaseModel):
    received: int = Field(description="reports in the request")
    suppressed: int = Field(description="addresses suppressed (hard bounces and complaints)")
    hard: int
    complaint: int
    soft: int = Field(description="soft bounces: counted, nothing suppressed")


class ErrorBody(BaseModel):
    error: str
    detail: str


def _field(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "body"


def _parse(body: bytes) -> BounceReport:
    """The report, or ``InvalidInputError`` naming the field (never quoting a value)."""
    try:
        raw: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError("invalid_json", "the body is not JSON") from exc
    items = raw.get("bounces") if isinstance(raw, dict) else None
    if isinstance(items, list) and len(items) > MAX_BOUNCES:
        raise PayloadTooLarge(f"{len(items)} bounces; at most {MAX_BOUNCES} per request")
    try:
        report = BounceReport.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = _field(tuple(first["loc"]))
        raise InvalidInputError("invalid_body", f"{where}: {first['msg']}", field=where) from exc
    return report


def _subjects(report: BounceReport) -> list[tuple[str, str]]:
    """(``email:<sha256>``, reason) per hard bounce or complaint, once each."""
    seen: dict[tuple[str, str], None] = {}
    for index, bounce in enumerate(report.bounces):
        try:
            email = normalize_email(bounce.email)
        except InvalidInputError as exc:
            where = f"bounces[{index}].email"
            raise InvalidInputError("invalid_body", f"{where}: {exc.detail}", field=where) from exc
        reason = _REASONS.get(bounce.type)
        if reason is not None:
            seen[(f"email:{sha256_hex(email)}", reason)] = None
    return list(seen)


@router.post(
    "/v1/email/bounces",
    response_model=BounceCounts,
    responses={
        400: {"model": ErrorBody, "description": "invalid JSON or a field (named in detail)"},
        401: {"model": ErrorBody, "description": "missing or unknown write key"},
        413: {"model": ErrorBody, "description": f"over {MAX_BODY} bytes or {MAX_BOUNCES} reports"},
        503: {"model": ErrorBody, "description": "local buffers are full; retry after Retry-After"},
    },
)
async def post_bounces(
    request: Request,
    ctx: Ctx,
    authorization: Annotated[str | None, Header()] = None,
    x_write_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Report bounces and complaints for the site of the write key (``Authorization: Bearer``,
    Basic, or ``X-Write-Key``, as for ``POST /v1/events``). Body ``{"bounces": [{"email",
    "type": "hard"|"soft"|"complaint", "reason"}]}``, at most 1000 reports."""
    now = ctx.clock.now()
    try:
        site_id = ctx.sites.site_for_key(write_key_from_headers(authorization, x_write_key))
        report = _parse(await read_body(request, MAX_BODY))
        subjects = _subjects(report)
        for subject, reason in subjects:
            _suppress(ctx, site_id, subject, reason, now)
    except LeadbackError as exc:
        response = error_response(exc)
        ctx.stats.requests[("bounces", response.status_code)] += 1
        return response
    ctx.stats.requests[("bounces", 200)] += 1
    kinds = [b.type for b in report.bounces]
    counts = BounceCounts(
        received=len(kinds),
        suppressed=len(subjects),
        hard=kinds.count("hard"),
        complaint=kinds.count("complaint"),
        soft=kinds.count("soft"),
    )
    return JSONResponse(counts.model_dump())


def _suppress(ctx: IngestContext, site_id: str, subject: str, reason: str, now: float) -> None:
    submit_signal(
        ctx.delivery,
        ctx.settings.kafka.topic_events,
        site_id=site_id,
        # No person is known, only the address: the subject keys the signal, so one
        # address's reports stay in order on one partition.
        visitor_id=subject,
        name="leadback.suppressed",
        properties={"subject": subject, "channel": "email", "reason": reason},
        now=now,
    )
