"""The scheduler's JetStream consumers: results to store, and status changes to record."""

from __future__ import annotations

import logging

import nats.errors

from sandmesh.execution.v1 import execution_pb2
from sandmesh_queue import messages, subjects
from sandmesh_queue.connection import Queue
from services.scheduler.store import ExecutionStore

log = logging.getLogger("sandmesh.scheduler")

FETCH_WAIT_S = 5.0


async def store_results(queue: Queue, store: ExecutionStore) -> None:
    """Store every result exactly once, then emit the execution's final event, then ack."""
    js = await queue.ready()
    subscription = await js.pull_subscribe_bind(
        durable=subjects.RESULTS_CONSUMER, stream=subjects.RESULTS_STREAM
    )
    while True:
        try:
            batch = await subscription.fetch(1, timeout=FETCH_WAIT_S)
        except nats.errors.TimeoutError:
            continue
        for msg in batch:
            job_result = execution_pb2.JobResult.FromString(msg.data)
            stored = await store.finish(
                job_result.execution_id, job_result.attempt, job_result.result
            )
            if stored:
                await messages.publish_event(
                    queue.js,
                    execution_pb2.ExecutionEvent(
                        execution_id=job_result.execution_id, result=job_result.result
                    ),
                )
            else:
                log.info(
                    "duplicate result ignored",
                    extra={"execution_id": job_result.execution_id, "attempt": job_result.attempt},
                )
            await msg.ack()


async def record_status(queue: Queue, store: ExecutionStore) -> None:
    """Mirror RUNNING events from executors into the executions table."""
    js = await queue.ready()
    subscription = await js.pull_subscribe_bind(
        durable=subjects.STATUS_CONSUMER, stream=subjects.EVENTS_STREAM
    )
    while True:
        try:
            batch = await subscription.fetch(1, timeout=FETCH_WAIT_S)
        except nats.errors.TimeoutError:
            continue
        for msg in batch:
            event = execution_pb2.ExecutionEvent.FromString(msg.data)
            if event.status.status == execution_pb2.EXECUTION_STATUS_RUNNING:
                await store.mark_running(event.execution_id, event.status.attempt)
            await msg.ack()
