"""Subject and header names: the wire contract of the work queue."""

from __future__ import annotations

JOBS_STREAM = "JOBS"
RESULTS_STREAM = "RESULTS"
EVENTS_STREAM = "EVENTS"
ADVISORIES_STREAM = "ADVISORIES"

# One subject per execution, so an executor can look up a result the scheduler has not
# taken yet.
RESULTS_SUBJECTS = "sandmesh.results.>"
# Core NATS (not JetStream): executors announce themselves here; the scheduler listens.
HEARTBEAT_SUBJECT = "sandmesh.executors.heartbeat"
# Core NATS (not JetStream): every executor hears it and kills the named run if it has it.
CANCEL_SUBJECT = "sandmesh.control.cancel"

MSG_ID_HEADER = "Nats-Msg-Id"
TENANT_HEADER = "Sandmesh-Tenant"

# Priority lanes, highest first; each has its own durable consumer shared by all executors.
LANES = ("interactive", "batch")


def executor_consumer(lane: str) -> str:
    """The durable consumer executors pull `lane`'s jobs from."""
    return f"executors-{lane}"


RESULTS_CONSUMER = "scheduler-results"
STATUS_CONSUMER = "scheduler-status"
DEAD_LETTER_CONSUMER = "scheduler-dead-letters"

# JetStream announces a job that used up max_deliver here, as a plain NATS message.
MAX_DELIVERIES_ADVISORY = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.>"


def result_subject(execution_id: str) -> str:
    """Where the results of one execution are published."""
    return f"sandmesh.results.{execution_id}"


def job_subject(lane: str) -> str:
    """Where jobs of one priority lane are published."""
    return f"sandmesh.jobs.{lane}"


def event_subject(execution_id: str, kind: str) -> str:
    """Where one execution's events of `kind` (status, output, result) are published."""
    return f"sandmesh.events.{execution_id}.{kind}"


def execution_events(execution_id: str) -> str:
    """A filter matching every event of one execution."""
    return f"sandmesh.events.{execution_id}.>"
