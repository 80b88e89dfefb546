"""One server interceptor that runs per-call hooks around every handler.

Hooks are async context managers entered before the handler and left after it, in the
handler's own task, so context variables they set (deadline, tenant) are visible to it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

from sandmesh_runtime import deadlines, metrics

CallHook = Callable[[str, "grpc.aio.ServicerContext[Any, Any]"], AbstractAsyncContextManager[None]]

log = logging.getLogger("sandmesh.rpc")

_status: contextvars.ContextVar[grpc.StatusCode] = contextvars.ContextVar(
    "call_status", default=grpc.StatusCode.OK
)


def call_status() -> grpc.StatusCode:
    """The status code the current call ended with, for a hook leaving after the handler
    (and the hooks inside it) returned or raised."""
    return _status.get()


@contextlib.contextmanager
def _recording_status(context: grpc.aio.ServicerContext[Any, Any]) -> Iterator[None]:
    _status.set(grpc.StatusCode.OK)
    try:
        yield
    except grpc.aio.AbortError:
        _status.set(context.code() or grpc.StatusCode.UNKNOWN)
        raise
    except Exception:
        _status.set(grpc.StatusCode.UNKNOWN)
        raise


@contextlib.asynccontextmanager
async def _entered(
    hooks: Sequence[CallHook], method: str, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for hook in hooks:
            await stack.enter_async_context(hook(method, context))
            # Inside every hook, so each sees how the handler, or a hook within it, ended.
            stack.enter_context(_recording_status(context))
        yield


def _wrap(handler: Any, method: str, hooks: Sequence[CallHook]) -> Any:
    # grpc's stubs type handlers as synchronous; in grpc.aio their behaviours are coroutines.
    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with _entered(hooks, method, context):
                return await unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with _entered(hooks, method, context):
                async for response in stream(request, context):
                    yield response

        return grpc.unary_stream_rpc_method_handler(
            unary_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


class HookInterceptor(grpc.aio.ServerInterceptor):
    """Applies `hooks` to every unary-unary and unary-stream method of the server."""

    def __init__(self, hooks: Sequence[CallHook]) -> None:
        self._hooks = tuple(hooks)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _wrap(handler, handler_call_details.method, self._hooks)


@contextlib.asynccontextmanager
async def logging_hook(
    method: str, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[None]:
    """Call hook: one log line per call with its status, duration and the time it was given."""
    if method.startswith("/grpc.health.") or method.startswith("/grpc.reflection."):
        yield
        return
    left = deadlines.time_left()
    started = time.monotonic()
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, grpc.aio.AbortError):
            log.exception("rpc failed", extra={"method": method})
        raise
    finally:
        code = call_status()
        elapsed = time.monotonic() - started
        service = metrics.SERVICE["name"]
        metrics.RPC_REQUESTS.labels(service, method, code.name).inc()
        metrics.RPC_LATENCY.labels(service, method).observe(elapsed)
        log.info(
            "rpc",
            extra={
                "method": method,
                "code": code.name,
                "duration_ms": round(elapsed * 1000, 2),
                "time_left_ms": None if left is None else round(left * 1000, 1),
            },
        )
