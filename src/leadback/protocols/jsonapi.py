"""``POST /v1/events``: a JSON batch of canonical events -> validated canonical events.

Body: ``{"batch": [event, ...], "sent_at": ...}`` or a bare JSON array. Each event is validated
on its own; one bad event does not reject the batch (the response lists per-event errors).
Server-side fields (``received_at``, truncated IP, ``bot``, ``visitor_id``,
``consent.tracking``) are set here, never trusted from the client. ``occurred_at`` comes from
the event's ``timestamp`` (the client's event time), corrected by its ``sent_at`` (else the
batch's) for the client's clock skew and clamped (:mod:`leadback.event_time`); ``leadback
events import`` uses the same function with the event time kept as given. Contact details in
``traits`` are replaced by hashes and tokens
(:func:`leadback.identity.contacts.protect_traits`); one that does not normalize makes the
event ``invalid_trait``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from leadback import events as ev
from leadback.enrich.bots import BotDetector
from leadback.enrich.consent import ConsentSignals, decide_consent
from leadback.enrich.ip import truncate_ip
from leadback.errors import InvalidInputError
from leadback.event_time import occurred_ms
from leadback.identity.contacts import ContactCipher, protect_traits
from leadback.ids import uuid7

IdStr = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]+$", min_length=1, max_length=ev.MAX_ID)
]
Short = Annotated[str, StringConstraints(max_length=ev.MAX_UTM)]
ClickId = Annotated[str, StringConstraints(max_length=ev.MAX_CLICK_ID)]
Url = Annotated[str, StringConstraints(max_length=ev.MAX_URL)]
Purpose = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UtmIn(_In):
    source: Short | None = None
    medium: Short | None = None
    campaign: Short | None = None
    term: Short | None = None
    content: Short | None = None


class ClickIdsIn(_In):
    gclid: ClickId | None = None
    fbclid: ClickId | None = None
    yclid: ClickId | None = None
    ttclid: ClickId | None = None
    msclkid: ClickId | None = None


class ContextIn(_In):
    user_agent: Annotated[str, StringConstraints(max_length=ev.MAX_USER_AGENT)] | None = None
    ip: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        None, description="the browser's IP when a server forwards events; truncated here"
    )
    language: Annotated[str, StringConstraints(max_length=ev.MAX_LANGUAGE)] | None = None


class ConsentIn(_In):
    status: Literal["granted", "denied"] | None = None
    purposes: Annotated[list[Purpose], Field(max_length=ev.MAX_PURPOSES)] | None = None
    gpc: bool = False
    dnt: bool = False


class EventIn(_In):
    """One event as a client sends it."""

    event_id: IdStr | None = None
    site_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    type: ev.EventType
    name: Annotated[str, StringConstraints(max_length=ev.MAX_NAME)] | None = None
    timestamp: datetime | None = Field(
        None,
        description="when the event happened, by the client's clock (ISO 8601; no zone means "
        "UTC). Corrected for the client's clock skew with sent_at: occurred_at = received_at "
        "- (sent_at - timestamp); without sent_at taken as it is; never after received_at "
        "nor more than LEADBACK_INGEST_EVENT_TIME_MAX_LAG_S (7 days) before it. "
        "Absent: occurred_at = received_at",
    )
    sent_at: datetime | None = Field(
        None,
        description="when the client sent the event, by the same clock as timestamp; "
        "default: the batch's sent_at",
    )
    anonymous_id: IdStr | None = None
    user_id: Annotated[str, StringConstraints(min_length=1, max_length=ev.MAX_USER_ID)] | None = (
        None
    )
    traits: dict[str, Any] = Field(default_factory=dict)
    url: Url | None = None
    referrer: Url | None = None
    utm: UtmIn = UtmIn()
    click_ids: ClickIdsIn = ClickIdsIn()
    properties: dict[str, Any] = Field(default_factory=dict)
    context: ContextIn = ContextIn()
    consent: ConsentIn = ConsentIn()


class BatchIn(_In):
    """A request body of ``POST /v1/events`` (a bare array of events is accepted too).

    Documents the body; the route reads it with :func:`parse_batch`, which validates each
    event on its own."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    batch: Annotated[list[EventIn], Field(description="the events; each is checked on its own")]
    sent_at: datetime | None = Field(
        None,
        description="when the client sent the batch (its clock): the sent_at of each event "
        "that has none",
    )


class Batch(NamedTuple):
    """The raw events of a request body and the batch's own ``sent_at``."""

    items: list[Any]
    sent_at: datetime | None


_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)


