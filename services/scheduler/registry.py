"""The executors the scheduler has heard from, and which of them went silent."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.aio.msg import Msg

from sandmesh.executor.v1 import executor_pb2
from sandmesh.scheduler.v1 import scheduler_pb2

log = logging.getLogger("sandmesh.scheduler")


@dataclass
class _Record:
    capacity: int
    running: int
    heard_at: float
    heard_on: datetime
    alive: bool = True


class Registry:
    """Executors by id; one is dead after `silence_s` without a heartbeat."""

    def __init__(self, silence_s: float) -> None:
        self._silence_s = silence_s
        self._executors: dict[str, _Record] = {}

    async def heard(self, msg: Msg) -> None:
        """Subscription callback for executor heartbeats."""
        beat = executor_pb2.ExecutorHeartbeat.FromString(msg.data)
        if beat.executor_id not in self._executors:
            log.info("executor joined", extra={"executor_id": beat.executor_id})
        self._executors[beat.executor_id] = _Record(
            capacity=beat.capacity,
            running=beat.running,
            heard_at=time.monotonic(),
            heard_on=datetime.now(UTC),
        )

    def newly_dead(self) -> list[str]:
        """Executors that went silent since the last call."""
        now = time.monotonic()
        dead = []
        for executor_id, record in self._executors.items():
            if record.alive and now - record.heard_at > self._silence_s:
                record.alive = False
                dead.append(executor_id)
                log.warning("executor went silent", extra={"executor_id": executor_id})
        return dead

    def snapshot(self) -> list[scheduler_pb2.ExecutorStatus]:
        statuses = []
        for executor_id, record in sorted(self._executors.items()):
            status = scheduler_pb2.ExecutorStatus(
                executor_id=executor_id,
                capacity=record.capacity,
                running=record.running,
                alive=record.alive,
            )
            status.last_seen.FromDatetime(record.heard_on)
            statuses.append(status)
        return statuses
