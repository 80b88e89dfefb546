"""The scheduler's gRPC servicer: thin, translates protos to store and queue calls."""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC
from typing import Any, TypeAlias

import grpc
import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import JetStreamContext

from sandmesh.execution.v1 import execution_pb2
from sandmesh.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from sandmesh_contracts import statuses
from sandmesh_queue import messages
from sandmesh_queue.connection import Queue
from sandmesh_runtime import errors
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import ExecutionStore, NewExecution

log = logging.getLogger("sandmesh.scheduler")

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, store: ExecutionStore, queue: Queue, settings: SchedulerSettings) -> None:
        self._store = store
        self._queue = queue
        self._settings = settings

    async def Enqueue(
        self, request: scheduler_pb2.EnqueueRequest, context: Context
    ) -> scheduler_pb2.EnqueueResponse:
        violations = []
        if not request.tenant:
            violations.append(("tenant", "must not be empty"))
        if not request.request.language:
            violations.append(("request.language", "must not be empty"))
        if violations:
            await errors.invalid_argument(context, violations)
        try:
            js = self._queue.js
        except ConnectionError:
            await errors.unavailable(context, "the work queue is unavailable")
        deadline = request.deadline if request.HasField("deadline") else None
        if deadline is None:
            deadline = Timestamp()
            deadline.FromNanoseconds(int((time.time() + self._settings.queue_ttl_s) * 1e9))
        try:
            execution = await self._store.insert(
                NewExecution(
                    tenant=request.tenant,
                    request=request.request,
                    deadline=deadline.ToDatetime(tzinfo=UTC),
                    session_id=request.session_id or None,
                    idempotency_key=request.idempotency_key or None,
                )
            )
        except psycopg.errors.QueryCanceled:
            await errors.abort(
                context, grpc.StatusCode.DEADLINE_EXCEEDED, "the caller's deadline passed"
            )
        except psycopg.OperationalError as exc:
            log.warning("postgres unavailable", extra={"error": str(exc)})
            await errors.unavailable(context, "the execution store is unavailable")

        job = execution_pb2.Job(
            execution_id=execution.id,
            tenant=execution.tenant,
            request=execution.request,
            deadline=execution.deadline,
        )
        try:
            # QUEUED goes first: once the job is out, an executor may report RUNNING at once.
            await messages.publish_event(
                js,
                execution_pb2.ExecutionEvent(
                    execution_id=execution.id,
                    status=execution_pb2.StatusChange(status=execution_pb2.EXECUTION_STATUS_QUEUED),
                ),
            )
            await messages.publish_job(js, job, statuses.lane(request.request.priority))
        except Exception as exc:
            log.warning(
                "queue unavailable", extra={"error": str(exc), "execution_id": execution.id}
            )
            await self._close_unqueued(js, execution.id)
            await errors.unavailable(context, "the work queue is unavailable")
        execution.queue_position = await self._store.queue_position(execution)
        return scheduler_pb2.EnqueueResponse(execution=execution)

    async def _close_unqueued(self, js: JetStreamContext, execution_id: str) -> None:
        """The row exists but its job may not: close it so no watcher waits for a run."""
        result = execution_pb2.ExecutionResult(
            status=execution_pb2.EXECUTION_STATUS_SYSTEM_ERROR,
            error_code="E005",
            detail="the work queue was unavailable; nothing ran",
        )
        if await self._store.finish(execution_id, 0, result):
            with contextlib.suppress(Exception):
                await messages.publish_event(
                    js, execution_pb2.ExecutionEvent(execution_id=execution_id, result=result)
                )

    async def GetExecution(
        self, request: scheduler_pb2.GetExecutionRequest, context: Context
    ) -> scheduler_pb2.GetExecutionResponse:
        try:
            execution = await self._store.get(request.tenant, request.execution_id)
        except psycopg.OperationalError:
            await errors.unavailable(context, "the execution store is unavailable")
        if execution is None:
            await errors.abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"execution {request.execution_id!r} not found",
            )
        if execution.status == execution_pb2.EXECUTION_STATUS_QUEUED:
            execution.queue_position = await self._store.queue_position(execution)
        return scheduler_pb2.GetExecutionResponse(execution=execution)
