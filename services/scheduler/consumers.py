"""The scheduler's background work: JetStream consumers and the sweeper."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import nats.errors
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg

from sandmesh.execution.v1 import execution_pb2
from sandmesh.queue.v1 import queue_pb2
from sandmesh_contracts import statuses
from sandmesh_queue import messages, subjects
from sandmesh_queue.connection import Queue
from sandmesh_runtime import metrics, telemetry
from services.scheduler.lifecycle import Lifecycle
from services.scheduler.registry import Registry

log = logging.getLogger("sandmesh.scheduler")

FETCH_WAIT_S = 5.0
# A message whose handling failed for a passing reason (Postgres or NATS away) comes back
# after an exponential backoff with jitter: results are never dropped for an outage.
RETRY_BASE_S = 1.0
RETRY_MAX_S = 30.0


async def consume(
    queue: Queue, stream: str, durable: str, handle: Callable[[Msg], Awaitable[None]]
) -> None:
    """Pull one message at a time from a durable consumer; ack each once handled.

    A message that does not parse never will: it is logged and terminated, never retried.
    A handler that raises otherwise gets its message back after a backoff.
    """
    js = await queue.ready()
    subscription = await js.pull_subscribe_bind(durable=durable, stream=stream)
    while True:
        try:
            # One at a time: fetch(batch=N) waits out its timeout when fewer than N are pending.
            batch = await subscription.fetch(1, timeout=FETCH_WAIT_S)
        except nats.errors.TimeoutError:
            continue
        for msg in batch:
            try:
                with telemetry.consuming(f"{stream} process", msg.headers):
                    await handle(msg)
            except (DecodeError, ValueError) as exc:
                log.error(
                    "unreadable message dropped",
                    extra={"consumer": durable, "subject": msg.subject, "error": str(exc)},
                )
                await msg.term()
                continue
            except Exception:
                # Postgres or NATS is away: hand the message back for a later try, not lost.
                log.exception("handling failed; retrying later", extra={"consumer": durable})
                tries = msg.metadata.num_delivered or 1
                delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (tries - 1))
                await msg.nak(delay=delay * random.uniform(0.5, 1.5))
                continue
            await msg.ack()


def store_results(lifecycle: Lifecycle) -> Callable[[Msg], Awaitable[None]]:
    """Store every result exactly once; only the first store emits the final event."""

    async def handle(msg: Msg) -> None:
        job_result = queue_pb2.JobResult.FromString(msg.data)
        tenant = await lifecycle.store.finish(
            job_result.execution_id, job_result.attempt, job_result.result
        )
        if tenant is not None:
            metrics.EXECUTIONS.labels(statuses.to_name(job_result.result.status)).inc()
            await messages.publish_event(
                lifecycle.queue.js,
                execution_pb2.ExecutionEvent(
                    execution_id=job_result.execution_id, result=job_result.result
                ),
            )
            # A slot of the tenant's running cap is free: its next waiting run may go.
            await lifecycle.dispatch_quietly(tenant)
        else:
            log.info(
                "result for a closed execution ignored",
                extra={"execution_id": job_result.execution_id, "attempt": job_result.attempt},
            )

    return handle


def record_status(lifecycle: Lifecycle) -> Callable[[Msg], Awaitable[None]]:
    """Mirror executors' RUNNING events, and retried attempts' errors, into the table."""

    async def handle(msg: Msg) -> None:
        event = execution_pb2.ExecutionEvent.FromString(msg.data)
        if event.status.status == execution_pb2.EXECUTION_STATUS_RUNNING:
            await lifecycle.store.mark_running(
                event.execution_id, event.status.attempt, event.status.executor_id
            )
        elif event.status.status == execution_pb2.EXECUTION_STATUS_QUEUED and event.status.detail:
            await lifecycle.store.mark_retrying(event.execution_id, event.status.detail)

    return handle


def record_dead_letters(lifecycle: Lifecycle) -> Callable[[Msg], Awaitable[None]]:
    """Turn JetStream's max-deliveries advisories into dead letters."""

    async def handle(msg: Msg) -> None:
        await lifecycle.dead_letter(msg.data)

    return handle


async def sweep(
    lifecycle: Lifecycle, registry: Registry, interval_s: float, stuck_margin_s: float
) -> None:
    """Close expired and stuck executions and requeue lost executors' runs, forever."""
    await lifecycle.queue.ready()
    while True:
        await lifecycle.requeue_lost(registry.newly_dead())
        await lifecycle.sweep(stuck_margin_s)
        for lane, (depth, oldest_s) in (await lifecycle.store.queued_by_lane()).items():
            metrics.QUEUE_DEPTH.labels(lane).set(depth)
            metrics.QUEUE_OLDEST_AGE.labels(lane).set(oldest_s)
        await asyncio.sleep(interval_s)


async def listen_to_executors(queue: Queue, registry: Registry) -> None:
    """Keep the registry fed with executor heartbeats (core NATS), for as long as we run."""
    await queue.ready()
    subscription = await queue.nc.subscribe(subjects.HEARTBEAT_SUBJECT, cb=registry.heard)
    try:
        await asyncio.Event().wait()
    finally:
        await subscription.unsubscribe()


CONSUMERS = (
    (subjects.RESULTS_STREAM, subjects.RESULTS_CONSUMER, store_results),
    (subjects.EVENTS_STREAM, subjects.STATUS_CONSUMER, record_status),
    (subjects.ADVISORIES_STREAM, subjects.DEAD_LETTER_CONSUMER, record_dead_letters),
)
