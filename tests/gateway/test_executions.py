"""RunExecution, batches, and watch streams: resumed, and shared by hundreds of watchers."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from sandmesh import client
from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh_devstack.mesh import Mesh
from tests.helpers.servers import Servers

Stub = gateway_pb2_grpc.GatewayServiceStub
STEPS = "import time\nfor i in range(5):\n    print(i, flush=True)\n    time.sleep(0.1)\n"


def python(source: str) -> execution_pb2.ExecutionRequest:
    return execution_pb2.ExecutionRequest(language="python3", source=source)


async def events_of(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub, execution_id: str, after: int = 0
) -> list[execution_pb2.ExecutionEvent]:
    return [
        response.event
        async for response in gateway.WatchExecution(
            gateway_pb2.WatchExecutionRequest(execution_id=execution_id, after_sequence=after),
            timeout=60,
        )
    ]


async def test_run_execution_waits_for_the_result(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
) -> None:
    response = await gateway.RunExecution(
        gateway_pb2.RunExecutionRequest(request=python("print(6 * 7)")), timeout=30
    )
    assert response.execution.status == execution_pb2.EXECUTION_STATUS_COMPLETED
    assert response.execution.result.stdout == b"42\n"


async def test_run_execution_ends_at_the_callers_deadline(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.RunExecution(
            gateway_pb2.RunExecutionRequest(request=python("import time\ntime.sleep(30)")),
            timeout=2,
        )
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_batch_answers_each_item_on_its_own(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
) -> None:
    items = [
        gateway_pb2.SubmitExecutionRequest(request=python("print('a')")),
        gateway_pb2.SubmitExecutionRequest(request=execution_pb2.ExecutionRequest(language="")),
        gateway_pb2.SubmitExecutionRequest(request=python("print('c')")),
    ]
    response = await gateway.SubmitBatch(gateway_pb2.SubmitBatchRequest(items=items), timeout=20)
    first, bad, third = response.results
    assert first.error_code == 0 and third.error_code == 0
    assert bad.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "items[1].request.language" in bad.error_message
    ids = [first.execution.id, third.execution.id, "00000000-0000-0000-0000-000000000000"]
    for _ in range(100):
        got = await gateway.BatchGetExecutions(
            gateway_pb2.BatchGetExecutionsRequest(execution_ids=ids), timeout=10
        )
        if all(r.execution.result.status for r in got.results[:2]):
            break
        await asyncio.sleep(0.1)
    assert [r.execution.result.stdout for r in got.results[:2]] == [b"a\n", b"c\n"]
    assert got.results[2].error_code == grpc.StatusCode.NOT_FOUND.value[0]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.SubmitBatch(
            gateway_pb2.SubmitBatchRequest(items=[items[0]] * 101), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_resumed_watch_has_no_gap_and_no_duplicate(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
) -> None:
    submitted = await gateway.SubmitExecution(
        gateway_pb2.SubmitExecutionRequest(request=python(STEPS)), timeout=10
    )
    everything = await events_of(gateway, submitted.execution.id)
    assert everything[-1].HasField("result")
    for cut in range(1, len(everything)):
        resumed = await events_of(gateway, submitted.execution.id, everything[cut - 1].sequence)
        assert resumed == everything[cut:]


async def test_five_hundred_watchers_see_the_same_events_in_order(
    mesh: Mesh, servers: Servers
) -> None:
    async with client.connect(mesh.services["gateway"].target, servers.api_key) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        submitted = await gateway.SubmitExecution(
            gateway_pb2.SubmitExecutionRequest(request=python(STEPS)), timeout=10
        )
        seen = await asyncio.gather(
            *(events_of(gateway, submitted.execution.id) for _ in range(500))
        )
    reference = seen[0]
    assert reference[-1].HasField("result")
    output = b"".join(e.output.data for e in reference if e.HasField("output"))
    assert output == b"0\n1\n2\n3\n4\n"
    assert all(events == reference for events in seen)
