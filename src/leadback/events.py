"""The canonical event: one shape, whatever protocol brought it.

On the wire (``leadback.events.v1``) an event is a JSON object with *every* key below present,
in this order, ``null`` where absent; the Kafka key is ``site_id:visitor_id`` so one visitor's
events stay ordered in one partition. ``schema_version`` changes only with a new topic version.

``visitor_id`` is the id audiences are computed on: the first-party ``anonymous_id`` when there
is one, else ``u:<user_id>``, else ``e:<event_id>`` (a visitor without consent to be
recognised is not linked across events).

Times: ``received_at`` is the server's clock when ingest took the event; ``sent_at`` the
client's clock when it sent it (as the client says); ``occurred_at`` when the event happened,
the client's event time corrected for its clock skew and clamped by
:mod:`leadback.event_time`. Records written before ``occurred_at`` existed lack the key; the
store fills it with ``received_at``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypedDict

SCHEMA_VERSION: Final = 1

EventType = Literal[
    "page_view",
    "product_view",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "purchase",
    "signup",
    "lead",
    "identify",
    "alias",
    "custom",
]
EVENT_TYPES: Final[frozenset[str]] = frozenset(EventType.__args__)  # type: ignore[attr-defined]


# Field limits (characters); documented in docs/events.md.
MAX_ID: Final = 128
MAX_USER_ID: Final = 256
MAX_NAME: Final = 200
MAX_URL: Final = 4096
MAX_UTM: Final = 256
MAX_CLICK_ID: Final = 512
MAX_USER_AGENT: Final = 1024
MAX_LANGUAGE: Final = 35
MAX_PURPOSE: Final = 64
MAX_PURPOSES: Final = 32
MAX_PROPERTY_KEY: Final = 128

UTM_FIELDS: Final = ("source", "medium", "campaign", "term", "content")
CLICK_ID_FIELDS: Final = ("gclid", "fbclid", "yclid", "ttclid", "msclkid")


class Utm(TypedDict):
    source: str | None
    medium: str | None
    campaign: str | None
    term: str | None
    content: str | None


class ClickIds(TypedDict):
    gclid: str | None
    fbclid: str | None
    yclid: str | None
    ttclid: str | None
    msclkid: str | None


class Context(TypedDict):
    user_agent: str | None
    ip: str | None  # already truncated: IPv4 /24, IPv6 /48
    language: str | None


class Consent(TypedDict):
    status: Literal["granted", "denied"]
    purposes: list[str]
    gpc: bool  # Sec-GPC: 1 (or gpc=1) was sent
    dnt: bool  # DNT: 1 was sent
    tracking: bool  # whether a persistent visitor id may be used


class CanonicalEvent(TypedDict):
    schema_version: int
    event_id: str
    site_id: str
    visitor_id: str
    type: str
    name: str | None
    sent_at: str | None
    received_at: str
    occurred_at: str  # event time (leadback.event_time): audience windows are measured on it
    anonymous_id: str | None
    user_id: str | None
    traits: dict[str, Any]
    url: str | None
    referrer: str | None
    utm: Utm
    click_ids: ClickIds
    properties: dict[str, Any]
    context: Context
    consent: Consent
    bot: bool
    source: str


def empty_utm() -> Utm:
    return {"source": None, "medium": None, "campaign": None, "term": None, "content": None}


def empty_click_ids() -> ClickIds:
    return {"gclid": None, "fbclid": None, "yclid": None, "ttclid": None, "msclkid": None}


def visitor_id_for(anonymous_id: str | None, user_id: str | None, event_id: str) -> str:
    """The id an event is keyed and segmented by (see the module docstring)."""
    if anonymous_id:
        return anonymous_id
    if user_id:
        return f"u:{user_id}"
    return f"e:{event_id}"


def event_key(site_id: str, visitor_id: str) -> bytes:
    """The Kafka record key: ``site_id:visitor_id``."""
    return f"{site_id}:{visitor_id}".encode()


_TS_CACHE_SIZE = 4096
_ts_prefixes: dict[int, str] = {}


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)


def format_ts(ts: float) -> str:
    """Unix seconds -> ``2026-11-23T07:00:00.123Z`` (UTC, milliseconds).

    Callers pass their injected clock's time.
    """
    return format_ms(int(ts * 1000))


def format_ms(epoch_ms: int) -> str:
    """Unix milliseconds -> ``2026-11-23T07:00:00.123Z`` (UTC).

    Formatted seconds are cached: on the pixel path most calls share a few of them (the
    server's clock and the clients' send times).
    """
    second, ms = divmod(epoch_ms, 1000)
    prefix = _ts_prefixes.get(second)
    if prefix is None:
        if len(_ts_prefixes) >= _TS_CACHE_SIZE:
            _ts_prefixes.clear()
        prefix = datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _ts_prefixes[second] = prefix
    return f"{prefix}.{ms:03d}Z"


def datetime_ms(value: datetime) -> int:
    """A datetime (naive means UTC) -> Unix milliseconds, exactly (integer arithmetic: a float
    of seconds could turn ``.123`` into ``.122``)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _ONE_MS


def format_datetime(value: datetime) -> str:
    """A datetime (naive means UTC) -> canonical timestamp string."""
    return format_ms(datetime_ms(value))
