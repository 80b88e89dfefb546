"""The Python SDK (`sandmesh.client.Client` and `AsyncClient`) against the running mesh."""

from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import grpc
import pytest
from psycopg_pool import AsyncConnectionPool

from sandmesh.client import AsyncClient, Client, RetryPolicy
from sandmesh.execution.v1 import execution_pb2
from sandmesh.retry import server_retry_delay
from sandmesh_db.tenants import TenantStore
from sandmesh_devstack.mesh import Mesh
from tests.helpers.servers import Servers

HTTP2_PREFACE = len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
HTTP2_HEADERS = 0x1
NO_RETRIES = RetryPolicy(max_attempts=1)


def program(source: str) -> execution_pb2.ExecutionRequest:
    return execution_pb2.ExecutionRequest(language="python3", source=source)


SLEEPER = program("import time\ntime.sleep(30)\n")
OUTPUT_PROGRAM = program("import sys\nprint('out', flush=True)\nprint('err', file=sys.stderr)\n")


def by_stream(chunks: list[execution_pb2.OutputChunk]) -> tuple[bytes, bytes]:
    """The chunks' stdout and stderr."""
    return (
        b"".join(c.data for c in chunks if c.stream == execution_pb2.OUTPUT_STREAM_STDOUT),
        b"".join(c.data for c in chunks if c.stream == execution_pb2.OUTPUT_STREAM_STDERR),
    )


class _CallCounter:
    """Counts gRPC calls in a client's HTTP/2 bytes: each call opens a stream with HEADERS."""

    def __init__(self, proxy: FaultyProxy) -> None:
        self._proxy = proxy
        self._data = bytearray()
        self._at = HTTP2_PREFACE  # the next frame header
        self._streams: set[int] = set()

    def feed(self, chunk: bytes) -> None:
        self._data += chunk
        while self._at + 9 <= len(self._data):
            header = self._data[self._at : self._at + 9]
            stream = int.from_bytes(header[5:9]) & 0x7FFFFFFF
            if header[3] == HTTP2_HEADERS and stream not in self._streams:
                self._streams.add(stream)
                self._proxy.count_call()
            self._at += 9 + int.from_bytes(header[:3])
        done = min(self._at, len(self._data))
        del self._data[:done]
        self._at -= done


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN, as a crashed peer or a load balancer does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class FaultyProxy:
    """A TCP proxy in front of the gateway that counts connections and gRPC calls, and can
    reset connections or hold the first one back.

    Dropped and stalled connections are what a client meets when a load balancer or a
    gateway pod goes away; the gateway itself cannot be made to produce them on cue.
    """

    def __init__(self, upstream: str, *, reset_first: int = 0, hold_first_s: float = 0.0) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._reset_first = reset_first
        self._hold_first_s = hold_first_s
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.connections = 0
        self.calls = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def count_call(self) -> None:
        with self._lock:
            self.calls += 1

    def reset_all(self) -> None:
        """Drop every open connection at once."""
        with self._lock:
            for sock in self._open:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        self.reset_all()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:  # the listener was closed
                return
            with self._lock:
                self.connections += 1
                number = self.connections
            if number <= self._reset_first:
                _reset(downstream)
            else:
                threading.Thread(target=self._serve, args=(downstream, number), daemon=True).start()

    def _serve(self, downstream: socket.socket, number: int) -> None:
        if number == 1:
            time.sleep(self._hold_first_s)
        upstream = socket.create_connection(self._upstream)
        with self._lock:
            self._open |= {downstream, upstream}
        back = threading.Thread(target=self._pump, args=(upstream, downstream), daemon=True)
        back.start()
        self._pump(downstream, upstream, _CallCounter(self).feed)
        back.join()
        with self._lock:
            self._open -= {downstream, upstream}
        downstream.close()
        upstream.close()

    def _pump(
        self,
        source: socket.socket,
        sink: socket.socket,
        observe: Callable[[bytes], None] | None = None,
    ) -> None:
        try:
            while data := source.recv(65536):
                if observe is not None:
                    observe(data)
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):  # wakes the pump of the other direction
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def proxy_to(
    target: str, *, reset_first: int = 0, hold_first_s: float = 0.0
) -> Iterator[FaultyProxy]:
    proxy = FaultyProxy(target, reset_first=reset_first, hold_first_s=hold_first_s)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def gateway_target(mesh: Mesh) -> str:
    return mesh.services["gateway"].target


