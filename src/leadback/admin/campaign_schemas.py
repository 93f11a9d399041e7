"""The admin API's bodies for campaigns, destinations, deliveries and scheduled steps (apart
from :mod:`leadback.admin.schemas`, which holds the audience ones and :class:`ErrorBody`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Body
from pydantic import BaseModel, Field

from leadback.dispatcher.statuses import DELIVERY_STATUSES

_EXAMPLE = {
    "destinations": [
        {
            "id": "smtp",
            "kind": "email",
            "host": "smtp.example.com",
            "username": "leadback",
            "password": {"env": "SMTP_PASSWORD"},
            "from_address": "shop@example.com",
        }
    ],
    "policies": [
        {
            "site": "shop",
            "timezone": "Europe/Berlin",
            "quiet_hours": {"start": "21:00", "end": "08:00"},
            "channel_caps": {"email": {"max": 3, "per": "7d"}},
        }
    ],
    "campaigns": [
        {
            "id": "cart-recovery",
            "site": "shop",
            "audience": "cart_abandoners",
            "holdout": 10,
            "steps": [
                {
                    "wait": "1h",
                    "destination": "smtp",
                    "subject": "You left something in your cart",
                    "text": "Come back: {{ products | join(', ') }}\n{{ unsubscribe_url }}",
                }
            ],
        }
    ],
}

# -- requests --------------------------------------------------------------------------------

CampaignsDocument = Annotated[
    dict[str, Any],
    Body(
        description="{destinations: [...], policies: [...], campaigns: [...]}, each optional; "
        "secrets are references ({env: NAME} or {file: /path}), never values",
        examples=[_EXAMPLE],
    ),
]

# -- responses -------------------------------------------------------------------------------


class AppliedItem(BaseModel):
    kind: Literal["destination", "policy", "campaign"]
    key: str = Field(description="destination id, policy site, or <site>/<campaign id>")
    version: int
    status: Literal["created", "updated", "unchanged"]


class CampaignApplyResult(BaseModel):
    changed: bool = Field(description="whether anything was written")
    items: list[AppliedItem] = Field(description="destinations, then policies, then campaigns")


class CampaignValidateResult(BaseModel):
    valid: bool
    destinations: int
    policies: int
    campaigns: int


class DeliveryCounts(BaseModel):
    """Deliveries by their current status."""

    sending: int = Field(0, description="the provider call is under way")
    sent: int = Field(0, description="the provider accepted it")
    retrying: int = Field(0, description="a transient failure; due again later")
    failed: int = Field(0, description="for good; also on the dead-letter topic")
    held_out: int = Field(0, description="in the campaign's control group")
    suppressed: int = Field(0, description="unsubscribed, bounced or blocked")
    no_consent: int = Field(0, description="no `marketing` consent")
    no_address: int = Field(0, description="no e-mail, phone, chat or subscription known")
    capped: int = Field(0, description="skipped by a frequency cap")
    cancelled: int = Field(0, description="an exit before the step was due, or no campaign")


class StepSummary(BaseModel):
    step: int = Field(description="0-based")
    wait: str = Field(description="after the previous step (the first: after entering)")
    destination: str
    channel: str | None = Field(description="the destination's kind; null if it is gone")


class CampaignSummary(BaseModel):
    site: str
    id: str
    name: str
    audience: str
    enabled: bool
    holdout: float
    version: int
    steps: list[StepSummary]
    deliveries: DeliveryCounts


class CampaignList(BaseModel):
    campaigns: list[CampaignSummary]


class CampaignDetail(CampaignSummary):
    definition: dict[str, Any] = Field(description="as applied, durations written 1h, 7d")


class CampaignDeleted(BaseModel):
    site: str
    id: str
    version: int = Field(description="the version that marks it deleted")


class DestinationOut(BaseModel):
    id: str
    kind: str
    definition: dict[str, Any] = Field(
        description="as applied; credentials appear as references ({env}/{file}), never values"
    )


class DestinationList(BaseModel):
    destinations: list[DestinationOut]


class Delivery(BaseModel):
    delivery_id: str
    site: str
    campaign: str
    person: str = Field(description="a visitor id, or u:<user_id>")
    membership_version: int
    step: int
    channel: str
    destination: str
    status: str = Field(description="the latest: one of " + ", ".join(DELIVERY_STATUSES))
    reason: str
    attempts: int
    http_status: int = Field(description="the provider's last answer (0: none)")
    response: str = Field(description="the provider's last answer, shortened")
    provider_id: str = Field(description="the provider's message id, once sent")
    first_at: str
    last_at: str


class DeliveryList(BaseModel):
    deliveries: list[Delivery] = Field(description="latest state of each, newest first")


class CampaignDeliveries(BaseModel):
    site: str
    campaign: str
    deliveries: DeliveryCounts
    total: int


class DeliverySummary(BaseModel):
    campaigns: list[CampaignDeliveries]


class ScheduledStep(BaseModel):
    campaign: str
    audience: str
    membership_version: int = Field(description="the membership that enrolled the person")
    step: int
    due_at: str
    state: str = Field(description="pending, done or cancelled")
    reason: str
    attempt: int
    products: list[str]
    entered_at: str | None = Field(description="when the audience change that enrolled them was")


class PersonSteps(BaseModel):
    site: str
    person: str
    steps: list[ScheduledStep]
