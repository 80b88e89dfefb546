"""The JetStream pull loop: fetch a job, run it in the sandbox, report, and only then ack."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from sandmesh.execution.v1 import execution_pb2
from sandmesh.queue.v1 import queue_pb2
from sandmesh_contracts import results
from sandmesh_contracts.files import is_plain_file_name
from sandmesh_queue import faults, messages, outputs, subjects
from sandmesh_queue.connection import Queue
from sandmesh_runtime import metrics, telemetry
from sandmesh_runtime.logs import execution_id_var
from sandmesh_runtime.resilience import GaveUp, Permanent, retry_until
from services.executor import languages, pipeline, verdicts
from services.executor.cancels import Cancellations
from services.executor.languages import LanguageSpec
from services.executor.sandbox import WarmPools

log = logging.getLogger("sandmesh.executor")

# in_progress() well inside ack_wait, so a live run is never redelivered to another executor.
FETCH_WAIT_S = 5.0
# Weighted turns: interactive first three times in four, so batch is slower, never starved.
LANE_TURNS = ("interactive", "interactive", "interactive", "batch")
# A lane with nothing ready answers within this; a ready job comes at once.
LANE_PEEK_S = 0.02
# Backoff of jobs handed back after an infrastructure failure (nak with a delay: a plain
# nak would redeliver at once, and consumer backoff would replace ack_wait; see the docs).
RETRY_BASE_S = 1.0
RETRY_MAX_S = 30.0
# The ack's own bound; storing the output and publishing the result have the executor's
# report_timeout_s each, so a slot is never held for good after its program ends.
ACK_S = 10.0

_STREAMS = {
    "stdout": execution_pb2.OUTPUT_STREAM_STDOUT,
    "stderr": execution_pb2.OUTPUT_STREAM_STDERR,
}


@contextlib.asynccontextmanager
async def _heartbeat(msg: Msg, ack_wait_s: float) -> AsyncIterator[None]:
    async def beat() -> None:
        while True:
            # Three beats per ack_wait: one lost beat never costs the job.
            await asyncio.sleep(ack_wait_s / 3)
            try:
                await msg.in_progress()
            except Exception as exc:
                # A NATS blip must not end the run; the next beat tries again.
                log.warning("heartbeat failed", extra={"error": str(exc)})

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _pull_one(subscription: JetStreamContext.PullSubscription, wait_s: float) -> Msg | None:
    """At most one job: this worker can start exactly one now."""
    try:
        (msg,) = await subscription.fetch(1, timeout=wait_s)
    except nats.errors.TimeoutError:
        return None
    return msg


class Ledger:
    """The executions this executor is running or has recently finished, shared by its
    workers: a job delivered again (a lost ack, a broker restart) is never run twice here."""

    def __init__(self, remember: int = 10_000) -> None:
        self._running: dict[str, asyncio.Event] = {}
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._remember = remember

    def finished(self, execution_id: str) -> bool:
        return execution_id in self._finished

    def running(self, execution_id: str) -> asyncio.Event | None:
        return self._running.get(execution_id)

    def start(self, execution_id: str) -> None:
        self._running[execution_id] = asyncio.Event()

    def end(self, execution_id: str, reported: bool) -> None:
        """The run is over; `reported` when its result reached JetStream."""
        if reported:
            self._finished[execution_id] = None
            while len(self._finished) > self._remember:
                self._finished.popitem(last=False)
        self._running.pop(execution_id).set()


@dataclass(eq=False)
class Worker:
    """Runs jobs one at a time; the executor starts as many workers as it has slots."""

    queue: Queue
    registry: dict[str, LanguageSpec]
    executor_id: str
    cancels: Cancellations
    pools: WarmPools
    ledger: Ledger
    report_timeout_s: float
    running: int = field(default=0, init=False)
    # When the job this worker holds was taken (monotonic), None while idle.
    busy_since: float | None = field(default=None, init=False)
    _draining: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def drain(self) -> None:
        """Take no new job; the one running, if any, goes on to its end."""
        self._draining.set()

    async def run(self) -> None:
        """Pull and run jobs until drained, lanes served by weight."""
        js = await self.queue.ready()
        lanes = {
            lane: await js.pull_subscribe_bind(
                durable=subjects.executor_consumer(lane), stream=subjects.JOBS_STREAM
            )
            for lane in subjects.LANES
        }
        turns = itertools.cycle(LANE_TURNS)
        while not self._draining.is_set():
            turn = next(turns)
            order = [turn, *(lane for lane in subjects.LANES if lane != turn)]
            msg = None
            for lane in order:
                msg = await _pull_one(lanes[lane], LANE_PEEK_S)
                if msg is not None:
                    break
            if msg is None:
                # Idle: wait on the interactive lane, where waiting costs the most.
                msg = await _pull_one(lanes[subjects.LANES[0]], FETCH_WAIT_S)
            if msg is not None:
                await self.handle(js, msg)

    async def handle(self, js: JetStreamContext, msg: Msg) -> None:
        self.busy_since = time.monotonic()
        try:
            job = queue_pb2.Job.FromString(msg.data)
        except DecodeError as exc:
            await self._refuse_unreadable(js, msg, exc)
            return
        else:
            await self._handle(js, msg, job)
        finally:
            self.busy_since = None

    async def _refuse_unreadable(self, js: JetStreamContext, msg: Msg, exc: DecodeError) -> None:
        """A job that does not parse never will: close its execution (named by the message
        id the scheduler gave it) as SYSTEM_ERROR and take the job off the queue for good."""
        execution_id = (msg.headers or {}).get(subjects.MSG_ID_HEADER, "")
        log.error("unreadable job dropped", extra={"execution_id": execution_id, "error": str(exc)})
        if execution_id:
            failure = queue_pb2.JobResult(
                execution_id=execution_id,
                attempt=msg.metadata.num_delivered or 1,
                executor_id=self.executor_id,
                result=verdicts.system_error(f"the job could not be read: {exc}"),
            )
            with contextlib.suppress(Permanent, GaveUp):
                await self._publish(js, failure)
        with contextlib.suppress(Exception):
            await msg.term()

    async def _handle(self, js: JetStreamContext, msg: Msg, job: queue_pb2.Job) -> None:
        attempt = msg.metadata.num_delivered or 1
        token = execution_id_var.set(job.execution_id)
        try:
            with telemetry.consuming(
                "execute job",
                msg.headers,
                **{"sandmesh.execution_id": job.execution_id, "sandmesh.attempt": str(attempt)},
            ):
                if await self._duplicate(js, msg, job.execution_id):
                    with contextlib.suppress(Exception):
                        await msg.ack_sync()
                    log.info("job skipped: already run", extra={"attempt": attempt})
                    return
                self.ledger.start(job.execution_id)
                reported = False
                try:
                    reported = await self._run_and_report(js, msg, job, attempt)
                finally:
                    self.ledger.end(job.execution_id, reported)
        finally:
            execution_id_var.reset(token)

    async def _duplicate(self, js: JetStreamContext, msg: Msg, execution_id: str) -> bool:
        """Whether this delivery repeats a run already done (here or as the scheduler saw
        it); a repeat of a run still going on here waits for it, heartbeating."""
        running = self.ledger.running(execution_id)
        if running is not None:
            async with _heartbeat(msg, self.queue.settings.job_ack_wait_s):
                await running.wait()
        return self.ledger.finished(execution_id) or await self._already_finished(
            js, execution_id, redelivered=(msg.metadata.num_delivered or 1) > 1
        )

    async def _run_and_report(
        self, js: JetStreamContext, msg: Msg, job: queue_pb2.Job, attempt: int
    ) -> bool:
        """Run the job and report it; True when its result reached JetStream."""
        try:
            result, warm = await self._execute(js, job, attempt, msg)
        except asyncio.CancelledError:
            # Stopped mid-run: hand the job back now rather than after ack_wait.
            await asyncio.shield(msg.nak())
            raise
        if result.status == execution_pb2.EXECUTION_STATUS_SYSTEM_ERROR:
            await self._retry_later(js, msg, job.execution_id, attempt, result.detail)
            return False
        metrics.SANDBOX_RUN.labels(job.request.language, str(warm).lower()).observe(
            result.usage.wall_time_ms / 1000
        )
        log.info(
            "job done",
            extra={
                "status": execution_pb2.ExecutionStatus.Name(result.status),
                "warm": warm,
                "wall_time_ms": result.usage.wall_time_ms,
            },
        )
        job_result = queue_pb2.JobResult(
            execution_id=job.execution_id,
            attempt=attempt,
            executor_id=self.executor_id,
            result=result,
        )
        # The job stays ours while the result goes out; each step is bounded.
        async with _heartbeat(msg, self.queue.settings.job_ack_wait_s):
            try:
                await self._report(js, job_result)
            except (GaveUp, Permanent) as exc:
                # Not even a SYSTEM_ERROR result went out: free the slot, hand the job back
                # (bounded by max_deliver, after which it is dead-lettered).
                log.error("result not delivered; job handed back", extra={"error": str(exc)})
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(msg.nak(delay=RETRY_BASE_S), ACK_S)
                return False
        # Ack only once the result is stored by JetStream: a crash before this redelivers.
        # Confirmed (ack_sync) before this worker pulls again, so jobs pulled and not yet
        # acked never outnumber the workers.
        try:
            await msg.ack_sync(timeout=ACK_S)
        except Exception as exc:
            # The result is stored; the redelivery this causes is skipped, not run again.
            log.warning("ack lost", extra={"error": str(exc)})
        return True

    async def _retry_later(
        self, js: JetStreamContext, msg: Msg, execution_id: str, attempt: int, error: str
    ) -> None:
        """Our failure, not the program's: give the job back to be tried again, after an
        exponential backoff with jitter, and say why. After max_deliver it is dead-lettered."""
        delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
        log.warning(
            "infrastructure failure; retrying later",
            extra={"attempt": attempt, "delay_s": round(delay, 2), "error": error},
        )
        await self._publish_quietly(
            js,
            execution_pb2.ExecutionEvent(
                execution_id=execution_id,
                status=execution_pb2.StatusChange(
                    status=execution_pb2.EXECUTION_STATUS_QUEUED,
                    attempt=attempt,
                    executor_id=self.executor_id,
                    detail=error,
                ),
            ),
        )
        await msg.nak(delay=delay)

    async def _report(self, js: JetStreamContext, job_result: queue_pb2.JobResult) -> None:
        """Deliver one attempt's result: its output stored out of band when it does not fit
        a message, then the result published. A fault that can never pass ends the attempt
        with SYSTEM_ERROR and says why; a passing one is retried until its step's bound,
        then GaveUp. A run is never thrown away for want of a connection (running it again
        would run it twice)."""
        max_payload = self.queue.max_payload
        wire, must_store = outputs.fit_result(job_result, outputs.message_budget(max_payload))
        result = job_result.result
        try:
            if must_store:
                await retry_until(
                    lambda: outputs.store(
                        js, wire.result.output_ref, result.stdout, result.stderr, max_payload
                    ),
                    until=time.monotonic() + self.report_timeout_s,
                    permanent=faults.permanent,
                    what="storing the output",
                )
            await self._publish(js, wire)
        except Permanent as exc:
            log.error("result cannot be delivered", extra={"error": str(exc)})
            failure = queue_pb2.JobResult()
            failure.CopyFrom(wire)
            failure.result.CopyFrom(
                verdicts.system_error(f"the result could not be delivered: {exc}")
            )
            await self._publish(js, failure)

    async def _publish(self, js: JetStreamContext, job_result: queue_pb2.JobResult) -> None:
        await retry_until(
            lambda: messages.publish_result(js, job_result),
            until=time.monotonic() + self.report_timeout_s,
            permanent=faults.permanent,
            what="publishing the result",
        )

    async def _already_finished(
        self, js: JetStreamContext, execution_id: str, redelivered: bool
    ) -> bool:
        """Whether this execution has its result: a redelivery whose first run (here or on
        another executor) finished but whose ack was lost, or a job closed while it waited.

        A result waits in RESULTS until the scheduler has stored it and published the result
        event, and only then leaves. Looked up in that order, a result moving from one to the
        other between the two lookups is still found. Only a redelivery can have a result
        of an earlier run, so a first delivery skips RESULTS.
        """
        lookups = [(subjects.EVENTS_STREAM, subjects.event_subject(execution_id, "result"))]
        if redelivered:
            lookups.insert(0, (subjects.RESULTS_STREAM, subjects.result_subject(execution_id)))
        for stream, subject in lookups:
            try:
                await js.get_msg(stream, subject=subject)
            except nats.js.errors.NotFoundError:
                continue
            return True
        return False

    async def _publish_quietly(
        self, js: JetStreamContext, event: execution_pb2.ExecutionEvent
    ) -> None:
        """Events are for watchers; the result carries everything, so a lost one is logged,
        and the run goes on."""
        try:
            await messages.publish_event(js, event)
        except Exception as exc:
            log.warning("event lost", extra={"error": str(exc), "kind": event.WhichOneof("kind")})

    async def _execute(
        self, js: JetStreamContext, job: queue_pb2.Job, attempt: int, msg: Msg
    ) -> tuple[execution_pb2.ExecutionResult, bool]:
        """The job's result, and whether a warm sandbox ran it."""
        if self.cancels.cancelled(job.execution_id):
            return results.closed(
                execution_pb2.EXECUTION_STATUS_CANCELLED, "cancelled before it started"
            ), False
        time_left = job.deadline.ToMilliseconds() / 1000 - time.time()
        if job.HasField("deadline") and time_left <= 0:
            return results.closed(
                execution_pb2.EXECUTION_STATUS_EXPIRED, "the deadline passed while queued"
            ), False
        spec = self.registry.get(job.request.language)
        if spec is None:
            return results.closed(
                execution_pb2.EXECUTION_STATUS_REJECTED,
                f"unknown language {job.request.language!r}",
            ), False
        limits, violations = languages.resolve_limits(spec, job.request.limits)
        if violations:
            return results.closed(
                execution_pb2.EXECUTION_STATUS_REJECTED,
                "; ".join(f"{field} {why}" for field, why in violations),
            ), False
        unsafe = [f.name for f in job.request.files if not is_plain_file_name(f.name)]
        if unsafe:
            return results.closed(
                execution_pb2.EXECUTION_STATUS_REJECTED,
                f"files: unsafe names {unsafe!r}",
                execution_pb2.ERROR_CODE_UNSAFE,
            ), False
        too_big = pipeline.check_files(spec, job.request, limits)
        if too_big is not None:
            return results.closed(
                execution_pb2.EXECUTION_STATUS_REJECTED, too_big, execution_pb2.ERROR_CODE_UNSAFE
            ), False
        deadline = job.deadline.ToMilliseconds() / 1000 if job.HasField("deadline") else None

        # Live chunks fit the server's max_payload, whatever the sandbox reads at once.
        piece = outputs.chunk_bytes(self.queue.max_payload)
        written = dict.fromkeys(_STREAMS, 0)

        async def forward(stream: str, chunk: bytes) -> None:
            for at in range(0, len(chunk), piece):
                data = chunk[at : at + piece]
                await self._publish_quietly(
                    js,
                    execution_pb2.ExecutionEvent(
                        execution_id=job.execution_id,
                        output=execution_pb2.OutputChunk(
                            stream=_STREAMS[stream], data=data, offset=written[stream]
                        ),
                    ),
                )
                written[stream] += len(data)

        # Registered before RUNNING is published, so a cancel arriving from then on is heard.
        cancel = self.cancels.start(job.execution_id)
        self.running += 1
        try:
            await self._publish_quietly(
                js,
                execution_pb2.ExecutionEvent(
                    execution_id=job.execution_id,
                    status=execution_pb2.StatusChange(
                        status=execution_pb2.EXECUTION_STATUS_RUNNING,
                        attempt=attempt,
                        executor_id=self.executor_id,
                    ),
                ),
            )
            async with _heartbeat(msg, self.queue.settings.job_ack_wait_s):
                return await pipeline.execute(
                    spec, job.request, limits, forward, cancel, self.pools, deadline
                )
        finally:
            self.running -= 1
            self.cancels.finish(job.execution_id)
