"""``POST /v1/events``: a JSON batch of canonical events -> validated canonical events.

Body: ``{"batch": [event, ...]}`` or a bare JSON array. Each event is validated on its own;
one bad event does not reject the batch (the response lists per-event errors). Server-side
fields (``received_at``, truncated IP, ``bot``, ``visitor_id``, ``consent.tracking``) are set
here, never trusted from the client. Contact details in ``traits`` are replaced by hashes and
tokens (:func:`leadback.identity.contacts.protect_traits`); one that does not normalize makes
the event ``invalid_trait``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from leadback import events as ev
from leadback.enrich.bots import BotDetector
from leadback.enrich.consent import ConsentSignals, decide_consent
from leadback.enrich.ip import truncate_ip
from leadback.errors import InvalidInputError
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
    sent_at: datetime | None = None
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


def parse_batch(body: bytes) -> list[Any]:
    """The list of raw events in a request body; ``InvalidInputError`` if it is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError("invalid_json", f"body is not JSON: {exc}") from exc
    items = doc.get("batch") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise InvalidInputError("invalid_batch", 'expected {"batch": [...]} or a JSON array')
    return items


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
) -> ev.CanonicalEvent:
    """Validate one raw event of a batch authenticated for ``site_id``.

    ``cipher`` and ``default_phone_region`` protect the contact details in ``traits``.
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
    event_id = item.event_id or uuid7(int(now * 1000))
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
        "sent_at": ev.format_datetime(item.sent_at) if item.sent_at else None,
        "received_at": ev.format_ts(now),
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
