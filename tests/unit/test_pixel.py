"""The pixel protocol: query string + request headers -> canonical event (and the cookie)."""

from __future__ import annotations

import string
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from leadback import events as ev
from leadback.enrich.bots import BotDetector
from leadback.errors import InvalidInputError
from leadback.identity.contacts import CONTACT_ALIASES, ContactCipher, sha256_hex
from leadback.ids import is_visitor_id
from leadback.ingest.pixel import cookie_value
from leadback.invalid import invalid_record
from leadback.protocols.pixel import (
    PIXEL_REASONS,
    PixelPolicy,
    PixelRequest,
    PixelResult,
    parse_pixel,
)

NOW = 1732345201.5  # 2024-11-23T07:00:01.500Z
COOKIE = "0123456789abcdef0123456789abcdef"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
CIPHER = ContactCipher([ContactCipher.generate_key()])
POLICY = PixelPolicy(
    known_sites=frozenset({"demo", "shop"}),
    consent_default_by_site={"shop": "denied"},
    consent_default="granted",
    honor_dnt=True,
    max_query_bytes=8192,
    contact_cipher=CIPHER,
    default_phone_region="US",
)
EVENT_KEYS = list(ev.CanonicalEvent.__annotations__)


@pytest.fixture(scope="module")
def bots() -> Iterator[BotDetector]:
    yield BotDetector()


def request(query: str | bytes, **overrides: Any) -> PixelRequest:
    fields: dict[str, Any] = {
        "query": query.encode() if isinstance(query, str) else query,
        "user_agent": CHROME,
        "ip": "203.0.113.77",
        "cookie_visitor_id": None,
        "gpc_header": None,
        "dnt_header": None,
        "accept_language": None,
    }
    fields.update(overrides)
    return PixelRequest(**fields)


def parse(
    bots: BotDetector, query: str | bytes, policy: PixelPolicy = POLICY, **overrides: Any
) -> PixelResult:
    return parse_pixel(request(query, **overrides), policy, bots, now=NOW)


def reject(bots: BotDetector, query: str | bytes, **overrides: Any) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        parse(bots, query, **overrides)
    return info.value


# --- a realistic pixel ----------------------------------------------------------------------

REALISTIC = (
    "site=demo&t=add_to_cart&eid=evt-7f3a9c2e"
    "&url=https%3A%2F%2Fshop.example%2Fcart%3Futm_source%3Dnews%26gclid%3DCj0KCQiA"
    "&ref=https%3A%2F%2Fgoogle.com%2F&ts=1732345200123&pid=sku-42&val=59.90&cur=eur&_=8731"
)


def test_realistic_pixel(bots: BotDetector) -> None:
    assert 180 <= len(REALISTIC) <= 210
    result = parse(
        bots,
        REALISTIC,
        cookie_visitor_id=COOKIE,
        accept_language="de-DE,de;q=0.9,en;q=0.8",
    )
    assert result.set_cookie_visitor_id == COOKIE
    assert result.event == {
        "schema_version": ev.SCHEMA_VERSION,
        "event_id": "evt-7f3a9c2e",
        "site_id": "demo",
        "visitor_id": COOKIE,
        "type": "add_to_cart",
        "name": None,
        "sent_at": "2024-11-23T07:00:00.123Z",
        "received_at": "2024-11-23T07:00:01.500Z",
        "occurred_at": "2024-11-23T07:00:01.500Z",  # fired when it happened: corrected to now
        "anonymous_id": COOKIE,
        "user_id": None,
        "traits": {},
        "url": "https://shop.example/cart?utm_source=news&gclid=Cj0KCQiA",
        "referrer": "https://google.com/",
        "utm": {**ev.empty_utm(), "source": "news"},
        "click_ids": {**ev.empty_click_ids(), "gclid": "Cj0KCQiA"},
        "properties": {"product_id": "sku-42", "value": 59.9, "currency": "EUR"},
        "context": {"user_agent": CHROME, "ip": "203.0.113.0", "language": "de-DE"},
        "consent": {
            "status": "granted",
            "purposes": ["all"],
            "gpc": False,
            "dnt": False,
            "tracking": True,
        },
        "bot": False,
        "source": "pixel",
    }
    assert list(result.event) == EVENT_KEYS
    assert isinstance(result.event["properties"]["value"], float)


