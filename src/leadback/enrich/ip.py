"""Client IPs: find the real client behind trusted proxies, and truncate before storage.

Privacy rule: an IP never reaches Kafka whole. IPv4 keeps its /24 (``203.0.113.77`` ->
``203.0.113.0``), IPv6 its /48 (``2001:db8:abcd:12::1`` -> ``2001:db8:abcd::``); an
IPv4-mapped IPv6 address (``::ffff:1.2.3.4``) is treated as the IPv4 address it carries.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

_V6_KEEP_MASK: Final = ((1 << 48) - 1) << 80  # the top 48 bits
_V4_KEEP_MASK: Final = 0xFFFF_FF00


def _fast_v4_prefix(ip: str) -> str | None:
    """``a.b.c`` when ``ip`` is a canonical dotted-quad IPv4 address, else None."""
    parts = ip.split(".")
    if len(parts) != 4:
        return None
    for part in parts:
        # ASCII digits only, 1-3 of them, no leading zero (ipaddress refuses those too).
        if (
            not part.isascii()
            or not part.isdigit()
            or len(part) > 3
            or (part[0] == "0" and len(part) > 1)
            or int(part) > 255
        ):
            return None
    return ip[: ip.rfind(".")]


def _parse(ip: str) -> Address | None:
    """An address from its text, zone id stripped, IPv4-mapped IPv6 unwrapped; None if invalid."""
    if "%" in ip:
        ip, _, _ = ip.partition("%")
        if ":" not in ip:  # zone ids exist only on IPv6 addresses
            return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


_TRUNCATED_CACHE_SIZE = 8192
_truncated: dict[str, str | None] = {}


def truncate_ip(ip: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network address of ``ip`` as text; None if not an IP."""
    # Cached: a client sends many requests, and parsing an address costs a few µs.
    try:
        return _truncated[ip]
    except KeyError:
        pass
    if len(_truncated) >= _TRUNCATED_CACHE_SIZE:
        _truncated.clear()
    result = _truncated[ip] = _truncate(ip)
    return result


def _truncate(ip: str) -> str | None:
    prefix = _fast_v4_prefix(ip)
    if prefix is not None:
        return prefix + ".0"
    addr = _parse(ip)
    if addr is None:
        return None
    if isinstance(addr, ipaddress.IPv4Address):
        return str(ipaddress.IPv4Address(int(addr) & _V4_KEEP_MASK))
    return str(ipaddress.IPv6Address(int(addr) & _V6_KEEP_MASK))


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings -> networks (host bits allowed: ``10.0.0.1/8`` means ``10.0.0.0/8``).

    Raises ``ValueError`` for a string that is not a network (settings validate them first).
    """
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def _is_trusted(addr: Address, trusted: Sequence[Network]) -> bool:
    return any(addr in net for net in trusted)


def _forwarded_entry(entry: str) -> str:
    """One X-Forwarded-For entry without brackets or a port (``[::1]:80``, ``1.2.3.4:80``)."""
    entry = entry.strip()
    if entry.startswith("["):
        return entry[1:].partition("]")[0]
    if entry.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has 2+ colons
        return entry.partition(":")[0]
    return entry


def client_ip(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]
) -> str | None:
    """The client's IP (not truncated): the peer, or, behind trusted proxies, the client
    they report in X-Forwarded-For.

    When the peer is in a trusted network, X-Forwarded-For is walked right to left (each
    proxy appends the address it saw), skipping trusted addresses; the first untrusted
    address is the client. Anything left of it was written by the client and is ignored.
    If that entry is not an IP, the client is unknown and None is returned: believing the
    entries further left would let a client choose its own address. If every entry is
    trusted, the leftmost one is returned; with no entries, the peer.
    """
    if not peer:
        return None
    peer_addr = _parse(peer)
    if peer_addr is None:
        return None
    if not trusted or not forwarded_for or not _is_trusted(peer_addr, trusted):
        return str(peer_addr)
    client: Address = peer_addr
    for raw in reversed(forwarded_for.split(",")):
        entry = _forwarded_entry(raw)
        if not entry:
            continue
        addr = _parse(entry)
        if addr is None:
            return None
        client = addr
        if not _is_trusted(addr, trusted):
            break
    return str(client)
