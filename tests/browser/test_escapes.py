"""Ways out a page might try, each aimed at listeners on the host's 127.0.0.1.

The test pool does not allowlist 127.0.0.1, where the host's own services listen. Every
connection, packet or accept a listener records is an escape. Where the page surely tries
to connect, the pool's log must also show the proxy's denial for that port: the attempt was
made and the policy, not some accident, stopped it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

import grpc
import pytest

from sandmesh.browser.v1 import browser_pb2, browser_pb2_grpc
from tests.browser.conftest import PageServer, PoolProcess, page

if TYPE_CHECKING:
    Stub: TypeAlias = browser_pb2_grpc.BrowserPoolServiceAsyncStub


@dataclass
class Trap:
    """A TCP listener and a UDP socket on the host's 127.0.0.1, recording what reaches them."""

    tcp: socket.socket
    udp: socket.socket
    accepted: list[tuple[str, int]] = field(default_factory=list)
    packets: list[bytes] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def tcp_port(self) -> int:
        return int(self.tcp.getsockname()[1])

    @property
    def udp_port(self) -> int:
        return int(self.udp.getsockname()[1])

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, peer = self.tcp.accept()
            except TimeoutError:
                continue
            self.accepted.append(peer)
            connection.close()

    def _receive(self) -> None:
        while not self.stopped.is_set():
            try:
                self.packets.append(self.udp.recv(2048))
            except TimeoutError:
                continue


@pytest.fixture
def trap() -> Iterator[Trap]:
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    found = Trap(tcp, udp)
    threads = [
        threading.Thread(target=found._accept, daemon=True),
        threading.Thread(target=found._receive, daemon=True),
    ]
    for sock in (tcp, udp):
        sock.settimeout(0.2)  # so the threads see the stop
    for thread in threads:
        thread.start()
    yield found
    found.stopped.set()
    for thread in threads:
        thread.join()
    tcp.close()
    udp.close()


def _denials(pool_process: PoolProcess, port: int) -> list[str]:
    """Hosts the proxy refused to connect to on `port`."""
    return [
        str(entry["host"])
        for entry in pool_process.log_entries("connection denied")
        if entry.get("port") == port
    ]


async def _evaluate(pool: Stub, pages: PageServer, function: str, *args: object) -> object:
    """The function's value, or the page error it ended with (a navigation may end it)."""
    try:
        response = await pool.Evaluate(
            browser_pb2.EvaluateRequest(
                page=page(pages.url("/")), function=function, args_json=json.dumps(list(args))
            ),
            timeout=30,
        )
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        return error.details()
    return json.loads(response.result_json)


WORKER_SOCKET = """(url) => new Promise((done) => {
    const source = `const s = new WebSocket(${JSON.stringify(url)});
        s.onopen = () => postMessage('open'); s.onerror = () => postMessage('error');`;
    const worker = new Worker(URL.createObjectURL(new Blob([source])));
    worker.onmessage = (event) => done(event.data);
    setTimeout(() => done('no answer'), 10000);
})"""

SHARED_WORKER_SOCKET = """(url) => new Promise((done) => {
    const source = `onconnect = (event) => { const port = event.ports[0];
        const s = new WebSocket(${JSON.stringify(url)});
        s.onopen = () => port.postMessage('open'); s.onerror = () => port.postMessage('error'); };`;
    const worker = new SharedWorker(URL.createObjectURL(new Blob([source])));
    worker.port.onmessage = (event) => done(event.data);
    worker.port.start();
    setTimeout(() => done('no answer'), 10000);
})"""


@pytest.mark.parametrize(
    "probe", [WORKER_SOCKET, SHARED_WORKER_SOCKET], ids=["dedicated", "shared"]
)
async def test_a_workers_websocket_is_refused_by_the_policy(
    pool: Stub, pool_process: PoolProcess, pages: PageServer, trap: Trap, probe: str
) -> None:
    outcome = await _evaluate(pool, pages, probe, f"ws://127.0.0.1:{trap.tcp_port}/socket")
    assert outcome == "error"
    assert trap.accepted == []
    assert "127.0.0.1" in _denials(pool_process, trap.tcp_port)


