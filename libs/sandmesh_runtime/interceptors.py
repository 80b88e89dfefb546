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

from sandmesh_runtime import deadlines, errors, metrics

CallHook = Callable[[str, "grpc.aio.ServicerContext[Any, Any]"], AbstractAsyncContextManager[None]]

log = logging.getLogger("sandmesh.rpc")

_status: contextvars.ContextVar[grpc.StatusCode] = contextvars.ContextVar(
    "call_status", default=grpc.StatusCode.OK
)
_type: contextvars.ContextVar[str] = contextvars.ContextVar("call_type", default="unary")


def call_type() -> str:
    """The current call's kind, as go-grpc-prometheus names it: unary, client_stream,
    server_stream or bidi_stream."""
    return _type.get()


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
    except Exception as exc:
        # What errors.error_hook, further out, will answer.
        refusal = errors.translate(exc)
        _status.set(grpc.StatusCode.UNKNOWN if refusal is None else refusal.code)
        raise


@contextlib.asynccontextmanager
async def _entered(
    hooks: Sequence[CallHook],
    method: str,
    context: grpc.aio.ServicerContext[Any, Any],
    kind: str,
) -> AsyncIterator[None]:
    _type.set(kind)
    async with contextlib.AsyncExitStack() as stack:
        for hook in hooks:
            await stack.enter_async_context(hook(method, context))
            # Inside every hook, so each sees how the handler, or a hook within it, ended.
            stack.enter_context(_recording_status(context))
        yield


def _wrap(handler: Any, method: str, hooks: Sequence[CallHook]) -> Any:
    """The handler with `hooks` around it, whatever its kind: every call is authenticated,
    bounded, logged and traced, streams from the client included."""
    # grpc's stubs type handlers as synchronous; in grpc.aio their behaviours are coroutines
    # (unary responses) or async generators (streamed responses).
    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        unary_unary = handler.unary_unary

        async def answer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with _entered(hooks, method, context, "unary"):
                return await unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(answer, **codecs)
    if handler.stream_unary is not None:
        stream_unary = handler.stream_unary

        async def answer_stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with _entered(hooks, method, context, "client_stream"):
                return await stream_unary(requests, context)

        return grpc.stream_unary_rpc_method_handler(answer_stream, **codecs)
    if handler.unary_stream is not None:
        unary_stream = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with _entered(hooks, method, context, "server_stream"):
                async for response in unary_stream(request, context):
                    yield response

        return grpc.unary_stream_rpc_method_handler(stream, **codecs)
    stream_stream = handler.stream_stream

    async def exchange(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        async with _entered(hooks, method, context, "bidi_stream"):
            async for response in stream_stream(requests, context):
                yield response

    return grpc.stream_stream_rpc_method_handler(exchange, **codecs)


class HookInterceptor(grpc.aio.ServerInterceptor):
    """Applies `hooks` to every method of the server, of all four kinds."""

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
        service, _, name = method.lstrip("/").partition("/")
        metrics.RPC_HANDLED.labels(service, name, call_type(), code.name).inc()
        metrics.RPC_HANDLING.labels(service, name, call_type()).observe(elapsed)
        log.info(
            "rpc",
            extra={
                "method": method,
                "code": code.name,
                "duration_ms": round(elapsed * 1000, 2),
                "time_left_ms": None if left is None else round(left * 1000, 1),
            },
        )
