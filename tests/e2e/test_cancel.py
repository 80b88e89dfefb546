"""Cancelling a running execution kills its sandbox within a second."""

from __future__ import annotations

import asyncio
import time

import nats
import nats.errors

from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh_queue import subjects
from tests.helpers.servers import Servers

TICKER = "import time\nwhile True:\n    print(time.time(), flush=True)\n    time.sleep(0.05)\n"


async def output_times(servers: Servers, execution_id: str) -> list[float]:
    """When each output chunk of the execution was published, from its event log."""
    nc = await nats.connect(servers.nats.url)
    try:
        sub = await nc.jetstream().subscribe(
            subjects.event_subject(execution_id, "output"), ordered_consumer=True
        )
        times: list[float] = []
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                return times
            event = execution_pb2.ExecutionEvent.FromString(msg.data)
            times.append(event.time.ToNanoseconds() / 1e9)
    finally:
        await nc.close()


async def test_cancel_while_running_kills_the_sandbox_within_a_second(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub, servers: Servers
) -> None:
    submitted = await gateway.SubmitExecution(
        gateway_pb2.SubmitExecutionRequest(
            request=execution_pb2.ExecutionRequest(
                language="python3",
                source=TICKER,
                limits=execution_pb2.Limits(wall_time_ms=30000, cpu_time_ms=20000),
            )
        ),
        timeout=10,
    )
    execution_id = submitted.execution.id
    async for response in gateway.WatchExecution(
        gateway_pb2.WatchExecutionRequest(execution_id=execution_id), timeout=30
    ):
        if response.event.HasField("output"):
            break
    cancelled_at = time.time()
    cancelled = await gateway.CancelExecution(
        gateway_pb2.CancelExecutionRequest(execution_id=execution_id), timeout=5
    )
    assert cancelled.execution.status == execution_pb2.EXECUTION_STATUS_CANCELLED
    await asyncio.sleep(2)
    times = await output_times(servers, execution_id)
    assert times, "the program printed before it was cancelled"
    assert max(times) < cancelled_at + 1.0, f"output went on {max(times) - cancelled_at:.2f} s"
    final = await gateway.GetExecution(
        gateway_pb2.GetExecutionRequest(execution_id=execution_id), timeout=5
    )
    assert final.execution.status == execution_pb2.EXECUTION_STATUS_CANCELLED
