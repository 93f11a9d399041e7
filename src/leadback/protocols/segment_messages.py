"""Segment's message shape (the Tracking API spec) -> the JSON API's event shape.

A Segment message (``track``, ``page``, ``screen``, ``identify``, ``alias``, ``group``; see
https://segment.com/docs/connections/spec/common/) becomes a raw event for
:func:`leadback.protocols.jsonapi.canonical_from_json`, which then validates it like any JSON
API event:

=======================================  ================================================
Segment                                  event
=======================================  ================================================
``messageId``                            ``event_id`` (one that is not ``[A-Za-z0-9_.:-]``,
                                         1..128, becomes ``seg-`` + a hash of it: the same
                                         message always gets the same id)
``anonymousId``, ``userId``              ``anonymous_id`` (hashed like ``messageId`` when
                                         it does not fit), ``user_id`` (a number as text)
``track`` + ``event``                    ``type`` by :data:`TRACK_TYPES` (``Product
                                         Viewed`` -> ``product_view``, ...), else
                                         ``custom``; ``name`` = ``event``
``page``, ``screen``                     ``page_view``; ``name`` = ``name``
``identify``                             ``identify``; ``traits``
``alias`` + ``previousId``               ``alias``; ``properties.previous_id``
``group`` + ``groupId``                  ``custom`` named ``group``; ``properties``:
                                         ``group_id`` and the group's ``traits``
``properties``                           ``properties``; ``url`` / ``referrer`` from them,
                                         else from ``context.page``
``timestamp``                            ``timestamp`` (Segment's event time, already
                                         corrected for clock skew); without it,
                                         ``receivedAt - (sentAt - originalTimestamp)``
                                         when all three are there, else
                                         ``originalTimestamp``
``sentAt``                               ``sent_at``
``context.userAgent`` / ``.ip`` /        ``context.user_agent`` / ``.ip`` /
``.locale``                              ``.language``
``context.campaign`` (``name``,          ``utm`` (``campaign``, ``source``, ...)
``source``, ``medium``, ``term``,
``content``)
=======================================  ================================================

Anything else (``integrations``, ``version``, ``channel``, ``writeKey``...) is left out.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from leadback import events as ev
from leadback.errors import InvalidInputError
from leadback.event_time import occurred_ms

SEGMENT_TYPES: Final = frozenset({"track", "page", "screen", "identify", "alias", "group"})

#: Segment's spec event names (e-commerce v2, B2B SaaS) -> canonical types.
TRACK_TYPES: Final[dict[str, str]] = {
    "Product Viewed": "product_view",
    "Product Added": "add_to_cart",
    "Product Removed": "remove_from_cart",
    "Checkout Started": "checkout",
    "Order Completed": "purchase",
    "Signed Up": "signup",
}

# Keys only Segment's shape has (the JSON API's are snake_case).
_SEGMENT_KEYS: Final = frozenset(
    {"messageId", "anonymousId", "userId", "originalTimestamp", "sentAt", "receivedAt"}
)
_ID: Final = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_DATETIME: TypeAdapter[datetime] = TypeAdapter(datetime)
_UTM: Final = {
    "name": "campaign",
    "source": "source",
    "medium": "medium",
    "term": "term",
    "content": "content",
}


def is_segment_message(raw: dict[str, Any]) -> bool:
    """Whether ``raw`` is in Segment's shape rather than the JSON API's."""
    return raw.get("type") in ("track", "page", "screen", "group") or not _SEGMENT_KEYS.isdisjoint(
        raw
    )


def _id(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    if _ID.match(text):
        return text
    return "seg-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _time(raw: dict[str, Any], key: str) -> datetime | None:
    value = raw.get(key)
    if value is None:
        return None
    try:
        return _DATETIME.validate_python(value)
    except ValidationError as exc:
        raise InvalidInputError(
            "invalid_timestamp", f"{key}: {exc.errors()[0]['msg']}", field=key
        ) from exc


def _event_time(raw: dict[str, Any]) -> datetime | str | None:
    """Segment's ``timestamp``, or what Segment would have made of the other three times."""
    if raw.get("timestamp") is not None:
        return _time(raw, "timestamp")
    original = _time(raw, "originalTimestamp")
    if original is None:
        return None
    sent, received = _time(raw, "sentAt"), _time(raw, "receivedAt")
    if sent is None or received is None:
        return original
    corrected = occurred_ms(
        ev.datetime_ms(received),
        ev.datetime_ms(original),
        ev.datetime_ms(sent),
        max_lag_ms=None,
    )
    return ev.format_ms(corrected)


def _type_and_name(raw: dict[str, Any]) -> tuple[str, str | None, dict[str, Any]]:
    kind = raw.get("type")
    properties = dict(_dict(raw.get("properties")))
    if kind == "track":
        event = raw.get("event")
        if not isinstance(event, str) or not event:
            raise InvalidInputError("missing_name", "a track call needs an event", field="event")
        return TRACK_TYPES.get(event, "custom"), event, properties
    if kind in ("page", "screen"):
        name = raw.get("name")
        return "page_view", name if isinstance(name, str) and name else None, properties
    if kind == "identify":
        return "identify", None, properties
    if kind == "alias":
        previous = _id(raw.get("previousId"))
        if previous is None:
            raise InvalidInputError(
                "invalid_event", "an alias call needs a previousId", field="previousId"
            )
        properties["previous_id"] = previous
        return "alias", None, properties
    if kind == "group":
        properties["group_id"] = raw.get("groupId")
        properties["traits"] = _dict(raw.get("traits"))
        return "custom", "group", properties
    raise InvalidInputError(
        "invalid_type", f"Segment type {str(kind)[:32]!r} is not one of {sorted(SEGMENT_TYPES)}"
    )


def event_from_segment(raw: dict[str, Any]) -> dict[str, Any]:
    """One Segment message -> a raw JSON API event (not validated yet; see the module doc).

    Raises :class:`InvalidInputError` for a message that cannot be mapped."""
    etype, name, properties = _type_and_name(raw)
    context = _dict(raw.get("context"))
    page = _dict(context.get("page"))
    campaign = _dict(context.get("campaign"))
    url = properties.get("url") or page.get("url")
    referrer = properties.get("referrer") or page.get("referrer")
    event: dict[str, Any] = {
        "event_id": _id(raw.get("messageId")),
        "type": etype,
        "name": name,
        "timestamp": _event_time(raw),
        "sent_at": _time(raw, "sentAt"),
        "anonymous_id": _id(raw.get("anonymousId")),
        "user_id": None if raw.get("userId") in (None, "") else str(raw["userId"]),
        "traits": _dict(raw.get("traits")) if etype == "identify" else {},
        "url": url if isinstance(url, str) else None,
        "referrer": referrer if isinstance(referrer, str) else None,
        "utm": {
            field: value
            for key, field in _UTM.items()
            if isinstance(value := campaign.get(key), str) and value
        },
        "properties": properties,
        "context": {
            "user_agent": context.get("userAgent"),
            "ip": context.get("ip"),
            "language": context.get("locale"),
        },
    }
    return event
