"""API keys, tenant isolation, shared rate limits and the audit trail, on real processes."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2

from sandmesh import client
from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh_devstack.mesh import Mesh, ServiceProcess, health_status
from sandmesh_devstack.ports import free_port
from sandmesh_runtime.errors import details_of
from tests.helpers.calls import code_of
from tests.helpers.cli import admin, make_tenant
from tests.helpers.servers import Servers


async def dead_letter_of(servers: Servers, execution_id: str) -> str:
    letter_id = str(uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(servers.postgres.url) as conn:
        await conn.execute(
            "INSERT INTO dead_letters (id, execution_id, tenant, reason, deliveries)"
            " SELECT %s, id, tenant, 'test', 5 FROM executions WHERE id = %s",
            (letter_id, uuid.UUID(execution_id)),
        )
    return letter_id


def submit_request(source: str = "print('x')") -> gateway_pb2.SubmitExecutionRequest:
    return gateway_pb2.SubmitExecutionRequest(
        request=execution_pb2.ExecutionRequest(language="python3", source=source)
    )


@contextlib.contextmanager
def start_gateway(
    mesh: Mesh, servers: Servers, log: Path, **overrides: str
) -> Iterator[ServiceProcess]:
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": servers.nats.url,
        "DATABASE_URL": servers.postgres.url,
        "SANDMESH_HOST": "127.0.0.1",
        "SANDMESH_GATEWAY_PORT": str(port),
        "SANDMESH_SCHEDULER_TARGET": mesh.services["scheduler"].target,
        "SANDMESH_EXECUTOR_TARGET": mesh.services["executor"].target,
        **overrides,
    }
    gateway = ServiceProcess("gateway", port, env, log)
    gateway.start()
    try:
        deadline = time.monotonic() + 30
        while health_status(gateway.target, "liveness") != "SERVING":
            assert time.monotonic() < deadline, f"gateway did not start; see {log}"
            time.sleep(0.1)
        yield gateway
    finally:
        gateway.stop(10)


async def test_missing_unknown_and_revoked_keys_are_unauthenticated(
    mesh: Mesh, servers: Servers
) -> None:
    target = mesh.services["gateway"].target
    _, key_id, key = make_tenant(servers)
    async with client.connect(target) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        assert await code_of(stub.SubmitExecution(submit_request(), timeout=5)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    async with client.connect(target, "smk_not-a-key") as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        assert await code_of(stub.ListLanguages(gateway_pb2.ListLanguagesRequest(), timeout=5)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    async with client.connect(target, key) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        assert await code_of(stub.ListLanguages(gateway_pb2.ListLanguagesRequest(), timeout=5)) == (
            grpc.StatusCode.OK
        )
        assert f"revoked {key_id}" in admin(servers, "key", "revoke", key_id)
        assert await code_of(stub.ListLanguages(gateway_pb2.ListLanguagesRequest(), timeout=5)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )


async def test_tenants_cannot_see_or_touch_each_others_executions(
    mesh: Mesh, servers: Servers
) -> None:
    target = mesh.services["gateway"].target
    _, _, key_a = make_tenant(servers)
    _, _, key_b = make_tenant(servers)
    async with (
        client.connect(target, key_a) as a_channel,
        client.connect(target, key_b) as b_channel,
    ):
        a = gateway_pb2_grpc.GatewayServiceStub(a_channel)
        b = gateway_pb2_grpc.GatewayServiceStub(b_channel)
        mine = (await a.SubmitExecution(submit_request(), timeout=10)).execution
        theirs_id = mine.id
        for call in (
            b.GetExecution(gateway_pb2.GetExecutionRequest(execution_id=theirs_id), timeout=5),
            b.CancelExecution(
                gateway_pb2.CancelExecutionRequest(execution_id=theirs_id), timeout=5
            ),
        ):
            assert await code_of(call) == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as watched:
            async for _ in b.WatchExecution(
                gateway_pb2.WatchExecutionRequest(execution_id=theirs_id), timeout=5
            ):
                pass
        assert watched.value.code() == grpc.StatusCode.NOT_FOUND
        # A dead letter of A's (written as the scheduler writes one) is invisible to B.
        letter_id = await dead_letter_of(servers, theirs_id)
        listed = await b.ListDeadLetters(gateway_pb2.ListDeadLettersRequest(), timeout=5)
        assert list(listed.dead_letters) == []
        assert (
            await code_of(
                b.ReplayDeadLetter(
                    gateway_pb2.ReplayDeadLetterRequest(dead_letter_id=letter_id), timeout=5
                )
            )
            == grpc.StatusCode.NOT_FOUND
        )
        owned = await a.ListDeadLetters(gateway_pb2.ListDeadLettersRequest(), timeout=5)
        assert [d.id for d in owned.dead_letters] == [letter_id]
        # The owner still sees it, untouched by the other tenant's cancel.
        own = await a.GetExecution(
            gateway_pb2.GetExecutionRequest(execution_id=theirs_id), timeout=5
        )
        assert own.execution.status != execution_pb2.EXECUTION_STATUS_CANCELLED


async def test_rate_limit_is_shared_by_two_gateways_and_carries_retry_info(
    mesh: Mesh, servers: Servers, tmp_path: Path
) -> None:
    _, _, key = make_tenant(servers, tier="free")
    limits = {"SANDMESH_FREE_RATE_PER_S": "0.2", "SANDMESH_FREE_BURST": "3"}
    with (
        start_gateway(mesh, servers, tmp_path / "gw1.log", **limits) as one,
        start_gateway(mesh, servers, tmp_path / "gw2.log", **limits) as two,
    ):
        async with client.connect(one.target, key) as c1, client.connect(two.target, key) as c2:
            g1 = gateway_pb2_grpc.GatewayServiceStub(c1)
            g2 = gateway_pb2_grpc.GatewayServiceStub(c2)
            for stub in (g1, g2, g1):
                await stub.SubmitExecution(submit_request(), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await g2.SubmitExecution(submit_request(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = details_of(caught.value)
    (retry,) = [d for d in details if isinstance(d, error_details_pb2.RetryInfo)]
    assert retry.retry_delay.ToMilliseconds() > 0
    assert any(isinstance(d, error_details_pb2.QuotaFailure) for d in details)


async def test_policy_store_unreachable_denies_every_call(
    mesh: Mesh, servers: Servers, tmp_path: Path
) -> None:
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/sandmesh"
    with start_gateway(mesh, servers, tmp_path / "gw.log", DATABASE_URL=dead) as process:
        async with client.connect(process.target, servers.api_key) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            code = await code_of(stub.ListLanguages(gateway_pb2.ListLanguagesRequest(), timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert health_status(process.target, "readiness") == "NOT_SERVING"


async def test_development_mode_opens_the_door_and_says_so_loudly(
    mesh: Mesh, servers: Servers, tmp_path: Path
) -> None:
    log = tmp_path / "gw.log"
    with start_gateway(mesh, servers, log, SANDMESH_AUTH_DISABLED="true") as process:
        async with client.connect(process.target) as channel:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            code = await code_of(stub.ListLanguages(gateway_pb2.ListLanguagesRequest(), timeout=5))
        assert code == grpc.StatusCode.OK
    assert "AUTHENTICATION IS DISABLED" in log.read_text()


async def test_mutating_calls_are_audited(mesh: Mesh, servers: Servers) -> None:
    tenant, key_id, key = make_tenant(servers)
    async with client.connect(mesh.services["gateway"].target, key) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        submitted = (await stub.SubmitExecution(submit_request(), timeout=10)).execution
        await stub.CancelExecution(
            gateway_pb2.CancelExecutionRequest(execution_id=submitted.id), timeout=5
        )
        await code_of(
            stub.CancelExecution(gateway_pb2.CancelExecutionRequest(execution_id="nope"), timeout=5)
        )
        await stub.GetExecution(
            gateway_pb2.GetExecutionRequest(execution_id=submitted.id), timeout=5
        )
    rows = [line.split("\t") for line in admin(servers, "audit", "--tenant", tenant).splitlines()]
    assert [(r[1], r[2], r[3], r[4], r[5]) for r in rows] == [
        (tenant, key_id, "CancelExecution", "nope", "NOT_FOUND"),
        (tenant, key_id, "CancelExecution", submitted.id, "OK"),
        (tenant, key_id, "SubmitExecution", submitted.id, "OK"),
    ]
