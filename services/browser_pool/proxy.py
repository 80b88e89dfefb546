"""The one way out of a browser's network namespace: a SOCKS5 proxy applying the URL policy.

Chromium is started with `--proxy-server=socks5://127.0.0.1:<port>` (loopback included), so
every TCP connection its network stack makes, for pages and workers alike, arrives here as
a SOCKS5 CONNECT naming the host and port. The policy resolves the host once and judges the
addresses; the proxy dials those same addresses, never the name again. SOCKS5 rather than
an HTTP proxy: one handshake covers plain HTTP, TLS and WebSockets, there is no request
stream to parse, and a denial fails the connection instead of looking like a page.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections import OrderedDict

from services.browser_pool.url_policy import Denied, UrlPolicy

log = logging.getLogger("sandmesh.browser_pool.proxy")

HANDSHAKE_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
CHUNK = 64 * 1024
DENIALS_KEPT = 256

# RFC 1928 codes.
VERSION = 5
NO_AUTH = 0
NO_ACCEPTABLE_METHOD = 0xFF
CONNECT = 1
IPV4, DOMAIN, IPV6 = 1, 3, 4
SUCCEEDED = 0
NOT_ALLOWED = 2
HOST_UNREACHABLE = 4
COMMAND_NOT_SUPPORTED = 7
ADDRESS_NOT_SUPPORTED = 8


class Socks5Proxy:
    """A SOCKS5 CONNECT-only proxy for one browser, serving on a listener it is given."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy
        # Why recent connections were denied, by (host, port), so a job can say why.
        self.denied: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._server: asyncio.Server | None = None
        self._streams: set[asyncio.StreamWriter] = set()

    async def serve(self, listener: socket.socket) -> None:
        self._server = await asyncio.start_server(self._handle, sock=listener)

    async def close(self) -> None:
        """Stop accepting and cut every connection still open."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._streams):
            writer.close()

    def denial(self, host: str, port: int) -> str | None:
        return self.denied.get((host.strip("[]").lower(), port))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._streams.add(writer)
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                target = await _handshake(reader, writer)
            if target is not None:
                await self._connect(target, reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            pass  # a client that went away or spoke something else: nothing to answer
        finally:
            self._streams.discard(writer)
            writer.close()

    async def _connect(
        self, target: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        host, port = target
        try:
            addresses = await self.policy.connect_addresses(host, port)
        except Denied as exc:
            self._record_denial(host, port, str(exc))
            await _reply(writer, NOT_ALLOWED)
            return
        except OSError:
            await _reply(writer, HOST_UNREACHABLE)
            return
        upstream = None
        for address in addresses:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    upstream = await asyncio.open_connection(str(address), port)
                break
        if upstream is None:
            await _reply(writer, HOST_UNREACHABLE)
            return
        up_reader, up_writer = upstream
        self._streams.add(up_writer)
        try:
            await _reply(writer, SUCCEEDED)
            await asyncio.gather(splice(reader, up_writer), splice(up_reader, writer))
        finally:
            self._streams.discard(up_writer)
            up_writer.close()

    def _record_denial(self, host: str, port: int, reason: str) -> None:
        self.denied[(host.strip("[]").lower(), port)] = reason
        while len(self.denied) > DENIALS_KEPT:
            self.denied.popitem(last=False)
        log.info("connection denied", extra={"host": host[:200], "port": port, "reason": reason})


async def _handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[str, int] | None:
    """The CONNECT target of a SOCKS5 client, or None once the client has been refused."""
    version, count = await reader.readexactly(2)
    methods = await reader.readexactly(count)
    if version != VERSION:
        return None
    if NO_AUTH not in methods:
        writer.write(bytes((VERSION, NO_ACCEPTABLE_METHOD)))
        return None
    writer.write(bytes((VERSION, NO_AUTH)))
    version, command, _, kind = await reader.readexactly(4)
    if kind == IPV4:
        host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
    elif kind == IPV6:
        host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
    elif kind == DOMAIN:
        (length,) = await reader.readexactly(1)
        host = (await reader.readexactly(length)).decode("idna")
    else:
        await _reply(writer, ADDRESS_NOT_SUPPORTED)
        return None
    port = int.from_bytes(await reader.readexactly(2), "big")
    if command != CONNECT:  # BIND and UDP ASSOCIATE would be ways around the policy
        await _reply(writer, COMMAND_NOT_SUPPORTED)
        return None
    return host, port


async def _reply(writer: asyncio.StreamWriter, code: int) -> None:
    # The bound address is of no use to Chromium; RFC 1928 lets it be zeros.
    writer.write(bytes((VERSION, code, 0, IPV4, 0, 0, 0, 0, 0, 0)))
    await writer.drain()


async def splice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then pass the end on (a half-close, not a close)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.close()
