"""A scheduler on a NATS server of its own, where only the executors a test starts run jobs.

Jobs stay QUEUED until a test starts an executor, which makes queued-state behaviour
(cancel, expiry, backpressure, positions) and executor faults observable.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from sandmesh.scheduler.v1 import scheduler_pb2_grpc
from sandmesh_devstack.mesh import ServiceProcess, health_status
from sandmesh_devstack.nats import LocalNats
from sandmesh_devstack.ports import free_port
from tests.conftest import Servers

ACK_WAIT_S = 1.0
MAX_DELIVER = 2
MAX_QUEUED_PER_TENANT = 8


@dataclass
class Island:
    """A scheduler and, on demand, executors, sharing one private NATS server."""

    nats: LocalNats
    scheduler: ServiceProcess
    env: dict[str, str]
    log_dir: Path
    api_key: str  # of tenant "default" in the island's own database
    executors: list[ServiceProcess] = field(default_factory=list)
    gateways: list[ServiceProcess] = field(default_factory=list)

    def start_executor(self, ready: bool = True, **overrides: str) -> ServiceProcess:
        port = free_port()
        env = {
            **self.env,
            "SANDMESH_EXECUTOR_PORT": str(port),
            "SANDMESH_EXECUTOR_CONCURRENCY": "1",
            **overrides,
        }
        executor = ServiceProcess(
            "executor", port, env, self.log_dir / f"executor-{len(self.executors)}.log"
        )
        executor.start()
        self.executors.append(executor)
        if ready:
            wait_ready(executor)
        return executor

    def start_gateway(self) -> ServiceProcess:
        port = free_port()
        env = {
            **self.env,
            "SANDMESH_GATEWAY_PORT": str(port),
            "SANDMESH_SCHEDULER_TARGET": self.scheduler.target,
        }
        gateway = ServiceProcess("gateway", port, env, self.log_dir / "gateway.log")
        gateway.start()
        self.gateways.append(gateway)
        wait_ready(gateway)
        return gateway


def wait_ready(service: ServiceProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health_status(service.target, "readiness") == "SERVING":
            return
        if service.exit_code() is not None:
            raise RuntimeError(f"{service.name} exited; see {service.log_path}")
        time.sleep(0.1)
    raise TimeoutError(f"{service.name} not ready; see {service.log_path}")


@pytest.fixture
def island(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Island]:
    base = tmp_path_factory.mktemp("island")
    nats = LocalNats.start(base / "nats")
    own = asyncio.run(servers.with_own_database(nats))
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": nats.url,
        "DATABASE_URL": own.database_url,
        "SANDMESH_HOST": "127.0.0.1",
        "SANDMESH_SCHEDULER_PORT": str(port),
        "SANDMESH_JOB_ACK_WAIT_S": str(ACK_WAIT_S),
        "SANDMESH_JOB_MAX_DELIVER": str(MAX_DELIVER),
        "SANDMESH_MAX_QUEUED_PER_TENANT": str(MAX_QUEUED_PER_TENANT),
        "SANDMESH_SWEEP_INTERVAL_S": "0.2",
        "SANDMESH_STUCK_MARGIN_S": "2",
        "SANDMESH_HEARTBEAT_INTERVAL_S": "0.5",
        "SANDMESH_EXECUTOR_SILENCE_S": "2",
        "SANDMESH_GRACE_S": "5",
    }
    scheduler = ServiceProcess("scheduler", port, env, base / "scheduler.log")
    scheduler.start()
    island = Island(nats, scheduler, env, base, own.api_key)
    try:
        wait_ready(scheduler)
        yield island
    finally:
        for service in [*island.gateways, *island.executors]:
            service.stop(10)
        scheduler.stop(10)
        nats.stop()


@pytest.fixture
async def scheduler(island: Island) -> AsyncIterator[scheduler_pb2_grpc.SchedulerServiceAsyncStub]:
    async with grpc.aio.insecure_channel(island.scheduler.target) as channel:
        yield scheduler_pb2_grpc.SchedulerServiceStub(channel)
