"""The gateway's gRPC servicer: validates, then forwards within the caller's deadline."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
import nats.errors
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.api import ConsumerConfig, DeliverPolicy

from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from sandmesh_queue import subjects
from sandmesh_queue.connection import Queue
from sandmesh_runtime import deadlines, errors
from services.gateway import validation
from services.gateway.settings import GatewaySettings

log = logging.getLogger("sandmesh.gateway")

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

# Until API keys land, every caller acts for this tenant.
DEFAULT_TENANT = "default"
# A watcher that hears nothing for this long re-reads the state, in case an event was lost.
WATCH_RECHECK_S = 2.0


def _tenant(context: Context) -> str:
    return DEFAULT_TENANT


async def _forward_error(context: Context, error: grpc.aio.AioRpcError) -> None:
    """Pass a downstream refusal on unchanged, details included."""
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        await errors.abort(context, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
    status = await _rich_status(error)
    if status is not None:
        await context.abort_with_status(status)
    await context.abort(error.code(), error.details() or "")


async def _rich_status(error: grpc.aio.AioRpcError) -> Any:
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    return None if status is None else rpc_status.to_status(status)


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(
        self,
        scheduler: scheduler_pb2_grpc.SchedulerServiceAsyncStub,
        queue: Queue,
        settings: GatewaySettings,
    ) -> None:
        self._scheduler = scheduler
        self._queue = queue
        self._settings = settings

    async def _get(self, context: Context, execution_id: str) -> execution_pb2.Execution:
        try:
            response = await self._scheduler.GetExecution(
                scheduler_pb2.GetExecutionRequest(
                    tenant=_tenant(context), execution_id=execution_id
                ),
                timeout=deadlines.timeout(self._settings.downstream_timeout_s),
            )
        except grpc.aio.AioRpcError as error:
            await _forward_error(context, error)
        return response.execution

    async def SubmitExecution(
        self, request: gateway_pb2.SubmitExecutionRequest, context: Context
    ) -> gateway_pb2.SubmitExecutionResponse:
        problems = validation.execution_request(
            request.request, "request", self._settings.max_source_bytes
        )
        if problems:
            await errors.invalid_argument(context, problems)
        deadline = Timestamp()
        deadline.FromNanoseconds(int((time.time() + self._settings.queue_ttl_s) * 1e9))
        try:
            response = await self._scheduler.Enqueue(
                scheduler_pb2.EnqueueRequest(
                    tenant=_tenant(context),
                    request=request.request,
                    idempotency_key=request.idempotency_key,
                    deadline=deadline,
                ),
                timeout=deadlines.timeout(self._settings.downstream_timeout_s),
            )
        except grpc.aio.AioRpcError as error:
            await _forward_error(context, error)
        return gateway_pb2.SubmitExecutionResponse(execution=response.execution)

    async def GetExecution(
        self, request: gateway_pb2.GetExecutionRequest, context: Context
    ) -> gateway_pb2.GetExecutionResponse:
        if not request.execution_id:
            await errors.invalid_argument(context, [("execution_id", "must not be empty")])
        return gateway_pb2.GetExecutionResponse(
            execution=await self._get(context, request.execution_id)
        )

    async def WatchExecution(
        self, request: gateway_pb2.WatchExecutionRequest, context: Context
    ) -> AsyncIterator[gateway_pb2.WatchExecutionResponse]:
        if not request.execution_id:
            await errors.invalid_argument(context, [("execution_id", "must not be empty")])
        # Reading it first checks the id belongs to the caller's tenant.
        execution = await self._get(context, request.execution_id)
        try:
            js = self._queue.js
        except ConnectionError:
            await errors.unavailable(context, "the event stream is unavailable")
        config = (
            ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=request.after_sequence + 1,
            )
            if request.after_sequence
            else None
        )
        subscription = await js.subscribe(
            subjects.execution_events(execution.id), ordered_consumer=True, config=config
        )
        try:
            while True:
                try:
                    msg = await subscription.next_msg(timeout=WATCH_RECHECK_S)
                except nats.errors.TimeoutError:
                    current = await self._get(context, execution.id)
                    if current.HasField("result") and current.result.status:
                        # No final event came (expired or never sent): end from the record.
                        yield gateway_pb2.WatchExecutionResponse(
                            event=execution_pb2.ExecutionEvent(
                                execution_id=current.id, result=current.result
                            )
                        )
                        return
                    continue
                event = execution_pb2.ExecutionEvent.FromString(msg.data)
                event.sequence = msg.metadata.sequence.stream
                yield gateway_pb2.WatchExecutionResponse(event=event)
                if event.HasField("result"):
                    return
        finally:
            await subscription.unsubscribe()
