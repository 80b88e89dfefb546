"""Execution statuses as stored in Postgres: the enum's short names."""

from __future__ import annotations

from sandmesh.execution.v1 import execution_pb2

_PREFIX = "EXECUTION_STATUS_"

QUEUED = "QUEUED"
RUNNING = "RUNNING"
OPEN = (QUEUED, RUNNING)


def to_name(status: execution_pb2.ExecutionStatus.ValueType) -> str:
    """`EXECUTION_STATUS_COMPLETED` → `COMPLETED`."""
    return execution_pb2.ExecutionStatus.Name(status).removeprefix(_PREFIX)


def from_name(name: str) -> execution_pb2.ExecutionStatus.ValueType:
    """`COMPLETED` → `EXECUTION_STATUS_COMPLETED`."""
    return execution_pb2.ExecutionStatus.Value(_PREFIX + name)


def priority(lane: str) -> execution_pb2.Priority.ValueType:
    """The priority a lane serves."""
    return execution_pb2.PRIORITY_BATCH if lane == "batch" else execution_pb2.PRIORITY_INTERACTIVE


def lane(priority: execution_pb2.Priority.ValueType) -> str:
    """The queue lane of a priority; unspecified means interactive."""
    if priority == execution_pb2.PRIORITY_BATCH:
        return "batch"
    return "interactive"
