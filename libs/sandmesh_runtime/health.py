"""gRPC health: "" and `readiness` follow real dependency checks, `liveness` the process.

Checks run in a background loop, each under its own timeout, and the servicer answers
from memory, so a health call never waits on a dependency and can never hang.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from grpc_health.v1 import health, health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

LIVENESS = "liveness"
READINESS = "readiness"

log = logging.getLogger("sandmesh.health")


@dataclass(frozen=True)
class Check:
    """A named dependency probe; it passes when `probe` returns without raising in time."""

    name: str
    probe: Callable[[], Awaitable[None]]
    timeout: float = 0.8


class Health:
    """Owns the health servicer and the readiness loop of one service."""

    def __init__(self, services: Sequence[str], checks: Sequence[Check], interval: float) -> None:
        self.servicer = health.aio.HealthServicer()
        self._services = ["", READINESS, *services]
        self._checks = tuple(checks)
        self._interval = interval
        self._draining = False
        self._failing: dict[str, str] = {}

    async def start(self) -> None:
        await self.servicer.set(LIVENESS, SERVING)
        for service in self._services:
            await self.servicer.set(service, NOT_SERVING)

    @property
    def failing(self) -> dict[str, str]:
        """The checks that failed last time, with the reason."""
        return dict(self._failing)

    async def _run_check(self, check: Check) -> str | None:
        try:
            await asyncio.wait_for(check.probe(), check.timeout)
        except TimeoutError:
            return f"no answer within {check.timeout:.1f} s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    async def evaluate(self) -> bool:
        """Run every check once and publish the result; True when all passed."""
        results = await asyncio.gather(*(self._run_check(c) for c in self._checks))
        failing = {c.name: r for c, r in zip(self._checks, results, strict=True) if r}
        if failing != self._failing:
            if failing:
                log.warning("not ready", extra={"failing": failing})
            else:
                log.info("ready")
        self._failing = failing
        if not self._draining:
            status = NOT_SERVING if failing else SERVING
            for service in self._services:
                await self.servicer.set(service, status)
        return not failing

    async def run(self) -> None:
        """Re-evaluate readiness forever, every `interval` seconds."""
        while True:
            await self.evaluate()
            await asyncio.sleep(self._interval)

    async def drain(self) -> None:
        """Report NOT_SERVING everywhere but liveness, for good: the process is stopping."""
        self._draining = True
        for service in self._services:
            await self.servicer.set(service, NOT_SERVING)