def parse_batch(body: bytes) -> Batch:
    """The raw events in a request body and the batch's ``sent_at``; ``InvalidInputError`` if
    it is not a batch."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError("invalid_json", f"body is not JSON: {exc}") from exc
    sent_at: datetime | None = None
    if isinstance(doc, dict):
        items = doc.get("batch")
        if doc.get("sent_at") is not None:
            try:
                sent_at = _DATETIME.validate_python(doc["sent_at"])
            except ValidationError as exc:
                msg = exc.errors()[0]["msg"]
                raise InvalidInputError(
                    "invalid_batch", f"sent_at: {msg}", field="sent_at"
                ) from exc
    else:
        items = doc
    if not isinstance(items, list):
        raise InvalidInputError("invalid_batch", 'expected {"batch": [...]} or a JSON array')
    return Batch(items, sent_at)


def canonical_from_json(
    raw: Any,
    *,
    site_id: str,
    now: float,
    peer_ip: str | None,
    header_user_agent: str | None,
    consent_default: Literal["granted", "denied"],
    honor_dnt: bool,
    bots: BotDetector,
    cipher: ContactCipher,
    default_phone_region: str | None,
    max_lag_ms: int | None,
    batch_sent_at: datetime | None = None,
) -> ev.CanonicalEvent:
    """Validate one raw event of a batch authenticated for ``site_id``.

    ``cipher`` and ``default_phone_region`` protect the contact details in ``traits``.
    ``max_lag_ms``: how far before ``now`` the event time may be placed
    (``LEADBACK_INGEST_EVENT_TIME_MAX_LAG_S``); ``None`` for an import, whose event time is
    kept as given (only never after ``now``): it is not corrected against the import's own
    receive time. ``batch_sent_at``: the batch's send time, for an event without its own.
    """
    if not isinstance(raw, dict):
        raise InvalidInputError("invalid_event", "an event must be a JSON object")
    try:
        item = EventIn.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInputError("invalid_event", f"{where}: {first['msg']}", field=where) from exc
    if item.site_id is not None and item.site_id != site_id:
        raise InvalidInputError(
            "site_mismatch",
            f"event is for {item.site_id!r}, the key for {site_id!r}",
            field="site_id",
        )
    if item.type == "custom" and not item.name:
        raise InvalidInputError("missing_name", "custom events need a name", field="name")
    sent = item.consent
    consent = decide_consent(
        ConsentSignals(status=sent.status, purposes=sent.purposes, gpc=sent.gpc, dnt=sent.dnt),
        default=consent_default,
        honor_dnt=honor_dnt,
    )
    anonymous_id = item.anonymous_id if consent["tracking"] else None
    if anonymous_id is None and item.user_id is None and item.anonymous_id is None:
        raise InvalidInputError(
            "missing_identity", "an event needs anonymous_id or user_id", field="anonymous_id"
        )
    traits = item.traits
    if traits:
        traits = protect_traits(traits, cipher, default_region=default_phone_region)
    received_ms = int(now * 1000)
    event_id = item.event_id or uuid7(received_ms)
    sent_at = item.sent_at or batch_sent_at
    if item.timestamp is None:
        occurred = received_ms
    elif max_lag_ms is None:
        occurred = occurred_ms(received_ms, ev.datetime_ms(item.timestamp), None, max_lag_ms=None)
        if occurred < 0:  # an import: no lower clamp, but the store keeps nothing before 1970
            raise InvalidInputError(
                "invalid_timestamp", "timestamp is before 1970", field="timestamp"
            )
    else:
        occurred = occurred_ms(
            received_ms,
            ev.datetime_ms(item.timestamp),
            None if sent_at is None else ev.datetime_ms(sent_at),
            max_lag_ms=max_lag_ms,
        )
    received_at = ev.format_ms(received_ms)
    user_agent = item.context.user_agent or header_user_agent
    if user_agent is not None:
        user_agent = user_agent[: ev.MAX_USER_AGENT]
    return {
        "schema_version": ev.SCHEMA_VERSION,
        "event_id": event_id,
        "site_id": site_id,
        "visitor_id": ev.visitor_id_for(anonymous_id, item.user_id, event_id),
        "type": item.type,
        "name": item.name,
        "sent_at": ev.format_datetime(sent_at) if sent_at else None,
        "received_at": received_at,
        "occurred_at": received_at if occurred == received_ms else ev.format_ms(occurred),
        "anonymous_id": anonymous_id,
        "user_id": item.user_id,
        "traits": traits,
        "url": item.url,
        "referrer": item.referrer,
        "utm": {
            "source": item.utm.source,
            "medium": item.utm.medium,
            "campaign": item.utm.campaign,
            "term": item.utm.term,
            "content": item.utm.content,
        },
        "click_ids": {
            "gclid": item.click_ids.gclid,
            "fbclid": item.click_ids.fbclid,
            "yclid": item.click_ids.yclid,
            "ttclid": item.click_ids.ttclid,
            "msclkid": item.click_ids.msclkid,
        },
        "properties": item.properties,
        "context": {
            "user_agent": user_agent,
            "ip": truncate_ip(item.context.ip or peer_ip or ""),
            "language": item.context.language,
        },
        "consent": consent,
        "bot": bots.is_bot(user_agent),
        "source": "json",
    }