def test_defaults(bots: BotDetector) -> None:
    result = parse(bots, "site=demo", user_agent=None, ip=None)
    event = result.event
    assert list(event) == EVENT_KEYS
    assert event["type"] == "page_view"
    assert event["name"] is None
    assert event["sent_at"] is None
    assert event["received_at"] == "2024-11-23T07:00:01.500Z"
    assert event["occurred_at"] == event["received_at"]
    # a server UUIDv7 carrying the receive time
    event_id = event["event_id"]
    assert len(event_id) == 36
    assert event_id[14] == "7"
    assert int(event_id.replace("-", "")[:12], 16) == int(NOW * 1000)
    # a new visitor: a new id, set in the cookie
    assert event["anonymous_id"] is not None
    assert is_visitor_id(event["anonymous_id"])
    assert result.set_cookie_visitor_id == event["anonymous_id"] == event["visitor_id"]
    assert event["user_id"] is None
    assert event["url"] is None
    assert event["referrer"] is None
    assert event["utm"] == ev.empty_utm()
    assert event["click_ids"] == ev.empty_click_ids()
    assert event["properties"] == {}
    assert event["traits"] == {}
    assert event["context"] == {"user_agent": None, "ip": None, "language": None}
    assert event["bot"] is True  # no user agent
    assert event["consent"]["tracking"] is True


def test_new_ids_differ(bots: BotDetector) -> None:
    a, b = parse(bots, "site=demo"), parse(bots, "site=demo")
    assert a.event["event_id"] != b.event["event_id"]
    assert a.event["anonymous_id"] != b.event["anonymous_id"]


def test_aliases_and_full_names(bots: BotDetector) -> None:
    event = parse(bots, "site=demo&t=custom&n=quiz_done").event
    assert (event["type"], event["name"]) == ("custom", "quiz_done")
    event = parse(bots, "site=demo&type=signup&name=newsletter").event
    assert (event["type"], event["name"]) == ("signup", "newsletter")
    # the full name wins over its alias wherever each stands
    event = parse(bots, "site=demo&t=purchase&type=lead&n=a&name=b").event
    assert (event["type"], event["name"]) == ("lead", "b")
    # an empty value counts as absent
    event = parse(bots, "site=demo&type=&t=checkout&name=").event
    assert (event["type"], event["name"]) == ("checkout", None)


def test_property_aliases(bots: BotDetector) -> None:
    props = parse(bots, "site=demo&pid=sku-1&cat=shoes&val=10&cur=usd&qty=3").event["properties"]
    assert props == {
        "product_id": "sku-1",
        "category": "shoes",
        "value": 10.0,
        "currency": "USD",
        "quantity": 3,
    }
    assert isinstance(props["value"], float)
    # p.<key> wins over the alias
    props = parse(bots, "site=demo&val=7&p.value=5&cur=usd&p.currency=eur").event["properties"]
    assert props == {"value": 5, "currency": "eur"}


@pytest.mark.parametrize(
    ("raw", "typed"),
    [
        ("19.99", 19.99),
        ("-2.5", -2.5),
        ("0.5", 0.5),
        ("3", 3),
        ("-5", -5),
        ("0", 0),
        ("123456789012345678", 123456789012345678),
        ("1234567890123456789", "1234567890123456789"),  # too big for an int64: a string
        ("007", "007"),  # leading zeros: an identifier, not a number
        ("01.5", "01.5"),
        ("1e5", "1e5"),
        (".5", ".5"),
        ("5.", "5."),
        ("1.2.3", "1.2.3"),
        ("-", "-"),
        ("nan", "nan"),
        ("\u0661\u0662", "\u0661\u0662"),  # non-ASCII digits stay text
        ("true", True),
        ("false", False),
        ("True", "True"),
        ("hello world", "hello world"),
        ("", ""),
    ],
)
def test_property_values_are_typed(bots: BotDetector, raw: str, typed: object) -> None:
    props = parse(bots, "site=demo&" + urlencode({"p.x": raw})).event["properties"]
    assert props == {"x": typed}
    assert type(props["x"]) is type(typed)


