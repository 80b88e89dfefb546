"""Deadlines and retries of the `sandmesh.client` clients, shared by the sync and async one.

They are coded rather than declared in a gRPC service config because a service config can
neither wait for the server's `google.rpc.RetryInfo` nor resume a broken server stream.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class Deadline:
    """A point in time that a call, or a chain of calls, must finish by."""

    def __init__(self, timeout: float) -> None:
        self._at = time.monotonic() + timeout

    def remaining(self) -> float:
        """Seconds left, never below zero (a zero timeout fails the call DEADLINE_EXCEEDED)."""
        return max(self._at - time.monotonic(), 0.0)


def server_retry_delay(error: grpc.RpcError) -> float | None:
    """The wait the server asked for in a `google.rpc.RetryInfo` detail, if it sent one."""
    try:
        status = rpc_status.from_call(error)
    except ValueError:  # a status detail that contradicts the call's own status: ignore it
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            seconds: float = info.retry_delay.ToTimedelta().total_seconds()
            return seconds
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries a call that is safe to repeat: exponential backoff with jitter,
    never past the call's deadline. `max_attempts=1` turns retries off; 0 means no cap."""

    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    max_attempts: int = 0

    def delay(self, error: grpc.RpcError, attempt: int, deadline: Deadline) -> float | None:
        """Seconds to wait before retrying after `error` ended attempt `attempt` (from 0),
        or None when the error must reach the caller."""
        if self.max_attempts and attempt + 1 >= self.max_attempts:
            return None
        asked = server_retry_delay(error)
        code = error.code()
        # RESOURCE_EXHAUSTED without RetryInfo is a limit that waiting does not lift
        # (a message over the size limit, say); with it, the server's rate limit.
        retryable = code == grpc.StatusCode.UNAVAILABLE or (
            code == grpc.StatusCode.RESOURCE_EXHAUSTED and asked is not None
        )
        if not retryable:
            return None
        # Full jitter spreads clients that failed together; the server's wait is a floor.
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier**attempt)
        wait = max(random.uniform(0, ceiling), asked or 0.0)
        # A retry that could only start at or after the deadline would just fail later.
        return wait if wait < deadline.remaining() else None
