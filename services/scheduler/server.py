"""The scheduler's gRPC servicer: thin, translates protos to lifecycle and store calls."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, TypeAlias

import grpc

from sandmesh.execution.v1 import execution_pb2
from sandmesh.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from sandmesh_contracts import statuses
from sandmesh_queue import subjects
from sandmesh_runtime import errors
from services.scheduler.lifecycle import Lifecycle
from services.scheduler.registry import Registry
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import NewExecution

log = logging.getLogger("sandmesh.scheduler")

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50


def _page_size(asked: int) -> int:
    if asked > MAX_PAGE_SIZE:
        raise errors.InvalidArgument(
            [("page_size", f"must be at most {MAX_PAGE_SIZE}, got {asked}")]
        )
    return asked or DEFAULT_PAGE_SIZE


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Each handler reads as the protocol; refusals are raised as domain errors and the
    runtime's error hook turns them (and database or queue faults) into statuses."""

    def __init__(
        self, lifecycle: Lifecycle, registry: Registry, settings: SchedulerSettings
    ) -> None:
        self._lifecycle = lifecycle
        self._registry = registry
        self._store = lifecycle.store
        self._settings = settings

    async def _enqueue(self, new: NewExecution) -> execution_pb2.Execution:
        execution, _ = await self._lifecycle.enqueue(new)
        if execution.status == execution_pb2.EXECUTION_STATUS_QUEUED:
            position, wait_ms = await self._store.queue_estimate(execution)
            execution.queue_position, execution.estimated_wait_ms = position, wait_ms
        return execution

    def _queue_deadline(self) -> datetime:
        return datetime.fromtimestamp(time.time() + self._lifecycle.queue.settings.queue_ttl_s, UTC)

    async def Enqueue(
        self, request: scheduler_pb2.EnqueueRequest, context: Context
    ) -> scheduler_pb2.EnqueueResponse:
        violations = []
        if not request.tenant:
            violations.append(("tenant", "must not be empty"))
        if not request.request.language:
            violations.append(("request.language", "must not be empty"))
        if violations:
            raise errors.InvalidArgument(violations)
        execution = await self._enqueue(
            NewExecution(
                tenant=request.tenant,
                request=request.request,
                deadline=request.deadline.ToDatetime(tzinfo=UTC)
                if request.HasField("deadline")
                else self._queue_deadline(),
                session_id=request.session_id or None,
                idempotency_key=request.idempotency_key or None,
            )
        )
        return scheduler_pb2.EnqueueResponse(execution=execution)

    async def GetExecution(
        self, request: scheduler_pb2.GetExecutionRequest, context: Context
    ) -> scheduler_pb2.GetExecutionResponse:
        execution = await self._store.get(request.tenant, request.execution_id)
        if execution is None:
            raise errors.NotFound(f"execution {request.execution_id!r} not found")
        if execution.status == execution_pb2.EXECUTION_STATUS_QUEUED:
            position, wait_ms = await self._store.queue_estimate(execution)
            execution.queue_position, execution.estimated_wait_ms = position, wait_ms
        return scheduler_pb2.GetExecutionResponse(execution=execution)

    async def CancelExecution(
        self, request: scheduler_pb2.CancelExecutionRequest, context: Context
    ) -> scheduler_pb2.CancelExecutionResponse:
        execution = await self._lifecycle.cancel(request.tenant, request.execution_id)
        if execution is None:
            raise errors.NotFound(f"execution {request.execution_id!r} not found")
        return scheduler_pb2.CancelExecutionResponse(execution=execution)

    async def ListExecutions(
        self, request: scheduler_pb2.ListExecutionsRequest, context: Context
    ) -> scheduler_pb2.ListExecutionsResponse:
        executions, token = await self._store.list_executions(
            request.tenant,
            request.session_id or None,
            _page_size(request.page_size),
            request.page_token,
        )
        return scheduler_pb2.ListExecutionsResponse(executions=executions, next_page_token=token)

    async def ListDeadLetters(
        self, request: scheduler_pb2.ListDeadLettersRequest, context: Context
    ) -> scheduler_pb2.ListDeadLettersResponse:
        letters, token = await self._store.list_dead_letters(
            request.tenant, _page_size(request.page_size), request.page_token
        )
        return scheduler_pb2.ListDeadLettersResponse(dead_letters=letters, next_page_token=token)

    async def GetQueueStats(
        self, request: scheduler_pb2.GetQueueStatsRequest, context: Context
    ) -> scheduler_pb2.GetQueueStatsResponse:
        js = self._lifecycle.queue.js
        counts = await self._store.lane_counts()
        lanes = []
        for lane in subjects.LANES:
            info = await js.consumer_info(subjects.JOBS_STREAM, subjects.executor_consumer(lane))
            running, per_second = counts.get(lane, (0, 0.0))
            lanes.append(
                scheduler_pb2.LaneStats(
                    priority=statuses.priority(lane),
                    pending=info.num_pending,
                    running=running,
                    completed_per_second=per_second,
                )
            )
        return scheduler_pb2.GetQueueStatsResponse(lanes=lanes, executors=self._registry.snapshot())

    async def ReplayDeadLetter(
        self, request: scheduler_pb2.ReplayDeadLetterRequest, context: Context
    ) -> scheduler_pb2.ReplayDeadLetterResponse:
        original = await self._store.dead_letter_request(request.tenant, request.dead_letter_id)
        if original is None:
            raise errors.NotFound(f"dead letter {request.dead_letter_id!r} not found")
        execution = await self._enqueue(
            NewExecution(tenant=request.tenant, request=original, deadline=self._queue_deadline())
        )
        await self._store.mark_replayed(request.dead_letter_id, execution.id)
        return scheduler_pb2.ReplayDeadLetterResponse(execution=execution)
