"""The execution lifecycle: enqueue, cancel, expire, reap and dead-letter.

Every way an execution closes goes through `_closed`, which tells watchers (the final
event), removes the job from the queue if it is still there, and tells executors to stop it.
"""

from __future__ import annotations

import contextlib
import json
import logging

from nats.js import JetStreamContext

from sandmesh.execution.v1 import execution_pb2
from sandmesh.queue.v1 import queue_pb2
from sandmesh_contracts import results, statuses
from sandmesh_queue import messages, outputs, subjects
from sandmesh_queue.connection import Queue
from sandmesh_runtime import errors, metrics
from services.scheduler.store import Closed, ExecutionStore, NewExecution

log = logging.getLogger("sandmesh.scheduler")


class QueueUnavailable(errors.Unavailable):
    """The job could not be handed to JetStream; the execution was closed, nothing ran."""


class JobTooLarge(errors.InvalidArgument):
    """The request would make a job larger than the NATS server carries: refused, since
    no retry could ever queue it."""

    def __init__(self, size: int, budget: int) -> None:
        super().__init__(
            [
                (
                    "request",
                    f"makes a job of {size} bytes; this mesh's work queue carries at most {budget}",
                )
            ]
        )


class Lifecycle:
    def __init__(self, store: ExecutionStore, queue: Queue) -> None:
        self.store = store
        self.queue = queue

    async def enqueue(self, new: NewExecution) -> tuple[execution_pb2.Execution, bool]:
        """Store a new execution and hand it to the queue as its tenant's running cap allows
        (or return the earlier one for a reused key)."""
        js = self.queue.js  # ConnectionError before anything is stored
        self._check_size(new)
        execution, created = await self.store.insert(new)
        if not created:
            return execution, False
        try:
            # QUEUED goes first: once the job is out, an executor may report RUNNING at once.
            await messages.publish_event(
                js,
                execution_pb2.ExecutionEvent(
                    execution_id=execution.id,
                    status=execution_pb2.StatusChange(status=execution_pb2.EXECUTION_STATUS_QUEUED),
                ),
            )
            await self.dispatch(new.tenant, fresh=execution.id)
        except Exception as exc:
            log.warning(
                "queue unavailable", extra={"error": str(exc), "execution_id": execution.id}
            )
            result = results.closed(
                execution_pb2.EXECUTION_STATUS_SYSTEM_ERROR,
                "the work queue was unavailable; nothing ran",
                execution_pb2.ERROR_CODE_SYSTEM,
            )
            await self.store.release_key(execution.id)
            if await self.store.finish(execution.id, 0, result):
                with contextlib.suppress(Exception):
                    await self._tell_watchers(js, execution.id, result)
            raise QueueUnavailable("the work queue is unavailable") from exc
        return execution, True

    async def dispatch(self, tenant: str, fresh: str | None = None) -> None:
        """Hand `tenant`'s waiting executions to the work queue, as many as its running cap
        has room for. One whose job cannot be published waits again for a later dispatch;
        if that is `fresh` (the one being submitted) the error is raised."""
        failed: dict[str, Exception] = {}
        for execution in await self.store.claim_dispatch(tenant, surely_waiting=fresh is not None):
            job = queue_pb2.Job(
                execution_id=execution.id,
                tenant=execution.tenant,
                request=execution.request,
                deadline=execution.deadline,
            )
            try:
                lane = statuses.lane(execution.request.priority)
                ack = await messages.publish_job(self.queue.js, job, lane)
            except Exception as exc:
                failed[execution.id] = exc
                continue
            await self.store.set_job_seq(execution.id, ack.seq)
        for execution_id in failed:
            if execution_id != fresh:
                await self.store.release_dispatch(execution_id)
        if fresh in failed:
            raise failed[fresh]

    async def dispatch_quietly(self, tenant: str) -> None:
        """`dispatch` after a run ends; a failure is logged, and the sweeper tries again."""
        try:
            await self.dispatch(tenant)
        except Exception as exc:
            log.warning("dispatch failed; the sweeper retries", extra={"error": str(exc)})

    def _check_size(self, new: NewExecution) -> None:
        """Refuse, before storing anything, a request whose job the server would refuse."""
        probe = queue_pb2.Job(
            execution_id="00000000-0000-0000-0000-000000000000",
            tenant=new.tenant,
            request=new.request,
        )
        probe.deadline.FromDatetime(new.deadline)
        budget = outputs.message_budget(self.queue.max_payload)
        if probe.ByteSize() > budget:
            raise JobTooLarge(probe.ByteSize(), budget)

    async def cancel(self, tenant: str, execution_id: str) -> execution_pb2.Execution | None:
        """Cancel an open execution; a final one is returned unchanged; None when unknown."""
        closed = await self.store.cancel(tenant, execution_id)
        if closed is not None:
            await self._closed(closed)
            return closed.execution
        return await self.store.get(tenant, execution_id)

    async def requeue_lost(self, executor_ids: list[str]) -> None:
        """Runs of executors that went silent wait for another executor."""
        for executor_id in executor_ids:
            requeued = await self.store.requeue_runs_of(executor_id)
            if requeued:
                log.warning(
                    "runs of a lost executor requeued",
                    extra={"executor_id": executor_id, "executions": requeued},
                )

    async def sweep(self, stuck_margin_s: float) -> None:
        """Expire jobs queued past their deadline, close runs that outlived theirs, and forget
        executions past their retention (their stored output expires with them)."""
        for tenant in await self.store.tenants_waiting():
            await self.dispatch(tenant)
        await self.store.release_stale_dispatches()
        forgotten = await self.store.delete_finished_before(self.queue.settings.retention_s)
        if forgotten:
            log.info("executions past their retention deleted", extra={"count": forgotten})
        for closed in [
            *await self.store.expire_overdue(),
            *await self.store.reap_stuck(stuck_margin_s),
        ]:
            log.warning(
                "closed by the reaper",
                extra={
                    "execution_id": closed.execution.id,
                    "status": statuses.to_name(closed.execution.status),
                },
            )
            await self._closed(closed)

    async def dead_letter(self, advisory: bytes) -> None:
        """Handle a max-deliveries advisory: record the dead letter, close the execution."""
        notice = json.loads(advisory)
        js = self.queue.js
        seq = int(notice["stream_seq"])
        try:
            raw = await js.get_msg(subjects.JOBS_STREAM, seq)
        except Exception:
            log.warning("dead-lettered job no longer in the stream", extra={"seq": seq})
            return
        job = queue_pb2.Job.FromString(raw.data or b"")
        deliveries = int(notice.get("deliveries", 0))
        closed = await self.store.dead_letter(
            job.execution_id,
            f"no executor finished it in {deliveries} deliveries: each attempt ended without"
            " a result (its executor stopped, or lost the job)",
            deliveries,
        )
        if closed is not None:
            await self._closed(closed)
        with contextlib.suppress(Exception):
            await js.delete_msg(subjects.JOBS_STREAM, seq)

    async def _closed(self, closed: Closed) -> None:
        metrics.EXECUTIONS.labels(statuses.to_name(closed.execution.status)).inc()
        js = self.queue.js
        if closed.job_seq is not None:
            # Out of the queue first, so it never runs; already delivered or acked is fine too.
            with contextlib.suppress(Exception):
                await js.delete_msg(subjects.JOBS_STREAM, closed.job_seq)
        await self._tell_watchers(js, closed.execution.id, closed.execution.result)
        await self.queue.nc.publish(subjects.CANCEL_SUBJECT, closed.execution.id.encode())
        await self.dispatch_quietly(closed.execution.tenant)

    async def _tell_watchers(
        self, js: JetStreamContext, execution_id: str, result: execution_pb2.ExecutionResult
    ) -> None:
        await messages.publish_event(
            js, execution_pb2.ExecutionEvent(execution_id=execution_id, result=result)
        )
