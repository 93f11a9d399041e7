"""Campaigns, destinations and site policies (one document, applied as a whole), what the
dispatcher sent to whom (the delivery ledger), and what it has scheduled for one person.

Documents are checked by :mod:`leadback.campaigns.document`, as ``leadback campaigns apply
--offline`` checks them. The dispatcher notices written definitions by itself (it polls
their version stamp), so nothing here signals it. Destinations hold secret *references*
only: nothing here resolves a secret, so no credential can be answered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from leadback.admin.campaign_schemas import (
    AppliedItem,
    CampaignApplyResult,
    CampaignDeleted,
    CampaignDeliveries,
    CampaignDetail,
    CampaignList,
    CampaignsDocument,
    CampaignSummary,
    CampaignValidateResult,
    Delivery,
    DeliveryCounts,
    DeliveryList,
    DeliverySummary,
    DestinationList,
    DestinationOut,
    PersonSteps,
    ScheduledStep,
    StepSummary,
)
from leadback.admin.deps import Campaigns, Ctx, Deliveries, Site, SiteFilter, Steps
from leadback.admin.schemas import ErrorBody
from leadback.campaigns.document import parse_document
from leadback.campaigns.repository import StoredCampaign
from leadback.destinations.config import DestinationConfig
from leadback.destinations.registry import channel_kind
from leadback.dispatcher.statuses import DELIVERY_STATUSES, DeliveryStatus
from leadback.events import format_datetime, format_ts

TAG = "campaigns"
router = APIRouter(tags=[TAG])

Responses = dict[int | str, dict[str, Any]]
_INVALID: Responses = {
    422: {"model": ErrorBody, "description": "the first problem found, with its field"}
}
_NO_CAMPAIGN: Responses = {404: {"model": ErrorBody, "description": "unknown site or campaign"}}
_NO_SITE: Responses = {404: {"model": ErrorBody, "description": "unknown site"}}
_DOCUMENT_ERRORS: Responses = {
    **_INVALID,
    404: {"model": ErrorBody, "description": "a site the document names is not configured"},
}


def _counts(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], DeliveryCounts]:
    """``Ledger.summary`` rows -> counts per (site, campaign)."""
    found: dict[tuple[str, str], dict[str, int]] = {}
    for r in rows:
        if r["status"] in DELIVERY_STATUSES:
            found.setdefault((r["site"], r["campaign"]), {})[r["status"]] = r["count"]
    return {key: DeliveryCounts.model_validate(c) for key, c in found.items()}


def _summary(
    stored: StoredCampaign,
    destinations: Mapping[str, DestinationConfig],
    counts: Mapping[tuple[str, str], DeliveryCounts],
) -> dict[str, Any]:
    spec = stored.spec
    waits = [s["wait"] for s in spec.to_document()["steps"]]  # written as 1h, 0s
    steps = []
    for i, (step, wait) in enumerate(zip(spec.steps, waits, strict=True)):
        dest = destinations.get(step.destination)
        steps.append(
            StepSummary(
                step=i,
                wait=wait,
                destination=step.destination,
                channel=channel_kind(dest) if dest is not None else None,
            )
        )
    return {
        "site": spec.site,
        "id": spec.id,
        "name": spec.name,
        "audience": spec.audience,
        "enabled": spec.enabled,
        "holdout": spec.holdout,
        "version": stored.version,
        "steps": steps,
        "deliveries": counts.get((spec.site, spec.id), DeliveryCounts()),
    }


@router.post(
    "/campaigns:apply",
    summary="Create or update destinations, site policies and campaigns at once",
    response_description="what became of each item, in the document's order by kind",
    responses=_DOCUMENT_ERRORS,
)
async def apply_campaigns(body: CampaignsDocument, ctx: Ctx) -> CampaignApplyResult:
    """Validates the whole document (destinations and audiences referred to, templates, sites)
    before writing any of it; then writes what changed, destinations first. An item applied
    again unchanged keeps its version."""
    applied = await ctx.campaigns.apply(parse_document(body), sites=ctx.settings.sites)
    return CampaignApplyResult(
        changed=applied.changed,
        items=[
            AppliedItem.model_validate({"kind": k, "key": key, "version": v, "status": s})
            for k, key, v, s in applied.items
        ],
    )


@router.post(
    "/campaigns:validate",
    summary="Validate a campaigns document without writing it",
    response_description="the document is valid; how many items it holds",
    responses=_DOCUMENT_ERRORS,
)
async def validate_campaigns(body: CampaignsDocument, ctx: Ctx) -> CampaignValidateResult:
    """The same checks as ``campaigns:apply``; nothing is written."""
    doc = parse_document(body)
    await ctx.campaigns.validate(doc, sites=ctx.settings.sites)
    return CampaignValidateResult(
        valid=True,
        destinations=len(doc.destinations),
        policies=len(doc.policies),
        campaigns=len(doc.campaigns),
    )


@router.get(
    "/campaigns",
    summary="List campaigns with their steps and delivery counts",
    response_description="active campaigns, by site and id",
    responses=_NO_SITE,
)
async def list_campaigns(site: SiteFilter, repo: Campaigns, ledger: Deliveries) -> CampaignList:
    """Active campaigns (of one site with ``?site=``): each step's wait, destination and
    channel, and how many deliveries are in each status now."""
    stored = await repo.campaigns(site)
    destinations = await repo.destinations()
    counts = _counts(await ledger.summary(site))
    return CampaignList(
        campaigns=[CampaignSummary(**_summary(c, destinations, counts)) for c in stored]
    )


@router.get(
    "/campaigns/{site}/{campaign_id}",
    summary="One campaign: its definition, steps and delivery counts",
    response_description="the campaign's latest version",
    responses=_NO_CAMPAIGN,
)
async def get_campaign(
    site: Site, campaign_id: str, repo: Campaigns, ledger: Deliveries
) -> CampaignDetail:
    stored = await repo.campaign(site, campaign_id)
    counts = _counts(await ledger.summary(site))
    return CampaignDetail(
        **_summary(stored, await repo.destinations(), counts),
        definition=stored.spec.to_document(),
    )


@router.delete(
    "/campaigns/{site}/{campaign_id}",
    summary="Delete a campaign (its pending steps are cancelled)",
    response_description="deleted",
    responses=_NO_CAMPAIGN,
)
async def delete_campaign(site: Site, campaign_id: str, repo: Campaigns) -> CampaignDeleted:
    """Nothing more is sent for it: steps still pending are cancelled when they come due."""
    version = await repo.delete_campaign(site, campaign_id)
    return CampaignDeleted(site=site, id=campaign_id, version=version)


@router.get(
    "/destinations",
    summary="Destination definitions (secret references only)",
    response_description="every destination, by id",
)
async def list_destinations(repo: Campaigns) -> DestinationList:
    """Each destination as applied. Credentials are stored as references (``{env: NAME}``,
    ``{file: /path}``) and answered as such: no secret is ever read here."""
    return DestinationList(
        destinations=[
            DestinationOut(
                id=dest_id,
                kind=channel_kind(config),
                definition=config.model_dump(mode="json", exclude_none=True),
            )
            for dest_id, config in (await repo.destinations()).items()
        ]
    )


Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many, newest first")]


@router.get(
    "/deliveries",
    summary="Deliveries: the latest state of each, newest first",
    response_description="matching deliveries, newest first",
    responses=_NO_SITE,
)
async def list_deliveries(
    site: SiteFilter,
    ledger: Deliveries,
    campaign: Annotated[str | None, Query(max_length=64, description="campaign id")] = None,
    person: Annotated[
        str | None, Query(max_length=256, description="a visitor id, or u:<user_id>")
    ] = None,
    status: Annotated[DeliveryStatus | None, Query(description="latest status")] = None,
    limit: Limit = 100,
) -> DeliveryList:
    """Filtered by site, campaign, person and latest status; each delivery is one message
    (campaign, person, membership, step) with its attempts folded in."""
    rows = await ledger.query(
        site=site, campaign=campaign, person=person, status=status, limit=limit
    )
    return DeliveryList(deliveries=[_delivery(r) for r in rows])


def _delivery(row: Mapping[str, Any]) -> Delivery:
    out = dict(row)
    for key in ("first_at", "last_at"):  # the ledger gives ISO text; answer as everywhere else
        out[key] = format_datetime(datetime.fromisoformat(str(out[key])))
    return Delivery.model_validate(out)


@router.get(
    "/deliveries/summary",
    summary="Deliveries per campaign and status",
    response_description="counts per campaign, by site and campaign id",
    responses=_NO_SITE,
)
async def delivery_summary(site: SiteFilter, ledger: Deliveries) -> DeliverySummary:
    """Every campaign that has deliveries (deleted ones too), counted by current status."""
    counts = _counts(await ledger.summary(site))
    return DeliverySummary(
        campaigns=[
            CampaignDeliveries(
                site=s,
                campaign=c,
                deliveries=n,
                total=sum(n.model_dump().values()),
            )
            for (s, c), n in sorted(counts.items())
        ]
    )


@router.get(
    "/persons/{site}/{person}/steps",
    summary="Every campaign step scheduled for one person",
    response_description="the person's steps by campaign, membership and step",
    responses=_NO_SITE,
)
async def person_steps(site: Site, person: str, steps: Steps) -> PersonSteps:
    """Pending, done and cancelled steps of one person (a visitor id, or ``u:<user_id>``), by
    campaign, membership and step; an unknown person has none."""
    rows = await steps.of_person(site, person)
    return PersonSteps(
        site=site,
        person=person,
        steps=[
            ScheduledStep(
                campaign=r.campaign_id,
                audience=r.audience_id,
                membership_version=r.membership_version,
                step=r.step,
                due_at=format_ts(r.due_at / 1000),
                state=r.state,
                reason=r.reason,
                attempt=r.attempt,
                products=list(r.products),
                entered_at=format_ts(r.change_at / 1000) if r.change_at else None,
            )
            for r in rows
        ],
    )
