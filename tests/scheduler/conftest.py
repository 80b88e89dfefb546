"""A scheduler on a NATS server of its own, where only the executors a test starts run jobs.

Jobs stay QUEUED until a test starts an executor, which makes queued-state behaviour
(cancel, expiry, backpressure, positions) and executor faults observable.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from sandmesh.scheduler.v1 import scheduler_pb2_grpc
from sandmesh_devstack.mesh import ServiceProcess
from sandmesh_devstack.nats import LocalNats
from sandmesh_devstack.ports import free_port
from tests.helpers.island import ACK_WAIT_S, MAX_DELIVER, MAX_QUEUED_PER_TENANT, Island, wait_ready
from tests.helpers.servers import Servers


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
