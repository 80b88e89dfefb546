"""The call hooks: around every call kind, at one error boundary, and around a server
stream that grpc abandons."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2

from sandmesh_runtime import deadlines, errors, interceptors, telemetry


@dataclass
class _Details(grpc.HandlerCallDetails):
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class _Context:
    """Stands in for grpc's ServicerContext with what the hooks read: the closing of a
    stream from another context cannot be brought about on cue through a real server."""

    def time_remaining(self) -> float:
        return 5.0

    def code(self) -> None:
        return None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


async def test_a_stream_closed_from_another_context_ends_without_error() -> None:
    async def watch(request: Any, context: Any) -> AsyncIterator[str]:
        yield "first"
        yield "second"

    async def continuation(details: Any) -> Any:
        return grpc.unary_stream_rpc_method_handler(watch)

    hooks = [telemetry.tracing_hook, deadlines.deadline_hook, interceptors.logging_hook]
    handler = await interceptors.HookInterceptor(hooks).intercept_service(
        continuation, _Details("/test.v1.TestService/Watch", ())
    )
    stream = handler.unary_stream(None, _Context())
    assert await stream.__anext__() == "first"
    # What the event loop's finalizer does with a stream grpc stopped reading: aclose() in
    # a new task, in a context of its own.
    await asyncio.create_task(stream.aclose(), context=contextvars.Context())


@contextlib.asynccontextmanager
async def _key_hook(method: str, context: Any) -> AsyncIterator[None]:
    """Stands for the gateway's authentication: no key, no call."""
    if ("authorization", "Bearer k") not in context.invocation_metadata():
        raise errors.Unauthenticated("missing API key")
    yield


def _answer(request: bytes) -> bytes:
    """What every handler answers: the deadline the hooks exposed, and the request."""
    left = deadlines.time_left()
    return b"deadline:" + (b"yes" if left is not None and left > 0 else b"no") + b":" + request


async def _unary_unary(request: bytes, context: Any) -> bytes:
    if request == b"missing":
        raise errors.NotFound("no such thing")
    if request == b"database down":
        raise psycopg.OperationalError("connection refused")
    return _answer(request)


async def _stream_unary(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return _answer(b"".join([r async for r in requests]))


async def _unary_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield _answer(request)
    yield _answer(request)


async def _stream_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield _answer(request)


KINDS: dict[str, Any] = {
    "UnaryUnary": grpc.unary_unary_rpc_method_handler(_unary_unary),
    "StreamUnary": grpc.stream_unary_rpc_method_handler(_stream_unary),
    "UnaryStream": grpc.unary_stream_rpc_method_handler(_unary_stream),
    "StreamStream": grpc.stream_stream_rpc_method_handler(_stream_stream),
}


@pytest.fixture
async def hooked() -> AsyncIterator[grpc.aio.Channel]:
    """A real server with the runtime's hooks and a key check around all four kinds."""
    hooks = [deadlines.deadline_hook, interceptors.logging_hook, errors.error_hook, _key_hook]
    server = grpc.aio.server(interceptors=[interceptors.HookInterceptor(hooks)])
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.v1.KindsService", KINDS)]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


async def _call(channel: Any, kind: str, key: bool) -> list[bytes]:
    # Raw bytes in and out: the channel's typed multicallables are not needed here.
    method = f"/test.v1.KindsService/{kind}"
    metadata = (("authorization", "Bearer k"),) if key else ()

    async def requests() -> AsyncIterator[bytes]:
        # A refused call sends nothing: a request racing the refusal would fail on its own.
        if key:
            yield b"a"
            yield b"b"

    if kind == "UnaryUnary":
        return [await channel.unary_unary(method)(b"ab", timeout=5, metadata=metadata)]
    if kind == "StreamUnary":
        return [await channel.stream_unary(method)(requests(), timeout=5, metadata=metadata)]
    if kind == "UnaryStream":
        return [r async for r in channel.unary_stream(method)(b"ab", timeout=5, metadata=metadata)]
    call = channel.stream_stream(method)(requests(), timeout=5, metadata=metadata)
    return [r async for r in call]


@pytest.mark.parametrize("kind", list(KINDS))
async def test_every_call_kind_passes_through_the_hooks(
    hooked: grpc.aio.Channel, kind: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _call(hooked, kind, key=False)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    answers = await _call(hooked, kind, key=True)
    assert answers and all(a.startswith(b"deadline:yes:") for a in answers)


async def test_domain_and_foreign_errors_become_statuses_at_one_boundary(
    hooked: grpc.aio.Channel,
) -> None:
    call: Any = hooked.unary_unary("/test.v1.KindsService/UnaryUnary")
    metadata = (("authorization", "Bearer k"),)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await call(b"missing", timeout=5, metadata=metadata)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing.value.details() == "no such thing"
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await call(b"database down", timeout=5, metadata=metadata)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    (retry,) = errors.details_of(down.value)
    assert isinstance(retry, error_details_pb2.RetryInfo) and retry.retry_delay.seconds == 1