def test_property_keys_and_traits(bots: BotDetector) -> None:
    event = parse(
        bots,
        "site=demo&type=identify&uid=user%2042&p.a.b-c_1=x&tr.plan=pro&tr.age=42"
        "&tr.email=Ann%40B.example&tr.phone=(415)+555-0123&tr.fn=Ann",
    ).event
    assert event["properties"] == {"a.b-c_1": "x"}
    traits = event["traits"]
    assert set(traits) == {
        "plan", "age", "email_sha256", "email_enc", "phone_sha256", "phone_enc",
        "first_name_sha256", "first_name_enc",
    }  # fmt: skip
    assert traits["plan"] == "pro"
    assert traits["age"] == "42"  # traits stay strings
    assert traits["email_sha256"] == sha256_hex("ann@b.example")
    assert traits["phone_sha256"] == sha256_hex("+14155550123")  # region from the policy
    assert traits["first_name_sha256"] == sha256_hex("ann")
    assert CIPHER.decrypt(traits["first_name_enc"]) == "Ann"  # as written, for greetings
    assert CIPHER.decrypt(traits["email_enc"]) == "ann@b.example"
    assert CIPHER.decrypt(traits["phone_enc"]) == "+14155550123"
    assert event["user_id"] == "user 42"


def test_contact_traits_never_reach_the_event_in_clear(bots: BotDetector) -> None:
    event = parse(bots, "site=demo&tr.e-mail=%20Ann.Lee%40Example.com&tr.mobile=%2B4930123456")
    wire = orjson.dumps(event.event)
    for clear in [b"Ann.Lee", b"ann.lee", b"example.com", b"30123456"]:
        assert clear not in wire


def test_invalid_contact_traits_are_refused_without_their_value(bots: BotDetector) -> None:
    query = "site=demo&tr.email=ann.lee%40nowhere&p.x=1"
    error = reject(bots, query)
    assert (error.reason, error.field) == ("invalid_trait", "traits.email")
    record = invalid_record(
        error.reason, error.detail, source="pixel", now=NOW, site_id="demo", query=query.encode()
    )
    wire = orjson.dumps(record)
    assert b"ann.lee" not in wire
    assert b"nowhere" not in wire


def test_utm_and_click_ids_from_the_url(bots: BotDetector) -> None:
    page = (
        "https://shop.example/p?utm_source=fb&utm_medium=cpc&utm_campaign=spring%20sale"
        "&utm_term=red+shoes&utm_content=a&utm_source=second&fbclid=FB1&yclid=Y1&ttclid=T1"
        "&msclkid=M1&gclid=G1#utm_content=fragment"
    )
    event = parse(bots, "site=demo&" + urlencode({"url": page})).event
    assert event["utm"] == {
        "source": "fb",  # first wins inside the URL too
        "medium": "cpc",
        "campaign": "spring sale",
        "term": "red shoes",
        "content": "a",
    }
    assert event["click_ids"] == {
        "gclid": "G1",
        "fbclid": "FB1",
        "yclid": "Y1",
        "ttclid": "T1",
        "msclkid": "M1",
    }


def test_explicit_utm_wins_over_the_url(bots: BotDetector) -> None:
    page = "https://shop.example/?utm_source=url&gclid=url&utm_medium=url"
    query = "site=demo&utm_source=param&gclid=param&" + urlencode({"url": page})
    event = parse(bots, query).event
    assert event["utm"] == {**ev.empty_utm(), "source": "param", "medium": "url"}
    assert event["click_ids"] == {**ev.empty_click_ids(), "gclid": "param"}


def test_url_attribution_is_cut_not_refused(bots: BotDetector) -> None:
    page = "https://shop.example/?utm_source=" + "s" * 300 + "&msclkid=" + "m" * 600 + "&x=%ff"
    event = parse(bots, "site=demo&" + urlencode({"url": page})).event
    assert event["utm"]["source"] == "s" * ev.MAX_UTM
    assert event["click_ids"]["msclkid"] == "m" * ev.MAX_CLICK_ID
    assert event["url"] == page


