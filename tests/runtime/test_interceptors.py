"""The call hooks around a server stream that grpc abandons."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from sandmesh_runtime import deadlines, interceptors, telemetry


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
