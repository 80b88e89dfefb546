"""Streams and durable consumers, declared in code and created idempotently at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass

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

from sandmesh_queue import outputs, subjects
from sandmesh_runtime.settings import SettingsError, env

log = logging.getLogger("sandmesh.queue")

# Broker-side dedupe of republished jobs and results (Nats-Msg-Id) holds this long.
DUPLICATE_WINDOW_S = 120.0
EVENTS_MAX_AGE_S = 3600.0


@dataclass(frozen=True)
class QueueSettings:
    """Where NATS is, how the streams are kept and how long a job may wait or go
    unacknowledged."""

    url: str = env("NATS_URL", "nats://127.0.0.1:4222", "NATS with JetStream")
    queue_ttl_s: float = env(
        "SANDMESH_QUEUE_TTL_S",
        600.0,
        "how long a submitted execution may wait to run (its deadline when the caller gave none)",
    )

    # An executor heartbeats with in_progress() well inside ack_wait; a silent one is
    # presumed dead and its job redelivered.
    job_ack_wait_s: float = env(
        "SANDMESH_JOB_ACK_WAIT_S", 30.0, "a job unacknowledged this long goes to another executor"
    )
    job_max_deliver: int = env(
        "SANDMESH_JOB_MAX_DELIVER", 5, "deliveries of a job before it becomes a dead letter"
    )
    replicas: int = env(
        "SANDMESH_STREAM_REPLICAS", 1, "copies of every stream in a NATS cluster (1 to 5)"
    )
    retention_s: float = env(
        "SANDMESH_RETENTION_S",
        7 * 24 * 3600.0,
        "how long a finished execution, and the output stored with it, is kept",
    )

    def __post_init__(self) -> None:
        if not 1 <= self.replicas <= 5:
            raise SettingsError(f"SANDMESH_STREAM_REPLICAS must be 1 to 5, got {self.replicas}")
        if self.job_ack_wait_s <= 0:
            raise SettingsError(
                f"SANDMESH_JOB_ACK_WAIT_S must be above 0, got {self.job_ack_wait_s}"
            )
        if self.retention_s <= 0:
            raise SettingsError(f"SANDMESH_RETENTION_S must be above 0, got {self.retention_s}")
        if self.job_max_deliver < 1:
            raise SettingsError(
                f"SANDMESH_JOB_MAX_DELIVER must be at least 1, got {self.job_max_deliver}"
            )


def stream_configs(settings: QueueSettings) -> tuple[StreamConfig, ...]:
    """The four streams, each kept on `settings.replicas` servers."""
    return (
        StreamConfig(
            name=subjects.JOBS_STREAM,
            subjects=["sandmesh.jobs.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            duplicate_window=DUPLICATE_WINDOW_S,
            discard=DiscardPolicy.NEW,
        ),
        StreamConfig(
            name=subjects.RESULTS_STREAM,
            subjects=[subjects.RESULTS_SUBJECTS],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            duplicate_window=DUPLICATE_WINDOW_S,
        ),
        # Advisories are fire-and-forget; a stream keeps them until the scheduler has handled them.
        StreamConfig(
            name=subjects.ADVISORIES_STREAM,
            subjects=[subjects.MAX_DELIVERIES_ADVISORY],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
        ),
        StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=["sandmesh.events.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=EVENTS_MAX_AGE_S,
        ),
    )


def consumer_configs(settings: QueueSettings) -> tuple[tuple[str, ConsumerConfig], ...]:
    """The durable consumers, as (stream, config)."""
    return (
        *(
            (
                subjects.JOBS_STREAM,
                ConsumerConfig(
                    durable_name=subjects.executor_consumer(lane),
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=settings.job_ack_wait_s,
                    max_deliver=settings.job_max_deliver,
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
                filter_subject=subjects.RESULTS_SUBJECTS,
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


async def ensure_streams(js: JetStreamContext, settings: QueueSettings) -> None:
    """Create the streams and durable consumers, or bring existing ones up to date."""
    consumers = consumer_configs(settings)
    for config in stream_configs(settings):
        try:
            await js.add_stream(config)
        except BadRequestError:
            # The stream exists with another config: converge it on ours.
            await js.update_stream(config)
    declared = {(stream, c.durable_name) for stream, c in consumers}
    for stream in (subjects.JOBS_STREAM,):
        # A work queue refuses overlapping consumers, so an undeclared one (from an older
        # layout) would block the declared ones: it goes.
        for info in await js.consumers_info(stream):
            if (stream, info.name) not in declared:
                log.warning("removing undeclared consumer", extra={"consumer": info.name})
                await js.delete_consumer(stream, info.name)
    for stream, consumer in consumers:
        # add_consumer on an existing durable updates it in place, so this is idempotent.
        await js.add_consumer(stream, consumer)
    await outputs.ensure_bucket(js, settings.retention_s, settings.replicas)
    log.info("streams ready", extra={"replicas": settings.replicas})