def test_url_without_attribution(bots: BotDetector) -> None:
    event = parse(bots, "site=demo&url=https%3A%2F%2Fshop.example%2F%3Fq%3Dshoes%23top").event
    assert event["url"] == "https://shop.example/?q=shoes#top"
    assert event["utm"] == ev.empty_utm()
    assert event["click_ids"] == ev.empty_click_ids()


def test_first_of_repeated_params_wins(bots: BotDetector) -> None:
    event = parse(bots, "site=demo&site=shop&p.x=1&p.x=2&url=a&url=b&uid=u1&uid=u2").event
    assert event["site_id"] == "demo"
    assert event["properties"] == {"x": 1}
    assert event["url"] == "a"
    assert event["user_id"] == "u1"
    assert reject(bots, "site=nope&site=demo").reason == "unknown_site"


def test_encoding(bots: BotDetector) -> None:
    event = parse(bots, "site=demo&url=caf%C3%A9+bar%2B1&p.k=%zz&p.n=na%C3%AFve").event
    assert event["url"] == "café bar+1"
    assert event["properties"] == {"k": "%zz", "n": "naïve"}  # a malformed escape kept
    event = parse(bots, "site=demo&p.raw=café".encode()).event  # raw UTF-8 accepted
    assert event["properties"] == {"raw": "café"}
    event = parse(bots, "&&site=demo&&novalue&=x&").event  # empty parts, names, values
    assert event["site_id"] == "demo"
    # names are decoded too
    assert parse(bots, "%73ite=demo&p%2Ex=1").event["properties"] == {"x": 1}


def test_timestamps(bots: BotDetector) -> None:
    assert parse(bots, "site=demo&ts=0").event["sent_at"] == "1970-01-01T00:00:00.000Z"
    assert parse(bots, "site=demo&ts=253402300799999").event["sent_at"] == (
        "9999-12-31T23:59:59.999Z"
    )


@given(st.integers(min_value=0, max_value=253402300799999))
def test_a_pixel_happened_when_it_was_received_whatever_the_client_clock(ms: int) -> None:
    """``ts`` is the send time of an event sent as it happens: its clock skew cancels out."""
    event = parse(_BOTS, f"site=demo&ts={ms}").event
    assert event["occurred_at"] == event["received_at"] == "2024-11-23T07:00:01.500Z"


