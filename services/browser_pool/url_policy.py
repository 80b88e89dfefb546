"""Which URLs a page may load and which addresses its browser may connect to: the SSRF rules.

Chromium lives in a network namespace whose only way out is the pool's proxy
(`proxy.Socks5Proxy`), which asks `connect_addresses` about every TCP connection it is asked
for: navigations, redirect hops, subresources, fetch/XHR and WebSockets from pages and
workers, popups, preconnects. The proxy resolves a name once here and dials the very
addresses that were judged, so a name cannot re-resolve elsewhere between check and use
(DNS rebinding). `check` applies the same rules to a whole URL, for the top-level URL of a
job before it takes a page. A host is judged by every address it resolves to, so a name
pointing at a private address is denied like the address itself, and an IPv6 address that
carries an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo, ISATAP) is judged by that
IPv4 address too. Only http(s) and ws(s) reach the network; `data:` and `blob:` stay inside
the page; every other scheme (`file:`, `chrome:`, `ftp:`…) is denied.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NETWORK_SCHEMES = frozenset({"http", "https", "ws", "wss"})
SECURE_SCHEMES = frozenset({"https", "wss"})
# In-page data that never touches the network.
LOCAL_SCHEMES = frozenset({"data", "blob"})
# Cloud metadata names, denied by name too in case a resolver maps them elsewhere.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data"})

DNS_TTL_S = 30.0
DNS_TIMEOUT_S = 5.0


class PolicyError(ValueError):
    """The allowlist setting cannot be parsed."""


@dataclass(frozen=True)
class Allowlist:
    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, raw: str) -> Allowlist:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in (part.strip() for part in raw.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if "/" in entry or ":" in entry:
                    raise PolicyError(f"allowlist entry {entry!r} is not a host or CIDR") from None
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def covers(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def endpoint(url: str) -> tuple[str, int] | None:
    """(host, port) a network URL connects to; None for other URLs."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in NETWORK_SCHEMES:
        return None
    return parts.hostname or "", port or (443 if scheme in SECURE_SCHEMES else 80)


class Denied(Exception):
    """A connection the policy does not allow; the message says why."""


# IPv6 ranges whose last 32 bits are an IPv4 address a connection may end up at: IPv4-
# compatible (::a.b.c.d), IPv4-translated (::ffff:0:a.b.c.d) and the NAT64 well-known prefix.
_IPV4_TAIL = tuple(
    ipaddress.IPv6Network(net) for net in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96")
)
# Local-use NAT64 (RFC 8215) translates to whatever IPv4 the operator's gateway reaches,
# yet Python counts it as global.
_NON_PUBLIC_IPV6 = (ipaddress.IPv6Network("64:ff9b:1::/48"),)
# ISATAP interface identifiers: ::0:5efe:a.b.c.d and ::200:5efe:a.b.c.d.
_ISATAP_IDS = (0x0000_5EFE, 0x0200_5EFE)


def _normalise(address: IPAddress) -> IPAddress:
    # ::ffff:127.0.0.1 is 127.0.0.1 on the wire: judge (and allowlist) it as such.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address carries in one of the standard encodings."""
    found = []
    interface_id = (int(address) >> 32) & 0xFFFF_FFFF
    if any(address in net for net in _IPV4_TAIL) or interface_id in _ISATAP_IDS:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    return found


def denied_address(address: IPAddress) -> bool:
    """Private, loopback, link-local (cloud metadata), shared, reserved, multicast…"""
    address = _normalise(address)
    if isinstance(address, ipaddress.IPv4Address):
        return not address.is_global
    return (
        not address.is_global
        or any(address in net for net in _NON_PUBLIC_IPV6)
        or any(not inner.is_global for inner in embedded_ipv4(address))
    )


@dataclass
class UrlPolicy:
    allowlist: Allowlist
    # (host, port) pairs never reachable whatever the allowlist says: the pool's own
    # DevTools relays, through which a page could otherwise drive a browser.
    reserved: set[tuple[str, int]] = field(default_factory=set)
    _dns: dict[str, tuple[float, tuple[IPAddress, ...]]] = field(default_factory=dict)

    async def check(self, url: str) -> str | None:
        """None when `url` may be loaded, else why not."""
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError:
            return "malformed URL"
        if scheme in LOCAL_SCHEMES:
            return None
        if scheme not in NETWORK_SCHEMES:
            return f"scheme {scheme or '(none)'!r} is not allowed"
        target = endpoint(url)
        if target is None:
            return "malformed URL"
        host, port = target
        try:
            await self.connect_addresses(host, port)
        except Denied as exc:
            return str(exc)
        except OSError:
            # An allowlisted name is trusted by name; the browser reports its own DNS error.
            pass
        return None

    async def connect_addresses(self, host: str, port: int) -> tuple[IPAddress, ...]:
        """The addresses a connection to `host`:`port` may be made to, judged as a whole.

        Raises `Denied` when the policy forbids it and OSError when an allowlisted name
        does not resolve.
        """
        host = host.strip("[]").lower().rstrip(".")
        if not host:
            raise Denied("URL has no host")
        if host in METADATA_HOSTS:
            raise Denied(f"{host} is a cloud metadata address")
        try:
            addresses = await self._resolve(host)
        except OSError as exc:
            if host in self.allowlist.hosts:
                raise
            raise Denied(f"{host} does not resolve: {exc}") from None
        if any((str(address), port) in self.reserved for address in addresses):
            raise Denied(f"{host}:{port} is reserved")
        if host not in self.allowlist.hosts:
            for address in addresses:
                if denied_address(address) and not self.allowlist.covers(address):
                    raise Denied(f"{host} resolves to {address}, a non-public address")
        return addresses

    async def _resolve(self, host: str) -> tuple[IPAddress, ...]:
        try:
            return (_normalise(ipaddress.ip_address(host)),)
        except ValueError:
            pass
        cached = self._dns.get(host)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(DNS_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        addresses = tuple({_normalise(ipaddress.ip_address(info[4][0])) for info in infos})
        if not addresses:
            raise OSError("no addresses")
        if len(self._dns) > 1024:
            self._dns.clear()
        self._dns[host] = (now + DNS_TTL_S, addresses)
        return addresses
