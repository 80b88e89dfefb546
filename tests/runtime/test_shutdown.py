"""SIGTERM: readiness drops, new calls are refused, in-flight calls finish, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc
import psycopg
import pytest

from sandmesh.execution.v1 import execution_pb2
from sandmesh.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from sandmesh_devstack.mesh import ServiceProcess, health_status
from sandmesh_devstack.ports import free_port
from tests.helpers.servers import Servers


async def wait_for_blocked_query(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for _ in range(100):
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND query LIKE '%FROM executions%'"
            )
            row = await cursor.fetchone()
            if row and row[0] > 0:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the Enqueue call never reached Postgres")


async def test_sigterm_finishes_in_flight_call_refuses_new_ones_and_exits_zero(
    servers: Servers, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": servers.nats.url,
        "DATABASE_URL": servers.postgres.url,
        "SANDMESH_HOST": "127.0.0.1",
        "SANDMESH_SCHEDULER_PORT": str(port),
        "SANDMESH_GRACE_S": "15",
    }
    scheduler = ServiceProcess("scheduler", port, env, tmp_path / "scheduler.log")
    scheduler.start()
    try:
        for _ in range(100):
            if health_status(scheduler.target, "readiness") == "SERVING":
                break
            await asyncio.sleep(0.1)
        assert health_status(scheduler.target, "readiness") == "SERVING"

        async with await psycopg.AsyncConnection.connect(servers.postgres.url) as locker:
            # Hold the table so the call below stays in flight until the test lets it go.
            await locker.execute("LOCK TABLE executions IN ACCESS EXCLUSIVE MODE")
            async with grpc.aio.insecure_channel(scheduler.target) as channel:
                stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
                in_flight = asyncio.ensure_future(
                    stub.Enqueue(
                        scheduler_pb2.EnqueueRequest(
                            tenant="default",
                            request=execution_pb2.ExecutionRequest(
                                language="python3", source="print('drained')"
                            ),
                        ),
                        timeout=20,
                    )
                )
                await wait_for_blocked_query(servers.postgres.url)
                signalled = time.monotonic()
                scheduler.signal(signal.SIGTERM)
                await asyncio.sleep(0.5)

                async with grpc.aio.insecure_channel(scheduler.target) as fresh:
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await scheduler_pb2_grpc.SchedulerServiceStub(fresh).GetExecution(
                            scheduler_pb2.GetExecutionRequest(tenant="default", execution_id="x"),
                            timeout=2,
                        )
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert not in_flight.done()

                await locker.rollback()
                response = await in_flight
        assert response.execution.status == execution_pb2.EXECUTION_STATUS_QUEUED
        assert scheduler.process is not None
        code = await asyncio.to_thread(scheduler.process.wait, 15)
        assert code == 0
        assert time.monotonic() - signalled < 15
    finally:
        scheduler.stop()
