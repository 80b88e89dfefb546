"""The JetStream pull loop: fetch a job, run it in the sandbox, report, and only then ack."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from sandmesh.execution.v1 import execution_pb2
from sandmesh_contracts.files import is_plain_file_name
from sandmesh_queue import messages, subjects
from sandmesh_queue.connection import Queue
from sandmesh_queue.streams import JOB_ACK_WAIT_S
from sandmesh_runtime.logs import execution_id_var
from services.executor import languages, verdicts
from services.executor.languages import LanguageSpec
from services.executor.sandbox.runner import run_in_sandbox

log = logging.getLogger("sandmesh.executor")

# in_progress() well inside ack_wait, so a live run is never redelivered to another executor.
HEARTBEAT_S = JOB_ACK_WAIT_S / 3
FETCH_WAIT_S = 5.0

_STREAMS = {
    "stdout": execution_pb2.OUTPUT_STREAM_STDOUT,
    "stderr": execution_pb2.OUTPUT_STREAM_STDERR,
}


@contextlib.asynccontextmanager
async def _heartbeat(msg: Msg) -> AsyncIterator[None]:
    async def beat() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await msg.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Worker:
    """Runs jobs one at a time; the executor starts as many workers as it has slots."""

    def __init__(self, queue: Queue, registry: dict[str, LanguageSpec], executor_id: str) -> None:
        self._queue = queue
        self._registry = registry
        self._executor_id = executor_id
        self.running = 0
        self._draining = asyncio.Event()

    def drain(self) -> None:
        """Take no new job; the one running, if any, goes on to its end."""
        self._draining.set()

    async def run(self) -> None:
        """Pull and run jobs until drained."""
        js = await self._queue.ready()
        subscription = await js.pull_subscribe_bind(
            durable=subjects.EXECUTOR_CONSUMER, stream=subjects.JOBS_STREAM
        )
        while not self._draining.is_set():
            try:
                # Exactly one: this worker can start exactly one job now.
                batch = await subscription.fetch(1, timeout=FETCH_WAIT_S)
            except nats.errors.TimeoutError:
                continue
            for msg in batch:
                await self.handle(js, msg)

    async def handle(self, js: JetStreamContext, msg: Msg) -> None:
        job = execution_pb2.Job.FromString(msg.data)
        attempt = msg.metadata.num_delivered or 1
        token = execution_id_var.set(job.execution_id)
        try:
            try:
                result = await self._execute(js, job, attempt, msg)
            except asyncio.CancelledError:
                # Stopped mid-run: hand the job back now rather than after ack_wait.
                await asyncio.shield(msg.nak())
                raise
            await messages.publish_result(
                js,
                execution_pb2.JobResult(
                    execution_id=job.execution_id,
                    attempt=attempt,
                    executor_id=self._executor_id,
                    result=result,
                ),
            )
            # Ack only once the result is stored by JetStream: a crash before this redelivers.
            await msg.ack()
            log.info(
                "job done",
                extra={"status": execution_pb2.ExecutionStatus.Name(result.status)},
            )
        finally:
            execution_id_var.reset(token)

    async def _execute(
        self, js: JetStreamContext, job: execution_pb2.Job, attempt: int, msg: Msg
    ) -> execution_pb2.ExecutionResult:
        time_left = job.deadline.ToMilliseconds() / 1000 - time.time()
        if job.HasField("deadline") and time_left <= 0:
            return verdicts.refused(
                execution_pb2.EXECUTION_STATUS_EXPIRED, "the deadline passed while queued"
            )
        spec = self._registry.get(job.request.language)
        if spec is None:
            return verdicts.refused(
                execution_pb2.EXECUTION_STATUS_REJECTED,
                f"unknown language {job.request.language!r}",
            )
        limits, violations = languages.resolve_limits(spec, job.request.limits)
        if violations:
            return verdicts.refused(
                execution_pb2.EXECUTION_STATUS_REJECTED,
                "; ".join(f"{field} {why}" for field, why in violations),
            )
        unsafe = [f.name for f in job.request.files if not is_plain_file_name(f.name)]
        if unsafe:
            return verdicts.refused(
                execution_pb2.EXECUTION_STATUS_REJECTED, f"unsafe file names: {unsafe!r}"
            )
        if job.HasField("deadline"):
            # Nothing runs past the caller's deadline: the wall limit shrinks to the time left.
            limits.wall_time_ms = max(1, min(limits.wall_time_ms, int(time_left * 1000)))

        await messages.publish_event(
            js,
            execution_pb2.ExecutionEvent(
                execution_id=job.execution_id,
                status=execution_pb2.StatusChange(
                    status=execution_pb2.EXECUTION_STATUS_RUNNING, attempt=attempt
                ),
            ),
        )

        async def forward(stream: str, chunk: bytes) -> None:
            await messages.publish_event(
                js,
                execution_pb2.ExecutionEvent(
                    execution_id=job.execution_id,
                    output=execution_pb2.OutputChunk(stream=_STREAMS[stream], data=chunk),
                ),
            )

        files = {spec.file_name: job.request.source.encode()}
        files.update({f.name: f.content for f in job.request.files})
        self.running += 1
        try:
            async with _heartbeat(msg):
                outcome = await run_in_sandbox(
                    [*spec.run, *job.request.args],
                    files,
                    job.request.stdin,
                    verdicts.sandbox_limits(limits),
                    on_output=forward,
                )
        finally:
            self.running -= 1
        return verdicts.to_result(outcome)