# Each starts a connection the page does not wait for, then lets it happen.
SIDE_DOORS = {
    "meta refresh": """(url) => { const meta = document.createElement('meta');
        meta.httpEquiv = 'refresh'; meta.content = '0;url=' + url;
        document.head.append(meta); return new Promise((done) => setTimeout(done, 2000)); }""",
    "popup": """(url) => { window.open(url);
        return new Promise((done) => setTimeout(done, 2000)); }""",
    "image": """(url) => new Promise((done) => {
        const img = new Image(); img.onerror = () => done('error'); img.onload = () => done('load');
        img.src = url; })""",
    "script": """(url) => new Promise((done) => {
        const s = document.createElement('script'); s.onerror = () => done('error');
        s.onload = () => done('load'); s.src = url; document.head.append(s); })""",
    "stylesheet": """(url) => new Promise((done) => {
        const l = document.createElement('link'); l.rel = 'stylesheet'; l.href = url;
        l.onerror = () => done('error'); l.onload = () => done('load');
        document.head.append(l); })""",
    "beacon": """(url) => { navigator.sendBeacon(url, 'x');
        return new Promise((done) => setTimeout(done, 2000)); }""",
    "event source": """(url) => new Promise((done) => {
        const e = new EventSource(url); e.onerror = () => { e.close(); done('error'); }; })""",
}


@pytest.mark.parametrize("door", list(SIDE_DOORS))
async def test_navigations_popups_and_subresources_make_no_connection(
    pool: Stub, pool_process: PoolProcess, pages: PageServer, trap: Trap, door: str
) -> None:
    await _evaluate(pool, pages, SIDE_DOORS[door], f"http://127.0.0.1:{trap.tcp_port}/{door}")
    assert trap.accepted == []
    assert "127.0.0.1" in _denials(pool_process, trap.tcp_port)


async def test_preconnect_and_prefetch_make_no_connection(
    pool: Stub, pages: PageServer, trap: Trap
) -> None:
    # Chromium may or may not act on these hints; whatever it does must not reach the host.
    hints = """(url) => { for (const rel of ['preconnect', 'dns-prefetch', 'prefetch']) {
        const l = document.createElement('link'); l.rel = rel; l.href = url;
        document.head.append(l); } return new Promise((done) => setTimeout(done, 2000)); }"""
    await _evaluate(pool, pages, hints, f"http://127.0.0.1:{trap.tcp_port}/hint")
    assert trap.accepted == []


IPV6_FORMS = [
    "[::ffff:127.0.0.1]",
    "[::127.0.0.1]",
    "[::ffff:0:127.0.0.1]",
    "[64:ff9b::7f00:1]",
    "[2002:7f00:1::]",
    "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo, client 127.0.0.1
]


async def test_ipv6_spellings_of_loopback_are_refused_in_the_browser(
    pool: Stub, pool_process: PoolProcess, pages: PageServer, trap: Trap
) -> None:
    probe = """(urls) => Promise.all(urls.map((url) => fetch(url, {mode: 'no-cors'})
        .then(() => 'reached', () => 'blocked')))"""
    urls = [f"http://{host}:{trap.tcp_port}/" for host in IPV6_FORMS]
    assert await _evaluate(pool, pages, probe, urls) == ["blocked"] * len(IPV6_FORMS)
    assert trap.accepted == []
    refused = {
        ipaddress.ip_address(host.strip("[]")) for host in _denials(pool_process, trap.tcp_port)
    }
    for host in IPV6_FORMS:
        address = ipaddress.ip_address(host.strip("[]"))
        # The policy judges ::ffff:a.b.c.d as a.b.c.d, and may log it so.
        assert address in refused or getattr(address, "ipv4_mapped", None) in refused, host


async def test_webrtc_reaches_nothing_on_the_host(
    pool: Stub, pages: PageServer, trap: Trap
) -> None:
    gather = """(udp, tcp) => new Promise(async (done) => {
        const pc = new RTCPeerConnection({iceServers: [
            {urls: `stun:127.0.0.1:${udp}`},
            {urls: `turn:127.0.0.1:${udp}?transport=udp`, username: 'u', credential: 'p'},
            {urls: `turn:127.0.0.1:${tcp}?transport=tcp`, username: 'u', credential: 'p'},
        ]});
        const candidates = [];
        pc.onicecandidate = (event) =>
            event.candidate && candidates.push(event.candidate.candidate);
        pc.onicegatheringstatechange = () =>
            pc.iceGatheringState === 'complete' && setTimeout(() => done(candidates), 500);
        pc.createDataChannel('probe');
        await pc.setLocalDescription(await pc.createOffer());
        setTimeout(() => done(candidates), 8000);
    })"""
    candidates = await _evaluate(pool, pages, gather, trap.udp_port, trap.tcp_port)
    assert isinstance(candidates, list), candidates
    await asyncio.sleep(0.5)  # anything still in flight lands before we look
    assert trap.packets == []
    assert trap.accepted == []
    assert not any(" srflx " in c or " relay " in c for c in candidates), candidates
