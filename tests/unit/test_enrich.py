"""Enrichment: IP truncation and client IP, bot detection, consent decisions."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leadback.enrich.bots import BotDetector
from leadback.enrich.consent import (
    NO_SIGNALS,
    ConsentSignals,
    ConsentStatus,
    decide_consent,
    signals_from_query,
)
from leadback.enrich.ip import client_ip, parse_networks, truncate_ip
from leadback.errors import InvalidInputError
from leadback.events import Consent

# --- truncate_ip ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("10.1.2.3", "10.1.2.0"),
        ("0.0.0.0", "0.0.0.0"),
        ("255.255.255.255", "255.255.255.0"),
        ("2001:db8:abcd:12:1:2:3:4", "2001:db8:abcd::"),
        ("2001:DB8:ABCD:0012::1", "2001:db8:abcd::"),
        ("2001:db8:abcd::", "2001:db8:abcd::"),
        ("::1", "::"),
        ("::ffff:1.2.3.4", "1.2.3.0"),
        ("::ffff:0102:0304", "1.2.3.0"),
        ("::FFFF:203.0.113.77", "203.0.113.0"),
        ("fe80::1%eth0", "fe80::"),
        ("2001:db8:abcd:12::1%3", "2001:db8:abcd::"),
    ],
)
def test_truncate_ip(ip: str, expected: str) -> None:
    assert truncate_ip(ip) == expected


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "localhost",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "1.2.3.256",
        "01.2.3.4",  # leading zeros are ambiguous (octal?) and refused
        "1.2.3.04",
        "1.2.3.-1",
        "1.2.3.+4",
        "1..3.4",
        "\u0661.\u0662.\u0663.\u0664",  # Arabic-Indic digits are digits, not ASCII
        " 1.2.3.4",
        "1.2.3.4 ",
        "1.2.3.4%eth0",  # zone ids exist only for IPv6
        "1.2.3.4:80",
        "[::1]",
        "::g",
        "2001:db8::1::2",
        "%",
        "12345",
    ],
)
def test_truncate_ip_refuses_what_is_not_an_ip(junk: str) -> None:
    assert truncate_ip(junk) is None


@given(st.ip_addresses(v=4))
def test_truncate_ipv4_keeps_the_24(addr: ipaddress.IPv4Address) -> None:
    expected = str(ipaddress.ip_network(f"{addr}/24", strict=False).network_address)
    out = truncate_ip(str(addr))
    assert out == expected
    assert truncate_ip(expected) == expected


@given(st.ip_addresses(v=6))
def test_truncate_ipv6_keeps_the_48(addr: ipaddress.IPv6Address) -> None:
    if addr.ipv4_mapped is not None:
        expected = str(ipaddress.ip_network(f"{addr.ipv4_mapped}/24", strict=False).network_address)
    else:
        expected = str(ipaddress.ip_network(f"{addr}/48", strict=False).network_address)
    out = truncate_ip(str(addr))
    assert out == expected
    assert truncate_ip(addr.exploded) == expected
    assert out is not None
    assert truncate_ip(out) == out


# --- client_ip ------------------------------------------------------------------------------

PROXIES = parse_networks(["10.0.0.0/8", "2001:db8:ffff::/48"])


def test_parse_networks() -> None:
    assert parse_networks(["10.1.2.3/8", " 2001:db8::/32 "]) == (
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv6Network("2001:db8::/32"),
    )
    assert parse_networks([]) == ()
    with pytest.raises(ValueError):
        parse_networks(["not-a-network"])


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        # no trusted proxies: X-Forwarded-For is never believed
        ("198.51.100.7", "1.1.1.1", (), "198.51.100.7"),
        # an untrusted peer cannot choose its address by sending the header
        ("198.51.100.7", "1.1.1.1", PROXIES, "198.51.100.7"),
        # behind a trusted proxy: the address the proxy saw
        ("10.0.0.1", "203.0.113.9", PROXIES, "203.0.113.9"),
        ("10.0.0.1", " 203.0.113.9 ", PROXIES, "203.0.113.9"),
        # a spoofed entry on the left is ignored, trusted hops on the right skipped
        ("10.0.0.1", "6.6.6.6, 203.0.113.9, 10.0.0.2", PROXIES, "203.0.113.9"),
        ("10.0.0.1", "6.6.6.6,203.0.113.9,,10.0.0.2", PROXIES, "203.0.113.9"),
        # trusted peer without the header: the peer
        ("10.0.0.1", None, PROXIES, "10.0.0.1"),
        ("10.0.0.1", "", PROXIES, "10.0.0.1"),
        # every hop trusted: the leftmost
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", PROXIES, "10.0.0.3"),
        # ports and brackets some proxies add
        ("10.0.0.1", "203.0.113.9:5555", PROXIES, "203.0.113.9"),
        ("10.0.0.1", "[2001:db8::1]:443", PROXIES, "2001:db8::1"),
        ("10.0.0.1", "2001:db8::1", PROXIES, "2001:db8::1"),
        # the untrusted hop is not an IP: unknown, and nothing left of it is believed
        ("10.0.0.1", "6.6.6.6, unknown", PROXIES, None),
        # IPv6 proxies, and IPv4-mapped peers count as their IPv4 address
        ("2001:db8:ffff::5", "203.0.113.9", PROXIES, "203.0.113.9"),
        ("::ffff:10.0.0.1", "203.0.113.9", PROXIES, "203.0.113.9"),
        ("::ffff:198.51.100.7", "203.0.113.9", PROXIES, "198.51.100.7"),
        # no usable peer
        (None, "203.0.113.9", PROXIES, None),
        ("", None, (), None),
        ("garbage", None, (), None),
    ],
)
def test_client_ip(
    peer: str | None,
    xff: str | None,
    trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
    expected: str | None,
) -> None:
    assert client_ip(peer, xff, trusted) == expected


# --- bots -----------------------------------------------------------------------------------

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0"
SAFARI = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
BINGBOT = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"


@pytest.fixture(scope="module")
def bots() -> Iterator[BotDetector]:
    yield BotDetector()


@pytest.mark.parametrize(
    ("user_agent", "is_bot"),
    [
        (GOOGLEBOT, True),
        (BINGBOT, True),
        ("curl/8.5.0", True),
        ("python-requests/2.31.0", True),
        (CHROME, False),
        (FIREFOX, False),
        (SAFARI, False),
        (IPHONE, False),
        (None, True),  # real browsers always send a user agent
        ("", True),
        ("   ", True),
    ],
)
def test_is_bot(bots: BotDetector, user_agent: str | None, is_bot: bool) -> None:
    assert bots.is_bot(user_agent) is is_bot


def test_bot_detection_is_cached_per_user_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    detector = BotDetector(cache_size=2)
    calls: list[str] = []
    real = detector._detector.is_crawler

    def counting(user_agent: str) -> bool:
        calls.append(user_agent)
        return bool(real(user_agent))

    monkeypatch.setattr(detector._detector, "is_crawler", counting)
    for _ in range(5):
        assert detector.is_bot(CHROME) is False
        assert detector.is_bot(GOOGLEBOT) is True
    assert calls == [CHROME, GOOGLEBOT]
    # bounded: a third user agent evicts the least recently used, answers stay right
    assert detector.is_bot(FIREFOX) is False
    assert detector.is_bot(CHROME) is False
    assert detector.is_bot(GOOGLEBOT) is True
    assert calls == [CHROME, GOOGLEBOT, FIREFOX, CHROME, GOOGLEBOT]


# --- consent --------------------------------------------------------------------------------

ALL = ["all"]


def query_consent(
    *,
    param: str | None = None,
    gpc_header: str | None = None,
    dnt_header: str | None = None,
    gpc_param: str | None = None,
    default: ConsentStatus = "granted",
    honor_dnt: bool = True,
) -> Consent:
    """The consent of a query-string request, as the pixel decides it."""
    signals = signals_from_query(
        param, gpc_header=gpc_header, dnt_header=dnt_header, gpc_param=gpc_param
    )
    return decide_consent(signals, default=default, honor_dnt=honor_dnt)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # absent or empty parameter: the default
        ({}, ("granted", ALL, False, False, True)),
        ({"default": "denied"}, ("denied", [], False, False, False)),
        ({"param": ""}, ("granted", ALL, False, False, True)),
        ({"param": "", "default": "denied"}, ("denied", [], False, False, False)),
        # keywords override the default, case and spaces ignored
        *(
            ({"param": p, "default": "denied"}, ("granted", ALL, False, False, True))
            for p in ("granted", "1", "yes", "true", "all", "YES", " Granted ")
        ),
        *(
            ({"param": p}, ("denied", [], False, False, False))
            for p in ("denied", "0", "no", "false", "none", "NONE")
        ),
        # a purpose list grants those purposes (lower-cased, de-duplicated, in order)
        ({"param": "analytics,ads"}, ("granted", ["analytics", "ads"], False, False, True)),
        (
            {"param": "Analytics, ADS,analytics", "default": "denied"},
            ("granted", ["analytics", "ads"], False, False, True),
        ),
        ({"param": "ads_2"}, ("granted", ["ads_2"], False, False, True)),
        # GPC (header or parameter) is recorded and stops tracking, status unchanged
        ({"gpc_header": "1"}, ("granted", ALL, True, False, False)),
        ({"gpc_header": " 1 "}, ("granted", ALL, True, False, False)),
        ({"gpc_param": "1"}, ("granted", ALL, True, False, False)),
        ({"gpc_header": "0"}, ("granted", ALL, False, False, True)),
        ({"gpc_param": "true"}, ("granted", ALL, False, False, True)),
        ({"param": "denied", "gpc_header": "1"}, ("denied", [], True, False, False)),
        # DNT is recorded; it stops tracking only when honoured
        ({"dnt_header": "1"}, ("granted", ALL, False, True, False)),
        ({"dnt_header": "1", "honor_dnt": False}, ("granted", ALL, False, True, True)),
        ({"dnt_header": "0"}, ("granted", ALL, False, False, True)),
    ],
)
def test_decide_consent(
    kwargs: dict[str, object], expected: tuple[str, list[str], bool, bool, bool]
) -> None:
    args: dict[str, Any] = {
        "param": None,
        "gpc_header": None,
        "dnt_header": None,
        "default": "granted",
        "honor_dnt": True,
    }
    args.update(kwargs)
    consent = query_consent(**args)
    status, purposes, gpc, dnt, tracking = expected
    assert consent == {
        "status": status,
        "purposes": purposes,
        "gpc": gpc,
        "dnt": dnt,
        "tracking": tracking,
    }


def test_consent_limits_are_inclusive() -> None:
    purposes = [f"p{i}" for i in range(32)]
    consent = query_consent(param=",".join(purposes), default="denied")
    assert consent["purposes"] == purposes
    long_name = "a" * 64
    consent = query_consent(param=long_name, default="denied")
    assert consent["purposes"] == [long_name]


@pytest.mark.parametrize(
    "param",
    [
        "ads;analytics",
        "ads,,analytics",
        "ads,",
        "a b",
        "a" * 65,
        ",".join(f"p{i}" for i in range(33)),
        "ad-s",
        "\u00fcber",
        "\u212a",  # KELVIN SIGN lower-cases to ASCII "k": still not a purpose name
    ],
)
def test_invalid_consent(param: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        signals_from_query(param, gpc_header=None, dnt_header=None)
    assert info.value.reason == "invalid_consent"
    assert info.value.field == "consent"


Signals = ConsentSignals


@pytest.mark.parametrize(
    ("signals", "default", "honor_dnt", "expected"),
    [
        (NO_SIGNALS, "granted", True, ("granted", ALL, False, False, True)),
        (NO_SIGNALS, "denied", True, ("denied", [], False, False, False)),
        (Signals(status="granted"), "denied", True, ("granted", ALL, False, False, True)),
        (Signals(status="denied"), "granted", True, ("denied", [], False, False, False)),
        # purposes sent are kept as sent, whatever the status
        (Signals(purposes=["ads"]), "granted", True, ("granted", ["ads"], False, False, True)),
        (Signals(purposes=["ads"]), "denied", True, ("denied", ["ads"], False, False, False)),
        (Signals("granted", purposes=[]), "denied", True, ("granted", [], False, False, True)),
        # GPC always, DNT when honoured, stop tracking; both recorded as sent
        (Signals(gpc=True), "granted", True, ("granted", ALL, True, False, False)),
        (Signals(dnt=True), "granted", True, ("granted", ALL, False, True, False)),
        (Signals(dnt=True), "granted", False, ("granted", ALL, False, True, True)),
    ],
)  # fmt: skip
def test_decide_consent_from_protocol_neutral_signals(
    signals: ConsentSignals,
    default: ConsentStatus,
    honor_dnt: bool,
    expected: tuple[str, list[str], bool, bool, bool],
) -> None:
    consent = decide_consent(signals, default=default, honor_dnt=honor_dnt)
    assert tuple(consent.values()) == expected
    assert list(consent) == ["status", "purposes", "gpc", "dnt", "tracking"]
