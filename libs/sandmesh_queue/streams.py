"""Streams and durable consumers, declared in code and created idempotently at start-up."""

from __future__ import annotations

import logging
import os

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError

from sandmesh_queue import subjects

log = logging.getLogger("sandmesh.queue")

# Broker-side dedupe of republished jobs and results (Nats-Msg-Id) holds this long.
DUPLICATE_WINDOW_S = 120.0
EVENTS_MAX_AGE_S = 3600.0

# An executor heartbeats with in_progress() well inside this; a silent one is presumed dead.
# Both are settings so tests and small clusters can shorten the wait for redelivery.
JOB_ACK_WAIT_S = float(os.environ.get("SANDMESH_JOB_ACK_WAIT_S", "30"))
JOB_MAX_DELIVER = int(os.environ.get("SANDMESH_JOB_MAX_DELIVER", "5"))

STREAMS = (
    StreamConfig(
        name=subjects.JOBS_STREAM,
        subjects=["sandmesh.jobs.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
        discard=DiscardPolicy.NEW,
    ),
    StreamConfig(
        name=subjects.RESULTS_STREAM,
        subjects=[subjects.RESULTS_SUBJECT],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
    ),
    # Advisories are fire-and-forget; a stream keeps them until the scheduler has handled them.
    StreamConfig(
        name=subjects.ADVISORIES_STREAM,
        subjects=[subjects.MAX_DELIVERIES_ADVISORY],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
    ),
    StreamConfig(
        name=subjects.EVENTS_STREAM,
        subjects=["sandmesh.events.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=EVENTS_MAX_AGE_S,
    ),
)

CONSUMERS = (
    *(
        (
            subjects.JOBS_STREAM,
            ConsumerConfig(
                durable_name=subjects.executor_consumer(lane),
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=JOB_ACK_WAIT_S,
                max_deliver=JOB_MAX_DELIVER,
                filter_subject=subjects.job_subject(lane),
            ),
        )
        for lane in subjects.LANES
    ),
    (
        subjects.RESULTS_STREAM,
        ConsumerConfig(
            durable_name=subjects.RESULTS_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
            filter_subject=subjects.RESULTS_SUBJECT,
        ),
    ),
    (
        subjects.EVENTS_STREAM,
        ConsumerConfig(
            durable_name=subjects.STATUS_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
            deliver_policy=DeliverPolicy.NEW,
            filter_subject="sandmesh.events.*.status",
        ),
    ),
    (
        subjects.ADVISORIES_STREAM,
        ConsumerConfig(
            durable_name=subjects.DEAD_LETTER_CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
        ),
    ),
)


async def ensure_streams(js: JetStreamContext) -> None:
    """Create the streams and durable consumers, or bring existing ones up to date."""
    for config in STREAMS:
        try:
            await js.add_stream(config)
        except BadRequestError:
            # The stream exists with another config: converge it on ours.
            await js.update_stream(config)
    declared = {(stream, c.durable_name) for stream, c in CONSUMERS}
    for stream in (subjects.JOBS_STREAM,):
        # A work queue refuses overlapping consumers, so an undeclared one (from an older
        # layout) would block the declared ones: it goes.
        for info in await js.consumers_info(stream):
            if (stream, info.name) not in declared:
                log.warning("removing undeclared consumer", extra={"consumer": info.name})
                await js.delete_consumer(stream, info.name)
    for stream, consumer in CONSUMERS:
        # add_consumer on an existing durable updates it in place, so this is idempotent.
        await js.add_consumer(stream, consumer)
    log.info("streams ready", extra={"streams": [s.name for s in STREAMS]})