@pytest.fixture
def proxy(gateway_target: str) -> Iterator[FaultyProxy]:
    with proxy_to(gateway_target) as proxy:
        yield proxy


@pytest.fixture
def resetting_proxy(gateway_target: str) -> Iterator[FaultyProxy]:
    with proxy_to(gateway_target, reset_first=1) as proxy:
        yield proxy


@pytest.fixture
def slow_proxy(gateway_target: str) -> Iterator[FaultyProxy]:
    with proxy_to(gateway_target, hold_first_s=1.5) as proxy:
        yield proxy


def test_sync_client_runs_a_program_to_completed_with_its_output(
    gateway_target: str, servers: Servers
) -> None:
    chunks: list[execution_pb2.OutputChunk] = []
    statuses: list[int] = []
    with Client(gateway_target, servers.api_key, timeout=60) as sandmesh:
        result = sandmesh.run(
            OUTPUT_PROGRAM,
            on_output=chunks.append,
            on_status=lambda change: statuses.append(change.status),
        )
    assert result.status == execution_pb2.EXECUTION_STATUS_COMPLETED, result.detail
    assert by_stream(chunks) == (b"out\n", b"err\n")
    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")
    assert statuses[0] == execution_pb2.EXECUTION_STATUS_QUEUED
    assert execution_pb2.EXECUTION_STATUS_RUNNING in statuses


async def test_async_client_runs_a_program_to_completed_with_its_output(
    gateway_target: str, servers: Servers
) -> None:
    chunks: list[execution_pb2.OutputChunk] = []

    async def keep(chunk: execution_pb2.OutputChunk) -> None:
        chunks.append(chunk)

    key = str(uuid.uuid4())
    async with AsyncClient(gateway_target, servers.api_key, timeout=60) as sandmesh:
        result = await sandmesh.run(OUTPUT_PROGRAM, idempotency_key=key, on_output=keep)
        execution = await sandmesh.submit(OUTPUT_PROGRAM, idempotency_key=key)
        stored = await sandmesh.get(execution.id)
    assert result.status == execution_pb2.EXECUTION_STATUS_COMPLETED, result.detail
    assert by_stream(chunks) == (b"out\n", b"err\n")
    assert stored.status == execution_pb2.EXECUTION_STATUS_COMPLETED
    assert stored.result.stdout == b"out\n"


def test_a_deadline_shorter_than_the_program_ends_the_run_quickly(
    gateway_target: str, servers: Servers
) -> None:
    key = str(uuid.uuid4())
    with Client(gateway_target, servers.api_key) as sandmesh:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            sandmesh.run(SLEEPER, idempotency_key=key, timeout=2)
        elapsed = time.monotonic() - started
        # The same key finds the execution the run left behind, so it can be cancelled.
        left_behind = sandmesh.submit(SLEEPER, idempotency_key=key)
        cancelled = sandmesh.cancel(left_behind.id)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 2 + 1.5
    assert cancelled.status == execution_pb2.EXECUTION_STATUS_CANCELLED


async def test_the_run_deadline_spans_submit_and_watch(
    slow_proxy: FaultyProxy, servers: Servers
) -> None:
    key = str(uuid.uuid4())
    async with AsyncClient(slow_proxy.target, servers.api_key) as sandmesh:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sandmesh.run(SLEEPER, idempotency_key=key, timeout=3)
        elapsed = time.monotonic() - started
        await sandmesh.cancel((await sandmesh.submit(SLEEPER, idempotency_key=key)).id)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The submit alone took the 1.5 s hold; a fresh 3 s for the watch would end past 4.5 s.
    assert slow_proxy.calls >= 2  # the submit, then the watch it left time for
    assert elapsed < 3 + 0.9


