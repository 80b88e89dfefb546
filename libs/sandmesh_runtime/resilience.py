"""The resilience kit: a circuit breaker per downstream, and bounded retries that tell a
fault that may pass from one that never will."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TypeVar

from sandmesh_runtime import metrics

log = logging.getLogger("sandmesh.resilience")
T = TypeVar("T")


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after `failures` consecutive failures; after `cooldown_s` lets one trial call
    through (half-open), which closes it on success or opens it again on failure."""

    def __init__(self, name: str, failures: int = 5, cooldown_s: float = 5.0) -> None:
        self.name = name
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False
        self.state = BreakerState.CLOSED

    def retry_after(self) -> float:
        """Seconds until a call may be tried again; 0 when one may go now."""
        if self.state is BreakerState.CLOSED:
            return 0.0
        left = self._opened_at + self._cooldown_s - time.monotonic()
        if left > 0 or self._trial_running:
            return max(left, 0.1)
        return 0.0

    def allow(self) -> bool:
        """Whether a call may go now; in half-open state only one trial at a time."""
        if self.retry_after() > 0:
            return False
        if self.state is BreakerState.OPEN:
            self._set(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN:
            self._trial_running = True
        return True

    def succeeded(self) -> None:
        self._failures = 0
        self._trial_running = False
        if self.state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def failed(self) -> None:
        self._failures += 1
        self._trial_running = False
        if self.state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self._opened_at = time.monotonic()
            if self.state is not BreakerState.OPEN:
                self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        log.warning("circuit breaker %s", state.value, extra={"downstream": self.name})
        metrics.BREAKER_OPEN.labels(self.name).set(1 if state is BreakerState.OPEN else 0)
        self.state = state


class Permanent(Exception):
    """A fault that can never pass on retry (too large, unparsable, refused)."""


class GaveUp(Exception):
    """A passing fault outlasted the time its retries were given."""


async def retry_until(
    call: Callable[[], Awaitable[T]],
    *,
    until: float,
    permanent: Callable[[BaseException], bool],
    what: str,
    base_s: float = 0.2,
    cap_s: float = 5.0,
) -> T:
    """`call()` until it succeeds, with exponential backoff and jitter, each try bounded by
    the time left before `until` (a `time.monotonic()` instant).

    A fault `permanent` says can never pass raises Permanent at once; a passing one that is
    still there at `until` raises GaveUp.
    """
    delay = base_s
    while True:
        left = until - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError(f"{what}: no time left")
            return await asyncio.wait_for(call(), timeout=left)
        except Exception as exc:
            if permanent(exc):
                raise Permanent(f"{what}: {exc or type(exc).__name__}") from exc
            pause = delay * random.uniform(0.5, 1.5)
            if time.monotonic() + pause >= until:
                raise GaveUp(f"{what}: {exc or type(exc).__name__}") from exc
            log.warning("retrying", extra={"step": what, "error": str(exc), "delay_s": pause})
        await asyncio.sleep(pause)
        delay = min(delay * 2, cap_s)
