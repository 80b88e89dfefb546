"""Publishing the protobuf payloads of the queue, with their headers (the trace context
included, so a consumer continues the publisher's trace).

Every publish waits for JetStream's ack, so a message counts as sent only once it is stored.
"""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import JetStreamContext
from nats.js.api import PubAck

from sandmesh.execution.v1 import execution_pb2
from sandmesh.queue.v1 import queue_pb2
from sandmesh_queue import subjects
from sandmesh_runtime import deadlines, telemetry

PUBLISH_TIMEOUT_S = 5.0


async def publish_job(js: JetStreamContext, job: queue_pb2.Job, lane: str) -> PubAck:
    """Queue a job; its execution id is the dedupe key, so a republish is dropped by the broker."""
    return await js.publish(
        subjects.job_subject(lane),
        job.SerializeToString(),
        timeout=deadlines.timeout(PUBLISH_TIMEOUT_S),
        headers=telemetry.inject(
            {
                subjects.MSG_ID_HEADER: job.execution_id,
                subjects.TENANT_HEADER: job.tenant,
                deadlines.DEADLINE_HEADER: deadlines.to_header(
                    job.deadline.ToMilliseconds() / 1000
                ),
            }
        ),
    )


async def publish_result(js: JetStreamContext, result: queue_pb2.JobResult) -> PubAck:
    """Report the result of one attempt; (execution id, attempt) is the dedupe key."""
    return await js.publish(
        subjects.result_subject(result.execution_id),
        result.SerializeToString(),
        timeout=PUBLISH_TIMEOUT_S,
        headers=telemetry.inject(
            {subjects.MSG_ID_HEADER: f"{result.execution_id}:{result.attempt}"}
        ),
    )


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(time.time_ns())
    return stamp


async def publish_event(js: JetStreamContext, event: execution_pb2.ExecutionEvent) -> PubAck:
    """Append an event to the execution's event log (its sequence is the stream's)."""
    kind = event.WhichOneof("kind")
    if kind is None:
        raise ValueError("an execution event needs a kind")
    if not event.HasField("time"):
        event.time.CopyFrom(_now())
    return await js.publish(
        subjects.event_subject(event.execution_id, kind),
        event.SerializeToString(),
        timeout=PUBLISH_TIMEOUT_S,
        headers=telemetry.inject({}),
    )


def job_deadline(headers: dict[str, str] | None) -> float | None:
    """The absolute deadline a job message carries, if any."""
    return deadlines.from_header((headers or {}).get(deadlines.DEADLINE_HEADER))
