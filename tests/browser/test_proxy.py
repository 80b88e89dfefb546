"""The browser's only way out, spoken to directly: a SOCKS5 client against the pool's proxy."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from services.browser_pool.proxy import Socks5Proxy
from services.browser_pool.url_policy import Allowlist, UrlPolicy

ALLOWED = "127.0.0.3"


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[Socks5Proxy, int]]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = Socks5Proxy(UrlPolicy(Allowlist.parse(ALLOWED)))
    await server.serve(listener)
    yield server, port
    await server.close()


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, ALLOWED, 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def _request(port: int, command: int, host: str, target_port: int) -> tuple[int, bytes]:
    """The proxy's reply code to one request, and what it then relays of b'ping'."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"\x05\x01\x00")
        assert await reader.readexactly(2) == b"\x05\x00"
        name = host.encode()
        writer.write(bytes((5, command, 0, 3, len(name))) + name + struct.pack("!H", target_port))
        reply = await reader.readexactly(10)
        if reply[1] != 0:
            return reply[1], b""
        writer.write(b"ping")
        return 0, await asyncio.wait_for(reader.read(100), 5)
    finally:
        writer.close()


async def test_an_allowed_target_is_relayed(proxy: tuple[Socks5Proxy, int], echo: int) -> None:
    _, port = proxy
    assert await _request(port, 1, ALLOWED, echo) == (0, b"ping")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::ffff:127.0.0.1", "169.254.169.254"])
async def test_a_denied_target_is_refused_and_the_reason_kept(
    proxy: tuple[Socks5Proxy, int], host: str
) -> None:
    server, port = proxy
    assert await _request(port, 1, host, 9999) == (2, b"")  # not allowed by ruleset
    assert "non-public" in (server.denial(host, 9999) or "")


@pytest.mark.parametrize(("command", "name"), [(2, "BIND"), (3, "UDP ASSOCIATE")])
async def test_only_connect_is_served(
    proxy: tuple[Socks5Proxy, int], echo: int, command: int, name: str
) -> None:
    _, port = proxy
    # Even towards an allowed address: these would be ways around the per-connection check.
    assert await _request(port, command, ALLOWED, echo) == (7, b""), name
