"""A small async client for the gateway: submit a program and follow it to its result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc

OutputHandler = Callable[[execution_pb2.OutputChunk], Awaitable[None] | None]


def _with_key(details: Any, header: tuple[str, str]) -> Any:
    return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), header))


# grpc.aio files an interceptor under the first call kind it implements only, so unary and
# streaming calls each need their own.
class _UnaryKey(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_key(details, self._header), request)


class _StreamKey(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_key(details, self._header), request)


def connect(target: str, api_key: str | None = None) -> grpc.aio.Channel:
    """A channel to the gateway at `target` whose calls carry `authorization: Bearer <key>`."""
    header = ("authorization", f"Bearer {api_key}")
    interceptors: list[grpc.aio.ClientInterceptor] = (
        [_UnaryKey(header), _StreamKey(header)] if api_key else []
    )
    return grpc.aio.insecure_channel(target, interceptors=interceptors)


class StreamEnded(RuntimeError):
    """The watch stream closed before the final result arrived."""


async def run(
    channel: grpc.aio.Channel,
    request: execution_pb2.ExecutionRequest,
    *,
    timeout: float = 120.0,
    on_output: OutputHandler | None = None,
    on_status: Callable[[execution_pb2.StatusChange], None] | None = None,
) -> execution_pb2.ExecutionResult:
    """Submit `request` and watch it to the end, passing output chunks to `on_output` and
    status changes (queued with its position, running) to `on_status`.

    Raises grpc.aio.AioRpcError when the gateway refuses the call.
    """
    gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
    submitted = await gateway.SubmitExecution(
        gateway_pb2.SubmitExecutionRequest(request=request), timeout=timeout
    )
    if on_status is not None:
        on_status(
            execution_pb2.StatusChange(
                status=submitted.execution.status,
                queue_position=submitted.execution.queue_position,
            )
        )
    async for response in gateway.WatchExecution(
        gateway_pb2.WatchExecutionRequest(execution_id=submitted.execution.id), timeout=timeout
    ):
        event = response.event
        if event.HasField("output") and on_output is not None:
            pending = on_output(event.output)
            if pending is not None:
                await pending
        elif event.HasField("status") and on_status is not None:
            on_status(event.status)
        elif event.HasField("result"):
            return event.result
    raise StreamEnded(f"the watch of {submitted.execution.id} ended without a result")


def status_name(status: execution_pb2.ExecutionStatus.ValueType) -> str:
    """`EXECUTION_STATUS_COMPLETED` → `COMPLETED`."""
    return execution_pb2.ExecutionStatus.Name(status).removeprefix("EXECUTION_STATUS_")
