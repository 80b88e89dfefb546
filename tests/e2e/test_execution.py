"""One execution end to end: gateway → scheduler → JetStream → executor sandbox → back."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from sandmesh import client
from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh_devstack.mesh import Mesh
from sandmesh_runtime.errors import details_of
from tests.helpers.servers import Servers


async def run(
    mesh: Mesh, servers: Servers, source: str, limits: execution_pb2.Limits | None = None
) -> execution_pb2.ExecutionResult:
    async with client.connect(mesh.services["gateway"].target, servers.api_key) as channel:
        return await client.run(
            channel,
            execution_pb2.ExecutionRequest(language="python3", source=source, limits=limits),
            timeout=60,
        )


async def test_hello_completes_with_its_output(mesh: Mesh, servers: Servers) -> None:
    result = await run(mesh, servers, 'print("hello")')
    assert result.status == execution_pb2.EXECUTION_STATUS_COMPLETED, result.detail
    assert result.stdout == b"hello\n"
    assert result.stderr == b""
    assert result.HasField("exit_code") and result.exit_code == 0
    assert result.usage.wall_time_ms > 0


async def test_exit_code_is_reported_as_failed(mesh: Mesh, servers: Servers) -> None:
    result = await run(mesh, servers, "import sys\nprint('bye', file=sys.stderr)\nsys.exit(3)")
    assert result.status == execution_pb2.EXECUTION_STATUS_FAILED
    assert result.exit_code == 3
    assert result.stderr == b"bye\n"
    assert result.error_code == "E002"


async def test_infinite_loop_times_out_within_its_limit(mesh: Mesh, servers: Servers) -> None:
    limits = execution_pb2.Limits(cpu_time_ms=1000, wall_time_ms=2000)
    started = time.monotonic()
    result = await run(mesh, servers, "while True:\n    pass\n", limits)
    elapsed = time.monotonic() - started
    assert result.status == execution_pb2.EXECUTION_STATUS_TIMEOUT, result.detail
    assert result.error_code == "E004"
    # Killed at the CPU limit (1 s) or at worst the wall limit (2 s), plus the mesh's own hops.
    assert result.usage.wall_time_ms <= 2000 + 500
    assert elapsed < 2.0 + 3.0


async def test_memory_bomb_does_not_complete(mesh: Mesh, servers: Servers) -> None:
    limits = execution_pb2.Limits(memory_mb=128)
    result = await run(
        mesh, servers, "block = bytearray(1024 * 1024 * 1024)\nprint(len(block))", limits
    )
    assert result.status != execution_pb2.EXECUTION_STATUS_COMPLETED
    assert result.stdout == b""
    assert result.status in (
        execution_pb2.EXECUTION_STATUS_MEMORY_LIMIT,
        execution_pb2.EXECUTION_STATUS_FAILED,
    )


async def test_get_execution_returns_the_stored_result(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
) -> None:
    submitted = await gateway.SubmitExecution(
        gateway_pb2.SubmitExecutionRequest(
            request=execution_pb2.ExecutionRequest(language="python3", source="print(6 * 7)")
        ),
        timeout=10,
    )
    assert submitted.execution.status == execution_pb2.EXECUTION_STATUS_QUEUED
    assert submitted.execution.id
    for _ in range(200):
        got = await gateway.GetExecution(
            gateway_pb2.GetExecutionRequest(execution_id=submitted.execution.id), timeout=5
        )
        if got.execution.status == execution_pb2.EXECUTION_STATUS_COMPLETED:
            break
        await asyncio.sleep(0.05)
    assert got.execution.status == execution_pb2.EXECUTION_STATUS_COMPLETED
    assert got.execution.result.stdout == b"42\n"
    assert got.execution.result.exit_code == 0
    assert got.execution.HasField("finished_at")


async def test_watch_streams_queued_running_output_and_result_in_order(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
) -> None:
    source = "import time\nprint('first', flush=True)\ntime.sleep(0.3)\nprint('second')"
    submitted = await gateway.SubmitExecution(
        gateway_pb2.SubmitExecutionRequest(
            request=execution_pb2.ExecutionRequest(language="python3", source=source)
        ),
        timeout=10,
    )
    kinds: list[str] = []
    statuses: list[int] = []
    output = b""
    sequences: list[int] = []
    async for response in gateway.WatchExecution(
        gateway_pb2.WatchExecutionRequest(execution_id=submitted.execution.id), timeout=30
    ):
        event = response.event
        kind = event.WhichOneof("kind")
        assert kind is not None
        kinds.append(kind)
        sequences.append(event.sequence)
        if kind == "status":
            statuses.append(event.status.status)
        elif kind == "output":
            output += event.output.data
        else:
            final = event.result
    assert statuses[:2] == [
        execution_pb2.EXECUTION_STATUS_QUEUED,
        execution_pb2.EXECUTION_STATUS_RUNNING,
    ]
    assert kinds[-1] == "result" and kinds.count("result") == 1
    assert output == b"first\nsecond\n"
    assert final.status == execution_pb2.EXECUTION_STATUS_COMPLETED
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)


async def test_watch_of_unknown_execution_is_not_found(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in gateway.WatchExecution(
            gateway_pb2.WatchExecutionRequest(execution_id="00000000-0000-0000-0000-000000000000"),
            timeout=5,
        ):
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_request_names_the_fields(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.SubmitExecution(
            gateway_pb2.SubmitExecutionRequest(request=execution_pb2.ExecutionRequest()),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad_request,) = details_of(caught.value)
    fields = {v.field: v.description for v in bad_request.field_violations}
    assert fields == {
        "request.language": "must not be empty",
        "request.source": "must not be empty",
    }
