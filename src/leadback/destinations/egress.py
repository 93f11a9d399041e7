"""Outbound HTTP to addresses that users gave us (webhook URLs, browser push endpoints),
guarded against server-side request forgery.

A webhook URL is typed by a marketer and a push endpoint is sent by any browser, so either may
name the cloud metadata service (169.254.169.254), the ClickHouse port on loopback or a host
inside the cluster. The rule (OWASP SSRF cheat sheet, ``references/destinations.md`` §8):

1. the URL is ``https`` (``http`` only where private targets are allowed: tests, development),
   with a host and no user info;
2. the host is resolved once (async, with a timeout) and *every* address it resolves to must be
   public: no loopback, RFC 1918, link-local (metadata), CGNAT 100.64/10, ULA fc00::/7,
   unspecified, multicast, reserved or documentation ranges; an IPv6 address that embeds an
   IPv4 one (``::ffff:a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``) is judged by the
   IPv4 address it carries;
3. the request goes to the resolved address itself (the *pinned* IP), with the original
   ``Host`` header and TLS SNI / certificate check on the original name, so a DNS answer that
   changes between the check and the connection (DNS rebinding) cannot move the request;
4. redirects are never followed (the HTTP client is built with ``follow_redirects=False``).

A refusal is :class:`DestinationRejected` with reason ``target_not_allowed`` (never retried);
DNS failures and timeouts are :class:`DestinationUnavailable`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import httpx

from leadback.clock import Clock
from leadback.destinations.base import DestinationRejected, DestinationUnavailable, clip

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

TARGET_NOT_ALLOWED: Final = "target_not_allowed"
MAX_URL_CHARS: Final = 2048

# Ranges that Python's ``is_global`` does not (in every version) exclude: CGNAT, and the IETF
# protocol assignments block (its few anycast addresses are no webhook's home).
_ALSO_BLOCKED: Final = (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("192.0.0.0/24"))
_NAT64: Final = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (IPv4-mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """Whether a request may go to ``ip`` when private targets are not allowed."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            return is_public_address(inner)
    if any(ip in net for net in _ALSO_BLOCKED):
        return False
    return not (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is an IP literal (brackets and zone id allowed)."""
    text = host.strip("[]").partition("%")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def refused(detail: str) -> DestinationRejected:
    """The one error for a target the guard does not allow."""
    return DestinationRejected(TARGET_NOT_ALLOWED, detail)


def check_url(url: str, *, allow_private: bool) -> httpx.URL:
    """``url`` parsed, if its scheme and form are allowed; :func:`refused` otherwise. Does not
    resolve the host (see :meth:`EgressGuard.pin`)."""
    if len(url) > MAX_URL_CHARS:
        raise refused(f"the URL is longer than {MAX_URL_CHARS} characters")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise refused("the URL does not parse") from exc
    allowed = ("https", "http") if allow_private else ("https",)
    if parsed.scheme not in allowed:
        raise refused(f"scheme {parsed.scheme!r} is not allowed (use https)")
    if not parsed.host:
        raise refused("the URL has no host")
    if parsed.userinfo:
        raise refused("credentials in the URL are not allowed")
    ip = parse_ip(parsed.host)
    if ip is not None and not allow_private and not is_public_address(ip):
        raise refused("the address is not public")
    return parsed


class Resolver(Protocol):
    """Turns a host name into the addresses to connect to."""

    async def resolve(self, host: str, port: int) -> list[str]: ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo``), bounded by a timeout."""

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s

    async def resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout_s):
                infos = await loop.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except TimeoutError as exc:
            raise DestinationUnavailable("dns_timeout", "the host did not resolve in time") from exc
        except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
            raise DestinationUnavailable("dns_failed", "the host did not resolve") from exc
        seen: dict[str, None] = {}
        for *_, sockaddr in infos:
            seen.setdefault(str(sockaddr[0]), None)
        return list(seen)


@dataclass(frozen=True, slots=True)
class PinnedTarget:
    """Where a request really goes: ``url`` has the checked IP as its host."""

    url: httpx.URL
    host_header: str  # the original host[:port], for the Host header
    sni_hostname: str | None  # the original name for TLS (None: an IP literal or plain http)
    ip: str


class EgressGuard:
    """Checks a target, resolves it once and pins the address (see the module docstring).

    A host's checked address is reused for ``cache_s`` seconds (``getaddrinfo`` runs in a
    thread and a push batch names the same push service hundreds of times).
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        clock: Clock,
        resolver: Resolver | None = None,
        cache_s: float = 30.0,
    ) -> None:
        self.allow_private = allow_private
        self._clock = clock
        self._resolver = resolver or SystemResolver()
        self._cache_s = cache_s
        self._cache: dict[tuple[str, int], tuple[float, str]] = {}

    async def pin(self, url: str) -> PinnedTarget:
        """The target of ``url`` with its address checked and pinned."""
        parsed = check_url(url, allow_private=self.allow_private)
        host = parsed.raw_host.decode("ascii")  # IDNA-encoded: what DNS and SNI take
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        literal = parse_ip(host)
        if literal is not None:
            ip = str(literal)
        else:
            ip = await self._resolve_checked(host, port)
        return PinnedTarget(
            url=parsed.copy_with(host=ip),
            host_header=parsed.netloc.decode("ascii"),
            sni_hostname=host if literal is None and parsed.scheme == "https" else None,
            ip=ip,
        )

    async def _resolve_checked(self, host: str, port: int) -> str:
        now = self._clock.monotonic()
        cached = self._cache.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        addresses = await self._resolver.resolve(host, port)
        if not addresses:
            raise DestinationUnavailable("dns_failed", "the host resolved to no address")
        parsed = [parse_ip(a) for a in addresses]
        # Every address must pass: a name that resolves to one public and one private address
        # could be answered with the private one by the next lookup.
        if not self.allow_private and not all(
            ip is not None and is_public_address(ip) for ip in parsed
        ):
            raise refused("the host resolves to an address that is not public")
        if len(self._cache) > 4096:  # many distinct hosts: start over rather than grow
            self._cache.clear()
        self._cache[(host, port)] = (now + self._cache_s, addresses[0])
        return addresses[0]

    async def post(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        content: bytes,
        headers: Mapping[str, str],
    ) -> httpx.Response:
        """POST ``content`` to ``url`` through the pinned address. Transport failures become
        :class:`DestinationUnavailable`; the response, whatever its status, is returned."""
        target = await self.pin(url)
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
        request = client.build_request(
            "POST",
            target.url,
            content=content,
            headers={**headers, "Host": target.host_header},
            extensions=extensions,
        )
        try:
            # The connection pool is keyed by the pinned IP: hosts sharing an address may share
            # a connection, which still ends at the address that was checked.
            return await client.send(request)
        except httpx.TimeoutException as exc:
            raise DestinationUnavailable("timeout", type(exc).__name__) from exc
        except httpx.TransportError as exc:
            # The message is the socket's or TLS's ("certificate verify failed: ..."): no URL.
            detail = clip(f"{type(exc).__name__}: {exc}", 300)
            raise DestinationUnavailable("connection_error", detail) from exc