@given(st.integers(min_value=0, max_value=253402300799999))
@example(34752095568865)  # ms / 1000 * 1000 < ms in floating point: a naive division loses
@example(138316674633955)  # a millisecond on these
def test_sent_at_keeps_every_millisecond(ms: int) -> None:
    bots = _BOTS
    expected = datetime.fromtimestamp(ms // 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    expected += f".{ms % 1000:03d}Z"
    assert parse(bots, f"site=demo&ts={ms}").event["sent_at"] == expected


def test_language(bots: BotDetector) -> None:
    assert parse(bots, "site=demo&lang=pt-BR", accept_language="fr").event["context"][
        "language"
    ] == ("pt-BR")
    for header, expected in [
        ("fr-CH, fr;q=0.9, en;q=0.8", "fr-CH"),
        ("en;q=0.5", "en"),
        ("*", None),
        ("", None),
        ("x" * 50, "x" * ev.MAX_LANGUAGE),
    ]:
        event = parse(bots, "site=demo", accept_language=header).event
        assert event["context"]["language"] == expected, header


def test_context(bots: BotDetector) -> None:
    long_ua = CHROME + " " + "x" * 2000
    event = parse(bots, "site=demo", user_agent=long_ua, ip="2001:db8:abcd:12::7").event
    assert event["context"]["user_agent"] == long_ua[: ev.MAX_USER_AGENT]
    assert event["context"]["ip"] == "2001:db8:abcd::"
    assert event["bot"] is False
    assert parse(bots, "site=demo", user_agent=GOOGLEBOT).event["bot"] is True
    assert parse(bots, "site=demo", ip="not an ip").event["context"]["ip"] is None


def test_limits_are_inclusive(bots: BotDetector) -> None:
    query = urlencode(
        {
            "site": "demo",
            "url": "u" * ev.MAX_URL,
            "ref": "r" * ev.MAX_URL,
            "name": "n" * ev.MAX_NAME,
            "uid": "i" * ev.MAX_USER_ID,
            "eid": "e" * ev.MAX_ID,
            "aid": "a" * ev.MAX_ID,
            "utm_source": "s" * ev.MAX_UTM,
            "gclid": "g" * ev.MAX_CLICK_ID,
            "lang": "l" * ev.MAX_LANGUAGE,
            "p." + "k" * ev.MAX_PROPERTY_KEY: "v",
        }
    )
    policy = PixelPolicy(
        known_sites=POLICY.known_sites,
        consent_default_by_site={},
        consent_default="granted",
        honor_dnt=True,
        max_query_bytes=len(query),
        contact_cipher=CIPHER,
    )
    event = parse(bots, query, policy=policy).event
    assert event["url"] == "u" * ev.MAX_URL
    assert event["properties"] == {"k" * ev.MAX_PROPERTY_KEY: "v"}
    assert event["event_id"] == "e" * ev.MAX_ID


# --- reasons --------------------------------------------------------------------------------

REJECTIONS: list[tuple[str | bytes, str, str | None]] = [
    ("site=demo&_=" + "x" * 8200, "query_too_long", None),
    (b"site=demo&url=%ff", "bad_encoding", None),
    (b"site=demo&url=%C3%28", "bad_encoding", None),
    (b"site=demo&x=\xff", "bad_encoding", None),
    (b"site=demo&%c3=1", "bad_encoding", None),
    ("t=page_view", "missing_site", "site"),
    ("site=&site=demo", "missing_site", "site"),
    ("", "missing_site", "site"),
    ("site=nope", "unknown_site", "site"),
    ("site=DEMO", "unknown_site", "site"),
    ("site=demo&type=pageview", "invalid_type", "type"),
    ("site=demo&t=PAGE_VIEW", "invalid_type", "type"),
    ("site=demo&type=custom", "missing_name", "name"),
    ("site=demo&eid=has+space", "invalid_event_id", "eid"),
    ("site=demo&eid=" + "e" * 129, "invalid_event_id", "eid"),
    ("site=demo&aid=a%2Fb", "invalid_anonymous_id", "aid"),
    ("site=demo&aid=" + "a" * 129, "invalid_anonymous_id", "aid"),
    ("site=demo&uid=a%00b", "invalid_user_id", "uid"),
    ("site=demo&uid=a%0Ab", "invalid_user_id", "uid"),
    ("site=demo&uid=" + "u" * 257, "field_too_long", "uid"),
    ("site=demo&url=" + "u" * 4097, "field_too_long", "url"),
    ("site=demo&ref=" + "r" * 4097, "field_too_long", "ref"),
    ("site=demo&name=" + "n" * 201, "field_too_long", "name"),
    ("site=demo&utm_campaign=" + "c" * 257, "field_too_long", "utm_campaign"),
    ("site=demo&msclkid=" + "m" * 513, "field_too_long", "msclkid"),
    ("site=demo&lang=" + "l" * 36, "field_too_long", "lang"),
    ("site=demo&ts=abc", "invalid_timestamp", "ts"),
    ("site=demo&ts=-1", "invalid_timestamp", "ts"),
    ("site=demo&ts=1.5", "invalid_timestamp", "ts"),
    ("site=demo&ts=253402300800000", "invalid_timestamp", "ts"),
    ("site=demo&ts=99999999999999999999", "invalid_timestamp", "ts"),
    ("site=demo&consent=ads%3Banalytics", "invalid_consent", "consent"),
    ("site=demo&p.=1", "invalid_property", "p."),
    ("site=demo&p.a+b=1", "invalid_property", "p.a b"),
    ("site=demo&p." + "k" * 129 + "=1", "invalid_property", "p." + "k" * 129),
    ("site=demo&val=abc", "invalid_property", "val"),
    ("site=demo&val=nan", "invalid_property", "val"),
    ("site=demo&val=inf", "invalid_property", "val"),
    ("site=demo&val=1_000", "invalid_property", "val"),
    ("site=demo&val=+1", "invalid_property", "val"),  # "+" is a space
    ("site=demo&cur=EURO", "invalid_property", "cur"),
    ("site=demo&cur=E1R", "invalid_property", "cur"),
    ("site=demo&qty=1.5", "invalid_property", "qty"),
    ("site=demo&qty=-1", "invalid_property", "qty"),
    ("site=demo&tr.=x", "invalid_trait", "tr."),
    ("site=demo&tr.e%2Fmail=x", "invalid_trait", "tr.e/mail"),
    ("site=demo&tr.email=x", "invalid_trait", "traits.email"),
    ("site=demo&tr.Phone=12", "invalid_trait", "traits.Phone"),
    ("site=demo&tr.country=France", "invalid_trait", "traits.country"),
    ("site=demo&tr.email_sha256=00", "invalid_trait", "traits.email_sha256"),
    ("site=demo&tr.phone_enc=gAAAA", "invalid_trait", "traits.phone_enc"),
]


@pytest.mark.parametrize(("query", "reason", "field"), REJECTIONS)
def test_rejections(bots: BotDetector, query: str | bytes, reason: str, field: str | None) -> None:
    error = reject(bots, query)
    assert error.reason == reason
    assert error.field == field


def test_every_documented_reason_is_tested() -> None:
    assert {reason for _, reason, _ in REJECTIONS} == PIXEL_REASONS


def test_query_size_limit_is_inclusive(bots: BotDetector) -> None:
    query = "site=demo&_=" + "x" * (POLICY.max_query_bytes - len("site=demo&_="))
    assert len(query) == POLICY.max_query_bytes
    assert parse(bots, query).event["site_id"] == "demo"
    assert reject(bots, query + "x").reason == "query_too_long"


def test_site_is_checked_before_other_params(bots: BotDetector) -> None:
    assert reject(bots, "type=bogus&ts=x").reason == "missing_site"
    assert reject(bots, "site=nope&type=bogus").reason == "unknown_site"


# --- the visitor cookie and consent ---------------------------------------------------------


def test_valid_cookie_is_reused_and_refreshed(bots: BotDetector) -> None:
    result = parse(bots, "site=demo", cookie_visitor_id=COOKIE)
    assert result.event["anonymous_id"] == COOKIE
    assert result.event["visitor_id"] == COOKIE
    assert result.set_cookie_visitor_id == COOKIE


@pytest.mark.parametrize("junk", ["not-an-id", COOKIE.upper(), COOKIE + "0", "", "../../etc"])
def test_junk_cookie_is_replaced(bots: BotDetector, junk: str) -> None:
    result = parse(bots, "site=demo", cookie_visitor_id=junk)
    anonymous_id = result.event["anonymous_id"]
    assert anonymous_id is not None
    assert anonymous_id != junk
    assert is_visitor_id(anonymous_id)
    assert result.set_cookie_visitor_id == anonymous_id


def test_aid_from_a_tag(bots: BotDetector) -> None:
    other = "f" * 32
    # a Leadback-style id from the tag: used, and the cookie follows it
    result = parse(bots, f"site=demo&aid={other}", cookie_visitor_id=COOKIE)
    assert result.event["anonymous_id"] == other
    assert result.set_cookie_visitor_id == other
    # the tag's own id scheme: used, the cookie left alone
    result = parse(bots, "site=demo&aid=tag.visitor:1", cookie_visitor_id=COOKIE)
    assert result.event["anonymous_id"] == "tag.visitor:1"
    assert result.event["visitor_id"] == "tag.visitor:1"
    assert result.set_cookie_visitor_id is None


@pytest.mark.parametrize(
    ("query", "overrides", "policy"),
    [
        ("site=demo", {"gpc_header": "1"}, POLICY),
        ("site=demo&gpc=1", {}, POLICY),
        ("site=demo", {"dnt_header": "1"}, POLICY),
        ("site=demo&consent=denied", {}, POLICY),
        ("site=demo&consent=0&aid=" + "f" * 32, {}, POLICY),
        ("site=shop", {}, POLICY),  # this site defaults to denied
        (
            "site=demo",
            {},
            PixelPolicy(
                known_sites=frozenset({"demo"}),
                consent_default_by_site={},
                consent_default="denied",
                honor_dnt=True,
                max_query_bytes=8192,
                contact_cipher=CIPHER,
            ),
        ),
    ],
)
def test_no_tracking_no_cookie_no_link(
    bots: BotDetector, query: str, overrides: dict[str, Any], policy: PixelPolicy
) -> None:
    result = parse(bots, query, policy=policy, cookie_visitor_id=COOKIE, **overrides)
    event = result.event
    assert event["consent"]["tracking"] is False
    assert event["anonymous_id"] is None
    assert result.set_cookie_visitor_id is None
    assert event["visitor_id"] == f"e:{event['event_id']}"
    assert COOKIE not in orjson.dumps(event).decode()
    assert "f" * 32 not in orjson.dumps(event).decode()


def test_no_tracking_keys_a_known_user_by_user_id(bots: BotDetector) -> None:
    result = parse(bots, "site=demo&uid=u-1", gpc_header="1", cookie_visitor_id=COOKIE)
    assert result.event["visitor_id"] == "u:u-1"
    assert result.event["consent"] == {
        "status": "granted",
        "purposes": ["all"],
        "gpc": True,
        "dnt": False,
        "tracking": False,
    }


def test_consent_per_site_and_explicit(bots: BotDetector) -> None:
    result = parse(bots, "site=shop&consent=ads,analytics", cookie_visitor_id=COOKIE)
    assert result.event["consent"]["purposes"] == ["ads", "analytics"]
    assert result.set_cookie_visitor_id == COOKIE
    dnt_ignored = PixelPolicy(
        known_sites=frozenset({"demo"}),
        consent_default_by_site={},
        consent_default="granted",
        honor_dnt=False,
        max_query_bytes=8192,
        contact_cipher=CIPHER,
    )
    result = parse(bots, "site=demo", policy=dnt_ignored, dnt_header="1", cookie_visitor_id=COOKIE)
    assert result.event["consent"]["dnt"] is True
    assert result.set_cookie_visitor_id == COOKIE


# --- properties for any input ---------------------------------------------------------------

_BOTS = BotDetector()  # for @given tests, built once (hypothesis runs many examples)

KEY_CHARS = string.ascii_letters + string.digits + "_.-"
NAMES = st.one_of(
    st.sampled_from(
        [
            "site", "type", "t", "name", "n", "eid", "aid", "uid", "url", "ref", "ts", "lang",
            "consent", "gpc", "utm_source", "utm_term", "gclid", "msclkid", "pid", "cat", "val",
            "cur", "qty", "_", "cb",
        ]
    ),
    st.text(max_size=8),
    st.text(KEY_CHARS, min_size=1, max_size=12).map(lambda k: "p." + k),
    st.text(KEY_CHARS, min_size=1, max_size=12).map(lambda k: "tr." + k),
    st.text(max_size=8).map(lambda k: "p." + k),
)  # fmt: skip
VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(sorted(ev.EVENT_TYPES)),
    st.from_regex(r"-?[0-9]{1,20}(\.[0-9]{1,5})?", fullmatch=True),
    st.sampled_from(["true", "false", "1", "granted", "denied", "ads,analytics", "usd"]),
)
PARAMS = st.tuples(
    st.fixed_dictionaries(
        {"site": st.sampled_from(["demo", "shop"]) | st.text(max_size=6)},
        optional={
            "type": st.sampled_from(sorted(ev.EVENT_TYPES)) | st.text(max_size=12),
            "name": st.text(max_size=30),
            "url": st.text(max_size=60),
            "uid": st.text(max_size=30),
            "p.price": VALUES,
        },
    ),
    st.dictionaries(NAMES, VALUES, max_size=8),
).map(lambda pair: {**pair[1], **pair[0]})


