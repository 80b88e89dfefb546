"""With the scheduler gone the gateway refuses fast, stays healthy, and heals by itself."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from sandmesh import client
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh_devstack.mesh import Mesh, ServiceProcess, health_status
from sandmesh_devstack.ports import free_port
from sandmesh_runtime.errors import details_of
from tests.helpers.island import wait_ready
from tests.helpers.servers import Servers

COOLDOWN_S = 1.0


async def test_breaker_opens_on_a_dead_scheduler_and_closes_when_it_returns(
    mesh: Mesh, servers: Servers, tmp_path: Path
) -> None:
    scheduler_port, gateway_port = free_port(), free_port()
    env = {
        **os.environ,
        "NATS_URL": servers.nats.url,
        "DATABASE_URL": servers.postgres.url,
        "SANDMESH_HOST": "127.0.0.1",
        "SANDMESH_SCHEDULER_PORT": str(scheduler_port),
        "SANDMESH_GATEWAY_PORT": str(gateway_port),
        "SANDMESH_SCHEDULER_TARGET": f"127.0.0.1:{scheduler_port}",
        "SANDMESH_EXECUTOR_TARGET": mesh.services["executor"].target,
        "SANDMESH_BREAKER_COOLDOWN_S": str(COOLDOWN_S),
    }
    scheduler = ServiceProcess("scheduler", scheduler_port, env, tmp_path / "scheduler.log")
    gateway = ServiceProcess("gateway", gateway_port, env, tmp_path / "gateway.log")
    scheduler.start()
    gateway.start()
    try:
        wait_ready(scheduler)
        wait_ready(gateway)
        async with client.connect(gateway.target, servers.api_key) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            request = gateway_pb2.GetExecutionRequest(
                execution_id="00000000-0000-0000-0000-000000000000"
            )

            async def call() -> grpc.aio.AioRpcError:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.GetExecution(request, timeout=5)
                return caught.value

            assert (await call()).code() == grpc.StatusCode.NOT_FOUND
            assert scheduler.process is not None
            scheduler.process.kill()
            scheduler.process.wait(10)

            for _ in range(5):
                assert (await call()).code() == grpc.StatusCode.UNAVAILABLE
            started = time.monotonic()
            refused = await call()
            assert time.monotonic() - started < 1.0
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
            assert any(isinstance(d, error_details_pb2.RetryInfo) for d in details_of(refused))
            assert health_status(gateway.target, "liveness") == "SERVING"
            assert "circuit breaker open" in gateway.log_path.read_text()

            scheduler.start()
            wait_ready(scheduler)
            deadline = time.monotonic() + 10 * COOLDOWN_S
            while (await call()).code() != grpc.StatusCode.NOT_FOUND:
                assert time.monotonic() < deadline, "the gateway never recovered"
                await asyncio.sleep(0.2)
            assert "circuit breaker closed" in gateway.log_path.read_text()
    finally:
        gateway.stop(10)
        scheduler.stop(10)
