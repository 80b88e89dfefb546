"""The caller's deadline bounds every hop, across gRPC and across NATS."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from sandmesh import client
from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from sandmesh_devstack.mesh import Mesh
from tests.helpers.calls import count_executions
from tests.helpers.servers import Servers


def rpc_lines(log: Path, method: str) -> list[dict[str, object]]:
    lines = []
    for raw in log.read_text().splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if entry.get("message") == "rpc" and str(entry.get("method", "")).endswith(method):
            lines.append(entry)
    return lines


async def test_slow_downstream_ends_in_deadline_exceeded_and_saw_less_time(
    mesh: Mesh, servers: Servers
) -> None:
    before = await count_executions(servers.postgres.url)
    scheduler_log = mesh.services["scheduler"].log_path
    seen = len(rpc_lines(scheduler_log, "/Enqueue"))
    # A real slow downstream: the scheduler's INSERT waits on a lock the test holds.
    async with await psycopg.AsyncConnection.connect(servers.postgres.url) as locker:
        await locker.execute("LOCK TABLE executions IN ACCESS EXCLUSIVE MODE")
        async with client.connect(mesh.services["gateway"].target, servers.api_key) as channel:
            gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await gateway.SubmitExecution(
                    gateway_pb2.SubmitExecutionRequest(
                        request=execution_pb2.ExecutionRequest(language="python3", source="1")
                    ),
                    timeout=0.3,
                )
            elapsed = time.monotonic() - started
        await locker.rollback()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 1.0

    for _ in range(50):
        lines = rpc_lines(scheduler_log, "/Enqueue")[seen:]
        if lines:
            break
        await asyncio.sleep(0.1)
    (enqueue,) = lines
    time_left = enqueue["time_left_ms"]
    assert isinstance(time_left, float) and 0 < time_left <= 300
    # Postgres stopped too: the statement was bounded by the same deadline, so nothing was kept.
    assert await count_executions(servers.postgres.url) == before


async def test_job_deadline_travels_over_nats_and_bounds_the_run(mesh: Mesh) -> None:
    deadline = Timestamp()
    deadline.FromNanoseconds(int((time.time() + 1.5) * 1e9))
    async with grpc.aio.insecure_channel(mesh.services["scheduler"].target) as channel:
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        enqueued = await scheduler.Enqueue(
            scheduler_pb2.EnqueueRequest(
                tenant="default",
                request=execution_pb2.ExecutionRequest(
                    language="python3",
                    source="import time\ntime.sleep(30)",
                    limits=execution_pb2.Limits(wall_time_ms=20000),
                ),
                deadline=deadline,
            ),
            timeout=5,
        )
        for _ in range(100):
            got = await scheduler.GetExecution(
                scheduler_pb2.GetExecutionRequest(
                    tenant="default", execution_id=enqueued.execution.id
                ),
                timeout=5,
            )
            if got.execution.HasField("result"):
                break
            await asyncio.sleep(0.1)
    result = got.execution.result
    # The 20 s wall limit was cut to what was left of the 1.5 s deadline.
    assert result.status == execution_pb2.EXECUTION_STATUS_TIMEOUT, result.detail
    assert result.usage.wall_time_ms < 1500 + 500


async def test_job_past_its_deadline_expires_without_running(mesh: Mesh) -> None:
    deadline = Timestamp()
    deadline.FromNanoseconds(int((time.time() - 1) * 1e9))
    async with grpc.aio.insecure_channel(mesh.services["scheduler"].target) as channel:
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        enqueued = await scheduler.Enqueue(
            scheduler_pb2.EnqueueRequest(
                tenant="default",
                request=execution_pb2.ExecutionRequest(language="python3", source="print(1)"),
                deadline=deadline,
            ),
            timeout=5,
        )
        for _ in range(100):
            got = await scheduler.GetExecution(
                scheduler_pb2.GetExecutionRequest(
                    tenant="default", execution_id=enqueued.execution.id
                ),
                timeout=5,
            )
            if got.execution.HasField("result"):
                break
            await asyncio.sleep(0.1)
    assert got.execution.status == execution_pb2.EXECUTION_STATUS_EXPIRED
    assert got.execution.result.stdout == b""
