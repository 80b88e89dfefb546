"""Faults under load: nothing accepted is lost, nothing runs twice, nothing stays open.

A mesh of its own (own NATS, own services, the session's Postgres) so restarts here do not
disturb other tests. Runs are counted on the executor side, from its "job done" log lines.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
import uuid
from collections.abc import Iterator

import grpc
import psycopg
import pytest

from sandmesh import client
from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh_devstack.mesh import Mesh, health_status
from tests.helpers.servers import Servers, own_mesh

OPEN = ("QUEUED", "RUNNING")


@pytest.fixture(scope="module")
def fault_mesh(
    servers: Servers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Mesh, Servers]]:
    extra_env = {
        "SANDMESH_JOB_ACK_WAIT_S": "3",
        "SANDMESH_MAX_QUEUED_PER_TENANT": "5000",
        # This is a load test of the queue, not of the tenant's rate limit.
        "SANDMESH_PRO_RATE_PER_S": "10000",
        "SANDMESH_PRO_BURST": "10000",
    }
    with own_mesh(servers, tmp_path_factory.mktemp("faults"), extra_env) as (mesh, own):
        yield mesh, own


def runs_by_execution(mesh: Mesh) -> collections.Counter[str]:
    """How many times the executor ran each execution, from its own log."""
    runs: collections.Counter[str] = collections.Counter()
    for line in mesh.services["executor"].log_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("message") == "job done":
            runs[entry["execution_id"]] += 1
    return runs


async def wait_all_final(url: str, ids: list[str], timeout: float) -> dict[str, str]:
    keys = [uuid.UUID(i) for i in ids]
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            cursor = await conn.execute(
                "SELECT id::text, status FROM executions WHERE id = ANY(%s)", (keys,)
            )
            statuses: dict[str, str] = dict(await cursor.fetchall())
            if all(s not in OPEN for s in statuses.values()) or time.monotonic() > deadline:
                return statuses
            await asyncio.sleep(0.5)


async def submit_with_retries(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub, source: str, key: str
) -> str:
    """Submit as a careful client does: retry UNAVAILABLE with the same idempotency key."""
    for _ in range(100):
        try:
            response = await gateway.SubmitExecution(
                gateway_pb2.SubmitExecutionRequest(
                    request=execution_pb2.ExecutionRequest(language="python3", source=source),
                    idempotency_key=key,
                ),
                timeout=10,
            )
            return response.execution.id
        except grpc.aio.AioRpcError as error:
            if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            await asyncio.sleep(0.2)
    raise AssertionError(f"submission {key} never accepted")


async def test_hundred_clients_submitting_ten_each_give_a_thousand_final_states(
    fault_mesh: tuple[Mesh, Servers],
) -> None:
    mesh, servers = fault_mesh
    target = mesh.services["gateway"].target

    async def one_client(number: int) -> list[str]:
        async with client.connect(target, servers.api_key) as channel:
            gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
            return [
                await submit_with_retries(gateway, f"print({number * 10 + i})", uuid.uuid4().hex)
                for i in range(10)
            ]

    ids = [i for batch in await asyncio.gather(*(one_client(n) for n in range(100))) for i in batch]
    assert len(set(ids)) == 1000
    statuses = await wait_all_final(servers.database_url, ids, timeout=240)
    assert collections.Counter(statuses.values()) == {"COMPLETED": 1000}
    runs = runs_by_execution(mesh)
    assert all(runs[i] == 1 for i in ids), {i: runs[i] for i in ids if runs[i] != 1}


async def test_nats_restart_during_a_burst_loses_nothing_and_runs_nothing_twice(
    fault_mesh: tuple[Mesh, Servers],
) -> None:
    mesh, servers = fault_mesh
    target = mesh.services["gateway"].target

    async def restart_nats_midway() -> None:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(servers.nats.restart)

    async with client.connect(target, servers.api_key) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        restart = asyncio.create_task(restart_nats_midway())
        ids = await asyncio.gather(
            *(
                submit_with_retries(gateway, f"print({n})", f"burst-{n}-{uuid.uuid4().hex}")
                for n in range(200)
            )
        )
        await restart
    assert len(set(ids)) == 200
    statuses = await wait_all_final(servers.database_url, ids, timeout=180)
    assert collections.Counter(statuses.values()) == {"COMPLETED": 200}
    runs = runs_by_execution(mesh)
    assert all(runs[i] == 1 for i in ids), {i: runs[i] for i in ids if runs[i] != 1}


async def test_postgres_restart_drops_readiness_then_recovers_and_loses_nothing(
    fault_mesh: tuple[Mesh, Servers],
) -> None:
    mesh, servers = fault_mesh
    scheduler = mesh.services["scheduler"].target
    async with client.connect(mesh.services["gateway"].target, servers.api_key) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        accepted = [
            await submit_with_retries(
                gateway, "import time\ntime.sleep(1)\nprint('ok')", uuid.uuid4().hex
            )
            for _ in range(4)
        ]
        await asyncio.to_thread(servers.postgres.stop)
        try:
            seen_down = False
            for _ in range(50):
                if health_status(scheduler, "readiness") == "NOT_SERVING":
                    seen_down = True
                    break
                await asyncio.sleep(0.1)
            assert seen_down
        finally:
            await asyncio.to_thread(servers.postgres.restart)
        for _ in range(100):
            if health_status(scheduler, "readiness") == "SERVING":
                break
            await asyncio.sleep(0.1)
        assert health_status(scheduler, "readiness") == "SERVING"
    statuses = await wait_all_final(servers.database_url, accepted, timeout=60)
    assert collections.Counter(statuses.values()) == {"COMPLETED": 4}