def _expected_property(raw: str, got: object) -> bool:
    if isinstance(got, bool):
        return raw == ("true" if got else "false")
    if isinstance(got, int):
        return int(raw) == got and raw.lstrip("-") == str(abs(got))
    if isinstance(got, float):
        return float(raw) == got
    return got == raw


@given(PARAMS)
def test_any_params_round_trip_or_are_refused_with_a_reason(params: dict[str, str]) -> None:
    query = urlencode(params).encode()
    try:
        result = parse(_BOTS, query)
    except InvalidInputError as exc:
        assert exc.reason in PIXEL_REASONS
        return
    event = result.event
    assert event["site_id"] == params["site"]
    assert event["type"] == (params.get("type") or params.get("t") or "page_view")
    assert event["name"] == (params.get("name") or params.get("n") or None)
    assert event["url"] == (params.get("url") or None)
    assert event["user_id"] == (params.get("uid") or None)
    for name, raw in params.items():
        if name.startswith("p."):
            assert _expected_property(raw, event["properties"][name[2:]]), (name, raw)
        elif name.startswith("tr."):
            if name[3:].lower() in CONTACT_ALIASES:
                assert name[3:] not in event["traits"]  # replaced by its hash, or dropped
            else:
                assert event["traits"][name[3:]] == raw


