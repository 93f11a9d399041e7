"""The admin API's bodies: what the routes answer (pydantic models, so OpenAPI shows them) and
the request bodies with their documented examples."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Body
from pydantic import BaseModel, Field

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

# -- requests --------------------------------------------------------------------------------

Definition = Annotated[dict[str, Any], Body(examples=[{"site": "shop", "id": "x", **_EXAMPLE}])]
Document = Annotated[
    list[dict[str, Any]] | dict[str, Any],
    Body(
        description="one audience, a list of them, or {audiences: [...]}",
        examples=[{"audiences": [{"site": "shop", "id": "cart_abandoners", **_EXAMPLE}]}],
    ),
]

# -- responses -------------------------------------------------------------------------------


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


class AudienceStatus(BaseModel):
    """Whether an audience's current version is live, and how far it is on its way."""

    site: str
    id: str
    version: int
    state: Literal["live", "backfill", "evaluate", "pending"] = Field(
        description="live: evaluated as events arrive; backfill: its new signals are being "
        "computed over stored history; evaluate: everyone of the site is being evaluated; "
        "pending: waiting for the segmenter to start on it"
    )
    done: int = Field(description="ranges done in the current phase")
    total: int = Field(description="ranges in the current phase")
    fraction: float = Field(description="done / total of the current phase (1 when live)")
    rows_read: int = Field(description="events read by the backfill so far")
    started_at: str | None = Field(description="when bringing this version live began")
    updated_at: str | None


class AudienceStatusList(BaseModel):
    audiences: list[AudienceStatus]


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


class Explanation(BaseModel):
    rule: str = Field(
        description="the rule as a SQL boolean over one person's signal columns (see signals)"
    )
    signals: str = Field(
        description="one line per signal column: what it keeps (every matching time, or the "
        "latest), per product or not, and the event test it applies when events are stored"
    )
    members: str = Field(description="the statement that finds who qualifies among visitors")
    previous: str = Field(description="the statement that reads their stored memberships")


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


class ErasureResult(BaseModel):
    site: str
    persons: list[str]
    visitors: list[str]
    exits: int
