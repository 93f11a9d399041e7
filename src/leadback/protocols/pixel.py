"""The pixel protocol: ``GET /p.gif?<query>`` -> one canonical event.

This is the public pixel contract. The query is ``application/x-www-form-urlencoded`` UTF-8
(``+`` is a space; a malformed ``%`` escape such as ``%zz`` is kept as written, like
``urllib.parse.parse_qsl`` does). A repeated parameter: the first one wins. An empty value
counts as absent, except for ``p.*`` and ``tr.*``, where it is the empty string.

=====================================  ===================================================
parameter                              meaning
=====================================  ===================================================
``site`` (required)                    site id; must be a known site (``unknown_site``);
                                       missing or empty -> ``missing_site``
``type`` (alias ``t``)                 one of ``events.EVENT_TYPES``; default
                                       ``page_view``; else ``invalid_type``
``name`` (alias ``n``)                 event name, <= ``MAX_NAME``; required when
                                       ``type=custom`` (``missing_name``)
``eid``                                client event id, ``[A-Za-z0-9_.:-]{1,128}`` else
                                       ``invalid_event_id``; absent -> a server UUIDv7
``aid``                                anonymous id kept by a first-party tag,
                                       ``[A-Za-z0-9_.:-]{1,128}`` else
                                       ``invalid_anonymous_id``
``uid``                                user id, 1..256 printable characters
                                       (``field_too_long`` / ``invalid_user_id``)
``url``, ``ref``                       page URL and referrer, <= ``MAX_URL``
``utm_source`` ``utm_medium``          UTM, each <= ``MAX_UTM``; when absent, taken from
``utm_campaign`` ``utm_term``          the query string of ``url`` (cut to the limit)
``utm_content``
``gclid`` ``fbclid`` ``yclid``         click ids, each <= ``MAX_CLICK_ID``; when absent,
``ttclid`` ``msclkid``                 taken from the query string of ``url``
``ts``                                 client send time, Unix milliseconds (digits only,
                                       up to year 9999) -> ``sent_at``; else
                                       ``invalid_timestamp``
``lang``                               language, <= ``MAX_LANGUAGE``; absent -> the first
                                       tag of ``Accept-Language`` (cut to the limit)
``consent``, ``gpc``                   consent and Global Privacy Control, see
                                       :mod:`leadback.enrich.consent`
``p.<key>``                            a property; key ``[A-Za-z0-9_.-]{1,128}`` else
                                       ``invalid_property``. Values are typed: ``true`` /
                                       ``false`` -> bool, an integer (no leading zero,
                                       <= 18 digits) -> int, a plain decimal (``12.50``)
                                       -> float, anything else stays a string
``pid`` ``cat``                        short for ``p.product_id``, ``p.category`` (strings)
``val``                                short for ``p.value``: a finite number -> float
``cur``                                short for ``p.currency``: 3 letters, upper-cased
``qty``                                short for ``p.quantity``: digits -> int
``tr.<key>``                           a trait (contact details, for ``identify``); key as
                                       for ``p.``, values stay strings (``invalid_trait``).
                                       Contact details (``tr.email``, ``tr.phone``, ...)
                                       are replaced by hashes and tokens, see
                                       :func:`leadback.identity.contacts.protect_traits`;
                                       one that does not normalize is ``invalid_trait``
anything else                          ignored (cache busters such as ``_``, ``cb``, ``r``)
=====================================  ===================================================

A full name wins over its alias, wherever each stands (``type`` over ``t``, ``name`` over
``n``, ``p.value`` over ``val``); an invalid alias value is ``invalid_property``.
Every over-long field is ``field_too_long`` with ``field`` set to the parameter. A query over
``max_query_bytes`` is ``query_too_long``; one that is not UTF-8 after percent-decoding is
``bad_encoding``. Checks run in this order: size, encoding, site, then the other parameters.

Server side: ``received_at`` is the caller's ``now`` (ingest's clock), and so is
``occurred_at`` (a pixel fires when its event happens: see :mod:`leadback.event_time`);
``context.ip`` is the truncated client IP (never the whole one); ``bot`` comes from the user
agent. The visitor cookie is used and refreshed only when consent allows tracking: then
``anonymous_id`` is ``aid``, else a valid cookie id, else a new id, and the cookie is (re)set
to it unless it is an ``aid`` that is not a Leadback visitor id. Without tracking,
``anonymous_id`` is null, no cookie is set, and a cookie sent is ignored: a visitor who
refused must not be linked across events.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from leadback import events as ev
from leadback.enrich.bots import BotDetector
from leadback.enrich.consent import decide_consent, signals_from_query
from leadback.enrich.ip import truncate_ip
from leadback.errors import InvalidInputError
from leadback.event_time import DEFAULT_MAX_LAG_MS, occurred_ms
from leadback.identity.contacts import ContactCipher, protect_traits
from leadback.ids import is_visitor_id, new_visitor_id, uuid7
from leadback.protocols.pixel_attribution import attribution, too_long
from leadback.protocols.query_string import parse_query

#: Every ``reason`` :func:`parse_pixel` can raise.
PIXEL_REASONS: Final = frozenset(
    {
        "query_too_long",
        "bad_encoding",
        "missing_site",
        "unknown_site",
        "invalid_type",
        "missing_name",
        "invalid_event_id",
        "invalid_anonymous_id",
        "invalid_user_id",
        "field_too_long",
        "invalid_timestamp",
        "invalid_consent",
        "invalid_property",
        "invalid_trait",
    }
)

_ID_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")
_KEY_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_MAX_TS_MS: Final = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_MAX_INT_DIGITS: Final = 18  # always fits a signed 64-bit integer (JSON consumers, orjson)


@dataclass(slots=True)
class PixelRequest:
    """What the pixel parser needs from one HTTP request."""

    query: bytes  # raw query string from the ASGI scope (no leading '?')
    user_agent: str | None
    ip: str | None  # client IP, NOT yet truncated
    cookie_visitor_id: str | None  # the visitor cookie's value if sent (may be junk)
    gpc_header: str | None
    dnt_header: str | None
    accept_language: str | None


@dataclass(frozen=True, slots=True)
class PixelPolicy:
    """Deployment settings the parser applies."""

    known_sites: frozenset[str]
    consent_default_by_site: Mapping[str, Literal["granted", "denied"]]  # per-site override
    consent_default: Literal["granted", "denied"]
    honor_dnt: bool
    max_query_bytes: int
    contact_cipher: ContactCipher  # encrypts e-mail and phone traits
    default_phone_region: str | None = None  # for phone traits without +<country code>
    event_time_max_lag_ms: int = DEFAULT_MAX_LAG_MS  # LEADBACK_INGEST_EVENT_TIME_MAX_LAG_S


@dataclass(slots=True)
class PixelResult:
    event: ev.CanonicalEvent
    set_cookie_visitor_id: str | None  # the id to (re)set in the cookie; None = no cookie


# "%XX" -> the byte, for every hex pair in either case; the character when it is ASCII.
def _limited(params: dict[str, str], field: str, limit: int) -> str | None:
    value = params.get(field)
    if not value:
        return None
    if len(value) > limit:
        raise too_long(field, limit)
    return value


def _is_id(value: str) -> bool:
    return len(value) <= ev.MAX_ID and _ID_CHARS.issuperset(value)


def _is_key(key: str) -> bool:
    return 0 < len(key) <= ev.MAX_PROPERTY_KEY and _KEY_CHARS.issuperset(key)


def _is_digits(value: str) -> bool:
    return value.isascii() and value.isdigit()


def _typed(value: str) -> Any:
    """A property value: bool, int, float or the string itself (see the module docstring)."""
    if value == "true":
        return True
    if value == "false":
        return False
    if not value or not value.isascii():
        return value
    body = value[1:] if value[0] == "-" else value
    whole, dot, fraction = body.partition(".")
    if not whole.isdigit() or (len(whole) > 1 and whole[0] == "0"):
        return value
    if not dot:
        return int(value) if len(whole) <= _MAX_INT_DIGITS else value
    if fraction.isdigit():
        number = float(value)
        if math.isfinite(number):
            return number
    return value


def _sent_ms(value: str | None) -> int | None:
    if not value:
        return None
    if len(value) > 15 or not _is_digits(value) or int(value) > _MAX_TS_MS:
        raise InvalidInputError(
            "invalid_timestamp", "ts must be Unix milliseconds (digits)", field="ts"
        )
    return int(value)


def _language(param: str | None, header: str | None) -> str | None:
    if param:
        if len(param) > ev.MAX_LANGUAGE:
            raise too_long("lang", ev.MAX_LANGUAGE)
        return param
    if header:
        tag = header.partition(",")[0].partition(";")[0].strip()
        if tag and tag != "*":
            return tag[: ev.MAX_LANGUAGE]
    return None


def _bad_property(field: str, detail: str) -> InvalidInputError:
    return InvalidInputError("invalid_property", detail, field=field)


def _number(value: str) -> float:
    """``val``: a finite decimal number (``12``, ``12.5``, ``-1e3``); no ``_``, no spaces."""
    number = math.nan
    if value.isascii() and "_" not in value and value.strip() == value:
        with contextlib.suppress(ValueError):
            number = float(value)
    if not math.isfinite(number):
        raise _bad_property("val", "val must be a finite number")
    return number


def _properties_and_traits(params: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    properties: dict[str, Any] = {}
    traits: dict[str, Any] = {}
    for name, value in params.items():
        if "." not in name:  # most names: skip them with one cheap test
            continue
        if name.startswith("p."):
            key = name[2:]
            if not _is_key(key):
                raise _bad_property(name, "property keys are 1-128 of [A-Za-z0-9_.-]")
            properties[key] = _typed(value)
        elif name.startswith("tr."):
            key = name[3:]
            if not _is_key(key):
                raise InvalidInputError(
                    "invalid_trait", "trait keys are 1-128 of [A-Za-z0-9_.-]", field=name
                )
            traits[key] = value
    if value := params.get("pid", ""):
        properties.setdefault("product_id", value)
    if value := params.get("cat", ""):
        properties.setdefault("category", value)
    if (value := params.get("val", "")) and "value" not in properties:
        properties["value"] = _number(value)
    if (value := params.get("cur", "")) and "currency" not in properties:
        if len(value) != 3 or not value.isascii() or not value.isalpha():
            raise _bad_property("cur", "cur must be a 3-letter currency code")
        properties["currency"] = value.upper()
    if (value := params.get("qty", "")) and "quantity" not in properties:
        if len(value) > _MAX_INT_DIGITS or not _is_digits(value):
            raise _bad_property("qty", "qty must be a whole number")
        properties["quantity"] = int(value)
    return properties, traits


def parse_pixel(
    req: PixelRequest, policy: PixelPolicy, bots: BotDetector, *, now: float
) -> PixelResult:
    """One pixel request -> a canonical event and the visitor cookie to set.

    Raises ``InvalidInputError`` (``reason`` in :data:`PIXEL_REASONS`) for anything that
    cannot be accepted; never any other exception for any query bytes.
    """
    if len(req.query) > policy.max_query_bytes:
        raise InvalidInputError(
            "query_too_long", f"{len(req.query)} bytes > {policy.max_query_bytes}"
        )
    params = parse_query(req.query)
    get = params.get

    site = get("site")
    if not site:
        raise InvalidInputError("missing_site", "the site parameter is required", field="site")
    if site not in policy.known_sites:
        raise InvalidInputError("unknown_site", f"{site[:64]!r}", field="site")

    etype = get("type") or get("t") or "page_view"
    if etype not in ev.EVENT_TYPES:
        raise InvalidInputError("invalid_type", f"{etype[:64]!r}", field="type")
    name = get("name") or get("n") or None
    if name is None:
        if etype == "custom":
            raise InvalidInputError("missing_name", "type=custom needs a name", field="name")
    elif len(name) > ev.MAX_NAME:
        raise too_long("name", ev.MAX_NAME)

    event_id = get("eid")
    if not event_id:
        event_id = uuid7(int(now * 1000))
    elif not _is_id(event_id):
        raise InvalidInputError("invalid_event_id", "eid is 1-128 of [A-Za-z0-9_.:-]", field="eid")
    aid = get("aid") or None
    if aid is not None and not _is_id(aid):
        raise InvalidInputError(
            "invalid_anonymous_id", "aid is 1-128 of [A-Za-z0-9_.:-]", field="aid"
        )
    user_id = get("uid") or None
    if user_id is not None:
        if len(user_id) > ev.MAX_USER_ID:
            raise too_long("uid", ev.MAX_USER_ID)
        if not user_id.isprintable():
            raise InvalidInputError(
                "invalid_user_id", "uid has non-printable characters", field="uid"
            )
    url = _limited(params, "url", ev.MAX_URL)
    referrer = _limited(params, "ref", ev.MAX_URL)
    sent_ms = _sent_ms(get("ts"))
    language = _language(get("lang"), req.accept_language)
    utm, click_ids = attribution(params, url)
    properties, traits = _properties_and_traits(params)
    if traits:  # most pixels carry none: no cost for them
        traits = protect_traits(
            traits, policy.contact_cipher, default_region=policy.default_phone_region
        )

    signals = signals_from_query(
        get("consent"),
        gpc_header=req.gpc_header,
        gpc_param=get("gpc"),
        dnt_header=req.dnt_header,
    )
    consent = decide_consent(
        signals,
        default=policy.consent_default_by_site.get(site, policy.consent_default),
        honor_dnt=policy.honor_dnt,
    )
    anonymous_id: str | None = None
    set_cookie: str | None = None
    if consent["tracking"]:
        cookie = req.cookie_visitor_id
        if aid is not None:
            anonymous_id = aid
            set_cookie = aid if is_visitor_id(aid) else None
        elif cookie and is_visitor_id(cookie):
            anonymous_id = set_cookie = cookie
        else:
            anonymous_id = set_cookie = new_visitor_id()

    user_agent = req.user_agent[: ev.MAX_USER_AGENT] if req.user_agent else None
    received_ms = int(now * 1000)
    received_at = ev.format_ms(received_ms)
    # A pixel fires when its event happens: ``ts`` is both the event time and the send time,
    # so the skew correction leaves the receive time (whatever the client's clock says).
    occurred = occurred_ms(received_ms, sent_ms, sent_ms, max_lag_ms=policy.event_time_max_lag_ms)
    event: ev.CanonicalEvent = {
        "schema_version": ev.SCHEMA_VERSION,
        "event_id": event_id,
        "site_id": site,
        "visitor_id": ev.visitor_id_for(anonymous_id, user_id, event_id),
        "type": etype,
        "name": name,
        "sent_at": None if sent_ms is None else ev.format_ms(sent_ms),
        "received_at": received_at,
        "occurred_at": received_at if occurred == received_ms else ev.format_ms(occurred),
        "anonymous_id": anonymous_id,
        "user_id": user_id,
        "traits": traits,
        "url": url,
        "referrer": referrer,
        "utm": utm,
        "click_ids": click_ids,
        "properties": properties,
        "context": {
            "user_agent": user_agent,
            "ip": truncate_ip(req.ip) if req.ip else None,
            "language": language,
        },
        "consent": consent,
        "bot": bots.is_bot(user_agent),
        "source": "pixel",
    }
    return PixelResult(event, set_cookie)
