"""Streams and consumers are declared in code, created idempotently, and dedupe republished jobs."""

from __future__ import annotations

import time
import uuid

import nats
from nats.js.api import RetentionPolicy

from sandmesh.execution.v1 import execution_pb2
from sandmesh.queue.v1 import queue_pb2
from sandmesh_queue import messages, streams, subjects


async def test_ensure_streams_twice_changes_nothing(js: nats.js.JetStreamContext) -> None:
    settings = streams.QueueSettings()
    names = [str(s.name) for s in streams.stream_configs(settings)]
    consumers = [(stream, str(c.durable_name)) for stream, c in streams.consumer_configs(settings)]
    await streams.ensure_streams(js, settings)
    first = {name: (await js.stream_info(name)).config for name in names}
    durable = {key: (await js.consumer_info(*key)).config for key in consumers}
    await streams.ensure_streams(js, settings)
    assert {name: (await js.stream_info(name)).config for name in names} == first
    for key, before in durable.items():
        after = (await js.consumer_info(*key)).config
        assert (after.ack_wait, after.max_deliver, after.filter_subject) == (
            before.ack_wait,
            before.max_deliver,
            before.filter_subject,
        )
    assert first[subjects.JOBS_STREAM].retention == RetentionPolicy.WORK_QUEUE
    assert first[subjects.EVENTS_STREAM].retention == RetentionPolicy.LIMITS


async def test_republished_job_is_dropped_by_the_broker(js: nats.js.JetStreamContext) -> None:
    await streams.ensure_streams(js, streams.QueueSettings())
    job = queue_pb2.Job(
        execution_id=str(uuid.uuid4()),
        tenant="t",
        request=execution_pb2.ExecutionRequest(language="python3", source="print(1)"),
    )
    job.deadline.FromSeconds(int(time.time()) + 60)
    # A lane no executor consumes, so the test can count what is stored.
    first = await messages.publish_job(js, job, f"test-{uuid.uuid4().hex[:8]}")
    again = await messages.publish_job(js, job, "unused")
    assert not first.duplicate
    assert again.duplicate and again.seq == first.seq
