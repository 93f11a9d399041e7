"""Campaign and site-policy definitions as a user writes them (``campaigns.yaml``, admin API).

A campaign sends its steps to the members of one audience, each step a wait after the previous
one (the first after entering), through one destination::

    id: cart-recovery
    site: demo
    audience: cart_abandoners
    holdout: 10            # percent of people (a stable hash of person and campaign) get nothing
    frequency: {max: 1, per: 24h}          # this campaign, per person
    quiet_hours: {start: "21:00", end: "08:00"}   # recipient's time zone; held until it ends
    steps:
      - {wait: 1h, destination: smtp, subject: "...", text: "...", html: "..."}
      - {wait: 24h, destination: twilio, text: "..."}

A site policy caps messages per channel across campaigns and gives the site's time zone and
default quiet hours. Every step is sent only while the person is still a member with the
membership version that enrolled them: an exit (a purchase, an erasure, a rule change) cancels
what is pending.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from leadback.audiences.durations import format_duration, parse_duration
from leadback.audiences.rules import AUDIENCE_ID

CAMPAIGN_ID = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
MAX_STEPS = 10

Duration = Annotated[int, Field(description="milliseconds; written 30m, 1h, 7d")]
ChannelName = Literal["email", "sms", "webpush", "webhook", "telegram"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _duration(v: object) -> object:
    return v if isinstance(v, int) and not isinstance(v, bool) else parse_duration(v)


class Cap(_Model):
    """At most ``max`` messages per ``per`` (a sliding window)."""

    max: int = Field(ge=1, le=1000)
    per: Duration

    @field_validator("per", mode="before")
    @classmethod
    def _per(cls, v: object) -> object:
        return _duration(v)


class QuietHours(_Model):
    """No sends from ``start`` to ``end`` (local wall-clock ``HH:MM``; may cross midnight)."""

    start: str
    end: str
    timezone: str | None = Field(
        None, description="used when the person's traits carry none; else the site's"
    )

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, v: str) -> str:
        if not _CLOCK.match(v):
            raise ValueError("a time of day is HH:MM, 00:00 to 23:59")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        return check_timezone(v) if v is not None else None

    def minutes(self) -> tuple[int, int]:
        """(start, end) as minutes after midnight."""
        h1, m1 = self.start.split(":")
        h2, m2 = self.end.split(":")
        return int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)


def check_timezone(v: str) -> str:
    """``v`` if it names an IANA time zone, else ``ValueError``."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{v!r} is not a known time zone") from exc
    return v


Template = Annotated[str, StringConstraints(max_length=100_000)]


class Step(_Model):
    """One message: a wait after the previous step (or the entry), a destination, templates."""

    wait: Duration = 0
    destination: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]
    subject: Template | None = Field(None, description="e-mail subject, push title")
    text: Template | None = Field(None, description="e-mail text part, SMS, Telegram, push body")
    html: Template | None = Field(None, description="e-mail HTML part")
    url: Template | None = Field(None, description="push click-through URL")
    data: dict[str, Any] | None = Field(None, description="webhook payload (strings templated)")

    @field_validator("wait", mode="before")
    @classmethod
    def _wait(cls, v: object) -> object:
        if v in (0, "0", "0s"):
            return 0
        return _duration(v)


class CampaignSpec(_Model):
    """One campaign definition as a user writes it."""

    id: Annotated[str, StringConstraints(pattern=CAMPAIGN_ID)]
    site: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    name: Annotated[str, StringConstraints(max_length=200)] = ""
    audience: Annotated[str, StringConstraints(pattern=AUDIENCE_ID)]
    enabled: bool = True
    holdout: float = Field(0.0, ge=0, le=100, description="percent of people held out")
    frequency: Cap | None = Field(None, description="per person, this campaign")
    on_cap: Literal["skip", "delay"] = Field(
        "skip", description="a capped step is skipped (recorded) or sent when the cap allows"
    )
    quiet_hours: QuietHours | Literal["none"] | None = Field(
        None, description="None: the site policy's; 'none': send at any hour"
    )
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)

    def to_document(self) -> dict[str, Any]:
        """The definition as data, durations written back as ``1h``-style strings."""
        doc: dict[str, Any] = durations_to_text(self.model_dump(mode="json", exclude_none=True))
        return doc


class SitePolicy(_Model):
    """Rules for every campaign of a site."""

    site: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    timezone: str = "UTC"
    quiet_hours: QuietHours | None = None
    channel_caps: dict[ChannelName, Cap] = Field(
        default_factory=dict, description="per person and channel, across campaigns"
    )

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        return check_timezone(v)

    def to_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = durations_to_text(self.model_dump(mode="json", exclude_none=True))
        return doc


def durations_to_text(value: Any, key: str = "") -> Any:
    """``wait``/``per`` milliseconds back to ``1h``-style text, everywhere in a document."""
    if isinstance(value, dict):
        return {k: durations_to_text(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [durations_to_text(v) for v in value]
    if key in ("wait", "per") and isinstance(value, int):
        return format_duration(value) if value else "0s"
    return value
