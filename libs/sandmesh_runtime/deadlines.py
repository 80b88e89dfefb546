"""Deadline propagation: the time left on the incoming call bounds every outgoing one.

The deadline is kept as an absolute wall-clock time so it can cross process boundaries
(gRPC sets it from `context.time_remaining()`; NATS carries it in a header).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from sandmesh_runtime.errors import DeadlineExceeded

DEADLINE_HEADER = "Sandmesh-Deadline"
# The longest an outgoing call or a wait for a pooled connection may take when the caller
# gave no deadline (and the most it may take when it gave a longer one).
DEFAULT_TIMEOUT_S = 5.0
HANDOFF_MARGIN_S = 0.005

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


def current() -> float | None:
    """The absolute deadline (Unix seconds) of the call being served, if any."""
    return _deadline.get()


def set_deadline(deadline: float | None) -> contextvars.Token[float | None]:
    """Make `deadline` the deadline of the current task and its children."""
    return _deadline.set(deadline)


def time_left() -> float | None:
    """Seconds until the current deadline, or None when the caller set none."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.time()


def timeout(default: float = DEFAULT_TIMEOUT_S) -> float:
    """The timeout for an outgoing call: the time left, never more than `default`.

    A few milliseconds are held back so the answer can still reach our caller in time, and
    so gRPC's rounding of the timeout on the wire never hands the callee more than we had.
    Raises DeadlineExceeded when nothing is left, so no downstream work starts late.
    """
    left = time_left()
    if left is None:
        return default
    left -= HANDOFF_MARGIN_S
    if left <= 0:
        raise DeadlineExceeded("the caller's deadline has passed")
    return min(left, default)


def to_header(deadline: float) -> str:
    """Encode an absolute deadline for a NATS header (milliseconds since the epoch)."""
    return str(int(deadline * 1000))


def from_header(value: str | None) -> float | None:
    """Decode a deadline header; None when absent or malformed."""
    if not value:
        return None
    try:
        return int(value) / 1000.0
    except ValueError:
        return None


@contextlib.asynccontextmanager
async def deadline_hook(
    method: str, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[None]:
    """Call hook: expose the call's deadline through `current()` while it is served."""
    remaining = context.time_remaining()
    # Not reset afterwards: every call runs in a task (and context) of its own, and a stream
    # its client abandoned is closed from another context, where a reset would fail.
    _deadline.set(None if remaining is None else time.time() + remaining)
    yield
