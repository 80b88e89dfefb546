"""Which URLs a page may load: the SSRF rules.

Every request a page makes is checked (see `chromium.Chromium._on_request_paused`): the
navigation, each redirect hop, subresources, fetch/XHR from page scripts and workers.
WebSocket handshakes bypass that interception, so pages' WebSockets are gated per context
(`pool.Pool.job`); a WebSocket opened inside a worker is not, which is why the pod's egress
NetworkPolicy stays the outer wall. A host
is judged by every address it resolves to, so a name pointing at a private address is denied
like the address itself. Only http(s) reaches the network; `data:` and `blob:` stay inside
the page; every other scheme (`file:`, `chrome:`, `ftp:`…) is denied.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable
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


def _normalise(address: IPAddress) -> IPAddress:
    # ::ffff:127.0.0.1 must be judged as 127.0.0.1.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def denied_address(address: IPAddress) -> bool:
    """Private, loopback, link-local (cloud metadata), shared, reserved, multicast…"""
    return not _normalise(address).is_global


@dataclass
class UrlPolicy:
    allowlist: Allowlist
    # (host, port) pairs never reachable whatever the allowlist says: the pool's own
    # DevTools endpoints, which a page could otherwise drive.
    reserved: set[tuple[str, int]] = field(default_factory=set)
    _dns: dict[str, tuple[float, tuple[IPAddress, ...]]] = field(default_factory=dict)

    async def check(self, url: str) -> str | None:
        """None when `url` may be loaded, else why not."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return "malformed URL"
        scheme = parts.scheme.lower()
        if scheme in LOCAL_SCHEMES:
            return None
        if scheme not in NETWORK_SCHEMES:
            return f"scheme {scheme or '(none)'!r} is not allowed"
        host = (parts.hostname or "").rstrip(".")
        if not host:
            return "URL has no host"
        port = port or (443 if scheme in SECURE_SCHEMES else 80)
        if host in METADATA_HOSTS:
            return f"{host} is a cloud metadata address"
        try:
            addresses = await self._resolve(host)
        except OSError as exc:
            # An allowlisted name is trusted by name; the browser reports its own DNS error.
            return None if host in self.allowlist.hosts else f"{host} does not resolve: {exc}"
        if any((str(address), port) in self.reserved for address in addresses):
            return f"{host}:{port} is reserved"
        if host in self.allowlist.hosts:
            return None
        return self._judge(host, addresses)

    def _judge(self, host: str, addresses: Iterable[IPAddress]) -> str | None:
        for address in addresses:
            if denied_address(address) and not self.allowlist.covers(_normalise(address)):
                return f"{host} resolves to {address}, a non-public address"
        return None

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
