"""The scheduler's gRPC servicer: thin, translates protos to lifecycle and store calls."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeAlias

import grpc
import psycopg

from sandmesh.execution.v1 import execution_pb2
from sandmesh.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from sandmesh_contracts import statuses
from sandmesh_queue import subjects
from sandmesh_runtime import errors
from services.scheduler.lifecycle import JobTooLarge, Lifecycle, QueueUnavailable
from services.scheduler.registry import Registry
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import IdempotencyConflict, NewExecution, QueueFull

log = logging.getLogger("sandmesh.scheduler")

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50
# How long a caller refused for a full queue is asked to wait.
QUEUE_FULL_RETRY_S = 2.0


async def _not_found(context: Context, what: str, key: str) -> NoReturn:
    await errors.abort(context, grpc.StatusCode.NOT_FOUND, f"{what} {key!r} not found")


async def _page_size(context: Context, asked: int) -> int:
    if asked > MAX_PAGE_SIZE:
        await errors.invalid_argument(
            context, [("page_size", f"must be at most {MAX_PAGE_SIZE}, got {asked}")]
        )
    return asked or DEFAULT_PAGE_SIZE


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(
        self, lifecycle: Lifecycle, registry: Registry, settings: SchedulerSettings
    ) -> None:
        self._lifecycle = lifecycle
        self._registry = registry
        self._store = lifecycle.store
        self._settings = settings

    async def _enqueue(self, context: Context, new: NewExecution) -> execution_pb2.Execution:
        try:
            execution, _ = await self._lifecycle.enqueue(new)
        except IdempotencyConflict as exc:
            await errors.abort(context, grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except JobTooLarge as exc:
            await errors.invalid_argument(context, [("request", str(exc))])
        except QueueFull as exc:
            await errors.quota_exceeded(
                context,
                str(exc),
                f"tenant:{new.tenant}",
                f"{exc.limit} open executions",
                QUEUE_FULL_RETRY_S,
            )
        except (ConnectionError, QueueUnavailable):
            await errors.unavailable(context, "the work queue is unavailable")
        except psycopg.errors.QueryCanceled:
            await errors.abort(
                context, grpc.StatusCode.DEADLINE_EXCEEDED, "the caller's deadline passed"
            )
        except psycopg.OperationalError as exc:
            log.warning("postgres unavailable", extra={"error": str(exc)})
            await errors.unavailable(context, "the execution store is unavailable")
        if execution.status == execution_pb2.EXECUTION_STATUS_QUEUED:
            position, wait_ms = await self._store.queue_estimate(execution)
            execution.queue_position, execution.estimated_wait_ms = position, wait_ms
        return execution

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
        if request.HasField("deadline"):
            deadline = request.deadline.ToDatetime(tzinfo=UTC)
        else:
            deadline = datetime.fromtimestamp(time.time() + self._settings.queue_ttl_s, UTC)
        execution = await self._enqueue(
            context,
            NewExecution(
                tenant=request.tenant,
                request=request.request,
                deadline=deadline,
                session_id=request.session_id or None,
                idempotency_key=request.idempotency_key or None,
            ),
        )
        return scheduler_pb2.EnqueueResponse(execution=execution)

    async def GetExecution(
        self, request: scheduler_pb2.GetExecutionRequest, context: Context
    ) -> scheduler_pb2.GetExecutionResponse:
        try:
            execution = await self._store.get(request.tenant, request.execution_id)
        except psycopg.OperationalError:
            await errors.unavailable(context, "the execution store is unavailable")
        if execution is None:
            await _not_found(context, "execution", request.execution_id)
        if execution.status == execution_pb2.EXECUTION_STATUS_QUEUED:
            position, wait_ms = await self._store.queue_estimate(execution)
            execution.queue_position, execution.estimated_wait_ms = position, wait_ms
        return scheduler_pb2.GetExecutionResponse(execution=execution)

    async def CancelExecution(
        self, request: scheduler_pb2.CancelExecutionRequest, context: Context
    ) -> scheduler_pb2.CancelExecutionResponse:
        try:
            execution = await self._lifecycle.cancel(request.tenant, request.execution_id)
        except psycopg.OperationalError:
            await errors.unavailable(context, "the execution store is unavailable")
        except ConnectionError:
            await errors.unavailable(context, "the work queue is unavailable")
        if execution is None:
            await _not_found(context, "execution", request.execution_id)
        return scheduler_pb2.CancelExecutionResponse(execution=execution)

    async def ListExecutions(
        self, request: scheduler_pb2.ListExecutionsRequest, context: Context
    ) -> scheduler_pb2.ListExecutionsResponse:
        page_size = await _page_size(context, request.page_size)
        try:
            executions, token = await self._store.list_executions(
                request.tenant, request.session_id or None, page_size, request.page_token
            )
        except ValueError:
            await errors.invalid_argument(context, [("page_token", "is not a token we issued")])
        return scheduler_pb2.ListExecutionsResponse(executions=executions, next_page_token=token)

    async def ListDeadLetters(
        self, request: scheduler_pb2.ListDeadLettersRequest, context: Context
    ) -> scheduler_pb2.ListDeadLettersResponse:
        page_size = await _page_size(context, request.page_size)
        try:
            letters, token = await self._store.list_dead_letters(
                request.tenant, page_size, request.page_token
            )
        except ValueError:
            await errors.invalid_argument(context, [("page_token", "is not a token we issued")])
        return scheduler_pb2.ListDeadLettersResponse(dead_letters=letters, next_page_token=token)

    async def GetQueueStats(
        self, request: scheduler_pb2.GetQueueStatsRequest, context: Context
    ) -> scheduler_pb2.GetQueueStatsResponse:
        try:
            js = self._lifecycle.queue.js
            counts = await self._store.lane_counts()
            lanes = []
            for lane in subjects.LANES:
                info = await js.consumer_info(
                    subjects.JOBS_STREAM, subjects.executor_consumer(lane)
                )
                running, per_second = counts.get(lane, (0, 0.0))
                lanes.append(
                    scheduler_pb2.LaneStats(
                        priority=statuses.priority(lane),
                        pending=info.num_pending,
                        running=running,
                        completed_per_second=per_second,
                    )
                )
        except (ConnectionError, psycopg.OperationalError):
            await errors.unavailable(context, "queue statistics are unavailable")
        return scheduler_pb2.GetQueueStatsResponse(lanes=lanes, executors=self._registry.snapshot())

    async def ReplayDeadLetter(
        self, request: scheduler_pb2.ReplayDeadLetterRequest, context: Context
    ) -> scheduler_pb2.ReplayDeadLetterResponse:
        original = await self._store.dead_letter_request(request.tenant, request.dead_letter_id)
        if original is None:
            await _not_found(context, "dead letter", request.dead_letter_id)
        execution = await self._enqueue(
            context,
            NewExecution(
                tenant=request.tenant,
                request=original,
                deadline=datetime.fromtimestamp(time.time() + self._settings.queue_ttl_s, UTC),
            ),
        )
        await self._store.mark_replayed(request.dead_letter_id, execution.id)
        return scheduler_pb2.ReplayDeadLetterResponse(execution=execution)