def test_the_same_idempotency_key_gives_the_same_execution(
    gateway_target: str, servers: Servers
) -> None:
    key = str(uuid.uuid4())
    request = program("print('once')")
    with Client(gateway_target, servers.api_key) as sandmesh:
        first = sandmesh.submit(request, idempotency_key=key)
        again = sandmesh.submit(request, idempotency_key=key)
        # Without a key each submit is its own: the client makes a key per call.
        one, other = sandmesh.submit(request), sandmesh.submit(request)
    assert first.id == again.id
    assert one.id != other.id and first.id not in (one.id, other.id)


async def test_unavailable_is_retried_until_the_gateway_answers(
    gateway_target: str, servers: Servers
) -> None:
    # Retries off: the reset connection surfaces as UNAVAILABLE, which is what gets retried.
    with proxy_to(gateway_target, reset_first=1) as faults:
        async with AsyncClient(faults.target, servers.api_key, retry=NO_RETRIES) as sandmesh:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await sandmesh.submit(program("print('never')"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with proxy_to(gateway_target, reset_first=1) as faults:
        async with AsyncClient(faults.target, servers.api_key, timeout=30) as sandmesh:
            result = await sandmesh.run(program("print('through')"))
        assert result.status == execution_pb2.EXECUTION_STATUS_COMPLETED, result.detail
        assert result.stdout == b"through\n"
        assert faults.connections >= 2


def test_sync_client_retries_unavailable_too(
    resetting_proxy: FaultyProxy, servers: Servers
) -> None:
    with Client(resetting_proxy.target, servers.api_key, timeout=30) as sandmesh:
        execution = sandmesh.submit(program("print('sync')"))
        assert sandmesh.get(execution.id).id == execution.id
    assert resetting_proxy.connections >= 2


async def test_a_broken_watch_resumes_after_the_last_event(
    proxy: FaultyProxy, servers: Servers
) -> None:
    source = "import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second', flush=True)"
    output = b""
    kinds: list[str] = []
    sequences: list[int] = []
    async with AsyncClient(proxy.target, servers.api_key, timeout=60) as sandmesh:
        execution = await sandmesh.submit(program(source))
        async for event in sandmesh.watch(execution.id):
            kind = event.WhichOneof("kind")
            assert kind is not None
            kinds.append(kind)
            sequences.append(event.sequence)
            if kind == "output":
                if not output:
                    proxy.reset_all()
                output += event.output.data
            elif kind == "result":
                final = event.result
    assert proxy.connections >= 2
    assert output == b"first\nsecond\n"
    assert kinds.count("result") == 1 and kinds[-1] == "result"
    assert final.status == execution_pb2.EXECUTION_STATUS_COMPLETED
    streamed = [sequence for sequence in sequences if sequence]
    assert streamed == sorted(set(streamed))  # nothing came twice


async def test_rate_limit_is_waited_out_as_the_server_asks(
    gateway_target: str, proxy: FaultyProxy, servers: Servers
) -> None:
    async with AsyncConnectionPool(servers.postgres.url, min_size=1, max_size=1) as pool:
        store = TenantStore(pool)
        tenant = f"sdk-{uuid.uuid4().hex[:8]}"
        await store.create_tenant(tenant, "free")  # 2 submissions/s, bursts of 10
        _, key = await store.create_key(tenant)
    request = program("print('rated')")
    # Submitting faster than the rate empties the bucket; without retries a submit is then
    # refused, with RetryInfo saying when the next token is there.
    async with AsyncClient(gateway_target, key, retry=NO_RETRIES) as impatient:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            for _ in range(30):
                await impatient.cancel((await impatient.submit(request)).id)  # spare executors
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 0 < (server_retry_delay(caught.value) or 0) <= 0.5
    # With retries such a submit waits as asked and goes through.
    async with AsyncClient(proxy.target, key, timeout=30) as sandmesh:
        for _ in range(30):
            calls = proxy.calls
            await sandmesh.cancel((await sandmesh.submit(request)).id)
            if proxy.calls - calls > 2:  # more than the submit and the cancel
                break
        else:
            pytest.fail("30 submissions never met the free tier's rate limit")


def test_a_bad_key_is_unauthenticated_without_a_retry(proxy: FaultyProxy, servers: Servers) -> None:
    with (
        Client(proxy.target, "smk_not-a-key") as sandmesh,
        pytest.raises(grpc.RpcError) as caught,
    ):
        sandmesh.submit(program("print('never')"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert proxy.calls == 1
