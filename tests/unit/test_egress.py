"""The SSRF guard: which addresses a webhook or push request may go to, and that it goes to the
address that was checked (pinned), with the right Host header and TLS name."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from leadback.clock import ManualClock
from leadback.destinations.base import DestinationRejected, DestinationUnavailable
from leadback.destinations.egress import (
    EgressGuard,
    SystemResolver,
    check_url,
    embedded_ipv4,
    is_public_address,
)
from tests.fakes.http_server import serve_app
from tests.fakes.tls import make_certificates

PRIVATE_V4 = [
    "0.0.0.0/8",  # "this network", unspecified
    "10.0.0.0/8",
    "100.64.0.0/10",  # CGNAT
    "127.0.0.0/8",
    "169.254.0.0/16",  # link-local, cloud metadata
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, broadcast
]
PRIVATE_V6 = ["::1/128", "::/128", "fc00::/7", "fe80::/10", "ff00::/8", "2001:db8::/32"]
PUBLIC_V4 = ["8.8.8.0/24", "1.1.1.0/24", "151.101.0.0/16", "142.250.0.0/15", "17.0.0.0/8"]
PUBLIC_V6 = ["2a00:1450::/32", "2606:4700::/32", "2620:fe::/48"]


def addresses_in(
    cidrs: list[str],
) -> st.SearchStrategy[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    def pick(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> st.SearchStrategy:  # type: ignore[type-arg]
        return st.integers(0, net.num_addresses - 1).map(lambda i: net[i])

    return st.one_of(*(pick(ipaddress.ip_network(c)) for c in cidrs))


def mapped(ip: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """The IPv6 forms that carry ``ip``: IPv4-mapped, NAT64, 6to4."""
    n = int(ip)
    return [
        ipaddress.IPv6Address(0xFFFF << 32 | n),
        ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | n),
        ipaddress.IPv6Address(0x2002 << 112 | n << 80),
    ]


@given(addresses_in(PRIVATE_V4))
def test_private_ipv4_and_every_ipv6_form_of_it_are_refused(ip: ipaddress.IPv4Address) -> None:
    assert not is_public_address(ip)
    for v6 in mapped(ip):
        assert embedded_ipv4(v6) == ip
        assert not is_public_address(v6), v6


@given(addresses_in(PRIVATE_V6))
def test_private_ipv6_is_refused(ip: ipaddress.IPv6Address) -> None:
    assert not is_public_address(ip)


@given(addresses_in(PUBLIC_V4))
def test_public_ipv4_is_allowed_in_every_form(ip: ipaddress.IPv4Address) -> None:
    assert is_public_address(ip)
    for v6 in mapped(ip):  # an IPv6-only cluster reaches public IPv4 hosts through NAT64
        assert is_public_address(v6), v6


@given(addresses_in(PUBLIC_V6))
def test_public_ipv6_is_allowed(ip: ipaddress.IPv6Address) -> None:
    assert is_public_address(ip)


@given(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address))
def test_an_ipv4_address_is_judged_the_same_whatever_form_it_comes_in(
    ip: ipaddress.IPv4Address,
) -> None:
    assert {is_public_address(v6) for v6 in mapped(ip)} == {is_public_address(ip)}


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",  # plain http
        "ftp://hooks.example.com/x",
        "https://user:pw@hooks.example.com/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:169.254.169.254]/",
        "https://[fd00::1]/",
        "https://127.0.0.1:8123/",
        "https://0.0.0.0/",
        "https:///nohost",
        "https://" + "a" * 2100 + ".com/",
    ],
)
def test_urls_that_are_refused_before_any_lookup(url: str) -> None:
    with pytest.raises(DestinationRejected) as info:
        check_url(url, allow_private=False)
    assert info.value.reason == "target_not_allowed"


def test_private_targets_allow_http_and_loopback_but_not_other_schemes() -> None:
    assert check_url("http://127.0.0.1:9/x", allow_private=True).host == "127.0.0.1"
    with pytest.raises(DestinationRejected):
        check_url("file:///etc/passwd", allow_private=True)


class StaticResolver:
    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return self.answers[host]


async def test_a_hostname_resolving_to_loopback_is_refused_with_the_system_resolver() -> None:
    guard = EgressGuard(allow_private=False, clock=ManualClock(), resolver=SystemResolver())
    with pytest.raises(DestinationRejected) as info:
        await guard.pin("https://localhost:8443/hook")
    assert info.value.reason == "target_not_allowed"


async def test_a_name_with_any_private_address_is_refused() -> None:
    resolver = StaticResolver({"mixed.example": ["93.184.216.34", "10.0.0.7"]})
    guard = EgressGuard(allow_private=False, clock=ManualClock(), resolver=resolver)
    with pytest.raises(DestinationRejected):
        await guard.pin("https://mixed.example/hook")


async def test_a_public_name_is_pinned_to_its_checked_address_and_cached() -> None:
    clock = ManualClock()
    resolver = StaticResolver({"hooks.example.com": ["93.184.216.34"]})
    guard = EgressGuard(allow_private=False, clock=clock, resolver=resolver, cache_s=30)
    target = await guard.pin("https://hooks.example.com:8443/a?b=1")
    assert str(target.url) == "https://93.184.216.34:8443/a?b=1"
    assert (target.host_header, target.sni_hostname) == (
        "hooks.example.com:8443",
        "hooks.example.com",
    )
    resolver.answers["hooks.example.com"] = ["127.0.0.1"]  # DNS rebinding
    assert (await guard.pin("https://hooks.example.com:8443/a")).ip == "93.184.216.34"
    clock.advance(31)
    with pytest.raises(DestinationRejected):  # the next lookup is checked again
        await guard.pin("https://hooks.example.com:8443/a")
    assert resolver.lookups == ["hooks.example.com", "hooks.example.com"]


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"host": request.headers["host"], "body": (await request.body()).decode()})


async def test_the_request_goes_to_the_pinned_address_with_the_names_host_header() -> None:
    """``hook.test`` exists in no DNS: the request arrives only because the client connects to
    the address the guard resolved, and the server sees the name in ``Host``."""
    app = Starlette(routes=[Route("/x", _echo, methods=["POST"])])
    async with serve_app(app) as base:
        port = httpx.URL(base).port
        guard = EgressGuard(
            allow_private=True,
            clock=ManualClock(),
            resolver=StaticResolver({"hook.test": ["127.0.0.1"]}),
        )
        async with httpx.AsyncClient(follow_redirects=False) as client:
            response = await guard.post(
                client, f"http://hook.test:{port}/x", content=b"hi", headers={}
            )
    assert response.json() == {"host": f"hook.test:{port}", "body": "hi"}


async def test_tls_to_the_pinned_address_checks_the_certificate_for_the_name(
    tmp_path: Path,
) -> None:
    certs = make_certificates(tmp_path, "hook.test")
    app = Starlette(routes=[Route("/x", _echo, methods=["POST"])])
    async with serve_app(app, **certs.server_options()) as base:
        port = httpx.URL(base).port
        guard = EgressGuard(
            allow_private=True,
            clock=ManualClock(),
            resolver=StaticResolver({"hook.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}),
        )
        transport = httpx.AsyncHTTPTransport(verify=certs.client_context())
        async with httpx.AsyncClient(transport=transport) as client:
            response = await guard.post(
                client, f"https://hook.test:{port}/x", content=b"tls", headers={}
            )
            assert response.json() == {"host": f"hook.test:{port}", "body": "tls"}
        # A name the certificate is not for fails the TLS check (SNI and verification use the
        # name, not the address): a fresh client, so no connection is reused.
        async with httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(verify=certs.client_context())
        ) as client:
            with pytest.raises(DestinationUnavailable, match="certificate verify failed"):
                await guard.post(client, f"https://other.test:{port}/x", content=b"", headers={})