QUERY_PIECES = st.sampled_from(
    [
        b"site=demo", b"site=", b"&", b"=", b"+", b"%", b"%f", b"%ff", b"%c3", b"%a9", b"%zz",
        b"%00", b"p.", b"tr.", b"x", b"1", b".5", b"-", b"val=", b"qty=", b"cur=", b"ts=",
        b"type=custom", b"name=", b"eid=", b"aid=", b"uid=", b"url=", b"consent=", b"gpc=1",
        b"\xff", b"\xc3", b"\xa9", "é".encode(), b"?utm_source=", b"%3Futm_source%3D",
    ]
)  # fmt: skip


@given(
    st.binary(max_size=200)
    | st.lists(QUERY_PIECES, max_size=30).map(b"".join)
    | st.lists(QUERY_PIECES, max_size=30).map(lambda pieces: b"site=demo&" + b"".join(pieces))
)
def test_any_bytes_raise_only_invalid_input(query: bytes) -> None:
    try:
        result = parse(_BOTS, query)
    except InvalidInputError as exc:
        assert exc.reason in PIXEL_REASONS
    else:
        assert result.event["site_id"] in POLICY.known_sites
        orjson.dumps(result.event)


@given(PARAMS)
def test_events_serialize_with_exactly_the_canonical_keys(params: dict[str, str]) -> None:
    try:
        event = parse(_BOTS, urlencode(params, quote_via=quote)).event
    except InvalidInputError:
        return
    decoded = orjson.loads(orjson.dumps(event))
    assert decoded == event
    assert list(decoded) == EVENT_KEYS
    assert list(decoded["utm"]) == list(ev.Utm.__annotations__)
    assert list(decoded["click_ids"]) == list(ev.ClickIds.__annotations__)
    assert list(decoded["context"]) == list(ev.Context.__annotations__)
    assert list(decoded["consent"]) == list(ev.Consent.__annotations__)


def _cookie_by_split(header: bytes, prefix: bytes) -> str | None:
    for part in header.split(b";"):
        part = part.strip()
        if part.startswith(prefix):
            return part[len(prefix) :].decode("latin-1")
    return None


@given(
    st.lists(
        st.one_of(
            st.sampled_from([b"lb_vid=abc", b" lb_vid=x ", b"xlb_vid=1", b"a=lb_vid=2", b"\t"]),
            st.binary(max_size=12),
        ),
        max_size=6,
    )
)
def test_cookie_value_matches_splitting_the_header(parts: list[bytes]) -> None:
    header = b";".join(parts)
    assert cookie_value(header, b"lb_vid=") == _cookie_by_split(header, b"lb_vid=")
