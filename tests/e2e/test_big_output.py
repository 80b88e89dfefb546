"""Big outputs through the whole mesh: no program can stall it, and no answer outgrows a
client that keeps gRPC's default 4 MiB receive limit (as Go, Node and Java clients do)."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from sandmesh import client
from sandmesh.execution.v1 import execution_pb2
from sandmesh.executor.v1 import executor_pb2, executor_pb2_grpc
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh_devstack.mesh import Mesh, health_status
from sandmesh_runtime.errors import details_of
from tests.helpers import floods
from tests.helpers.cli import sandmesh
from tests.helpers.servers import Servers

MIB = 1024 * 1024
DEFAULT_OUTPUT = MIB
LARGEST_OUTPUT = 8 * MIB
STDOUT, STDERR = execution_pb2.OUTPUT_STREAM_STDOUT, execution_pb2.OUTPUT_STREAM_STDERR


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        return str(page.read().decode())


@pytest.fixture
async def sdk(mesh: Mesh, servers: Servers) -> AsyncIterator[client.AsyncClient]:
    # The SDK's channel keeps gRPC's default receive limit (4 MiB).
    async with client.AsyncClient(
        mesh.services["gateway"].target, servers.api_key, timeout=180
    ) as connected:
        yield connected


def request(
    language: str, source: str, limits: execution_pb2.Limits | None = None
) -> execution_pb2.ExecutionRequest:
    return execution_pb2.ExecutionRequest(language=language, source=source, limits=limits)


@pytest.mark.parametrize("language", floods.LANGUAGES)
async def test_a_flood_keeps_exactly_the_limit_at_the_default_and_largest_limits(
    sdk: client.AsyncClient, language: str
) -> None:
    result = await sdk.run(request(language, floods.flood(language)))
    assert result.status == execution_pb2.EXECUTION_STATUS_OUTPUT_LIMIT, result.detail
    assert result.stdout_truncated
    assert result.stdout_size == DEFAULT_OUTPUT
    assert result.stdout == floods.expected(DEFAULT_OUTPUT)

    largest = execution_pb2.Limits(output_bytes=LARGEST_OUTPUT)
    both = await sdk.run(request(language, floods.flood(language, both=True), largest))
    assert both.status == execution_pb2.EXECUTION_STATUS_OUTPUT_LIMIT, both.detail
    assert both.stdout_truncated or both.stderr_truncated
    for data, size, truncated in (
        (both.stdout, both.stdout_size, both.stdout_truncated),
        (both.stderr, both.stderr_size, both.stderr_truncated),
    ):
        assert len(data) == size
        assert data == floods.expected(size)
        if truncated:
            assert size == LARGEST_OUTPUT
    # Both streams ran at full speed until the cut: well over 8 MiB + 7 MiB kept.
    assert both.stdout_size + both.stderr_size > 15 * MIB


async def test_twenty_floods_then_a_hello_world_leave_no_slot_busy(
    sdk: client.AsyncClient, mesh: Mesh
) -> None:
    floods_done = asyncio.gather(
        *(sdk.run(request("python3", floods.flood("python3"))) for _ in range(20))
    )
    await asyncio.sleep(0.5)
    hello = await sdk.run(request("python3", "print('hello')"))
    flooded = await floods_done
    assert hello.status == execution_pb2.EXECUTION_STATUS_COMPLETED, hello.detail
    assert hello.stdout == b"hello\n"
    assert {r.status for r in flooded} == {execution_pb2.EXECUTION_STATUS_OUTPUT_LIMIT}
    assert all(r.stdout == floods.expected(DEFAULT_OUTPUT) for r in flooded)

    async with grpc.aio.insecure_channel(mesh.services["executor"].target) as channel:
        executor = executor_pb2_grpc.ExecutorServiceStub(channel)
        status = await executor.GetSandboxStatus(executor_pb2.GetSandboxStatusRequest(), timeout=5)
    assert status.running == 0
    assert health_status(mesh.services["executor"].target, "readiness") == "SERVING"
    assert "sandmesh_executor_slots_wedged 0.0" in await asyncio.to_thread(
        scrape, mesh.services["executor"].metrics_port
    )


async def test_every_rpc_serves_sixteen_mib_of_output_to_a_default_client(
    mesh: Mesh, servers: Servers, sdk: client.AsyncClient, tmp_path: Path
) -> None:
    largest = execution_pb2.Limits(output_bytes=LARGEST_OUTPUT)
    whole = await sdk.run(request("python3", floods.SIXTEEN_MIB, largest))
    assert whole.status == execution_pb2.EXECUTION_STATUS_COMPLETED, whole.detail
    assert not whole.stdout_truncated and not whole.stderr_truncated
    assert whole.stdout == floods.SIXTEEN_MIB_STDOUT
    assert whole.stderr == floods.SIXTEEN_MIB_STDERR

    # A plain stub on a channel with gRPC's defaults, as any generated client has.
    async with client.connect(mesh.services["gateway"].target, servers.api_key) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        submission = gateway_pb2.RunExecutionRequest(
            request=request("python3", floods.SIXTEEN_MIB, largest)
        )
        ran = (await gateway.RunExecution(submission, timeout=120)).execution
        assert ran.result.status == execution_pb2.EXECUTION_STATUS_COMPLETED
        assert (ran.result.stdout_size, ran.result.stderr_size) == (8 * MIB, 8 * MIB)
        assert ran.result.output_ref
        assert floods.SIXTEEN_MIB_STDOUT.startswith(ran.result.stdout)

        got = await gateway.GetExecution(
            gateway_pb2.GetExecutionRequest(execution_id=ran.id), timeout=10
        )
        assert got.execution.result.stdout_size == 8 * MIB

        live = {STDOUT: b"", STDERR: b""}
        async for response in gateway.WatchExecution(
            gateway_pb2.WatchExecutionRequest(execution_id=ran.id), timeout=60
        ):
            if response.event.HasField("output"):
                chunk = response.event.output
                assert chunk.offset == len(live[chunk.stream])
                live[chunk.stream] += chunk.data
            final = response.event
        assert final.HasField("result") and final.result.stderr_size == 8 * MIB
        assert live == {STDOUT: floods.SIXTEEN_MIB_STDOUT, STDERR: floods.SIXTEEN_MIB_STDERR}

        read = {STDOUT: b"", STDERR: b""}
        for stream in (STDOUT, STDERR):
            async for piece in gateway.ReadOutput(
                gateway_pb2.ReadOutputRequest(execution_id=ran.id, stream=stream), timeout=60
            ):
                assert piece.offset == len(read[stream])
                read[stream] += piece.data
        assert read == {STDOUT: floods.SIXTEEN_MIB_STDOUT, STDERR: floods.SIXTEEN_MIB_STDERR}
        middle = b""
        async for piece in gateway.ReadOutput(
            gateway_pb2.ReadOutputRequest(
                execution_id=ran.id, stream=STDOUT, offset=3 * MIB + 7, limit=MIB
            ),
            timeout=30,
        ):
            middle += piece.data
        assert middle == floods.SIXTEEN_MIB_STDOUT[3 * MIB + 7 : 4 * MIB + 7]

        batch = await gateway.BatchGetExecutions(
            gateway_pb2.BatchGetExecutionsRequest(execution_ids=[ran.id] * 100), timeout=30
        )
        assert all(item.execution.id == ran.id or item.error_code for item in batch.results)
        session = (
            await gateway.CreateSession(
                gateway_pb2.CreateSessionRequest(language="python3", source=floods.SIXTEEN_MIB),
                timeout=10,
            )
        ).session
        started = await gateway.RunSession(
            gateway_pb2.RunSessionRequest(session_id=session.id, limits=largest), timeout=10
        )
        async for _ in gateway.WatchExecution(
            gateway_pb2.WatchExecutionRequest(execution_id=started.execution.id), timeout=60
        ):
            pass
        listed = await gateway.ListSessionExecutions(
            gateway_pb2.ListSessionExecutionsRequest(session_id=session.id), timeout=10
        )
        (session_run,) = listed.executions
        assert session_run.result.stdout_size == 8 * MIB
        batch_submitted = await gateway.SubmitBatch(
            gateway_pb2.SubmitBatchRequest(
                items=[gateway_pb2.SubmitExecutionRequest(request=submission.request)] * 3
            ),
            timeout=30,
        )
        assert all(item.execution.id for item in batch_submitted.results)

        cancelled = await gateway.CancelExecution(
            gateway_pb2.CancelExecutionRequest(execution_id=ran.id), timeout=10
        )
        assert cancelled.execution.status == execution_pb2.EXECUTION_STATUS_COMPLETED

        with pytest.raises(grpc.aio.AioRpcError) as past_end:
            async for _ in gateway.ReadOutput(
                gateway_pb2.ReadOutputRequest(
                    execution_id=ran.id, stream=STDOUT, offset=8 * MIB + 1
                ),
                timeout=10,
            ):
                pass
        assert past_end.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        (bad,) = details_of(past_end.value)
        assert [v.field for v in bad.field_violations] == ["offset"]

    program = tmp_path / "sixteen.py"
    program.write_text(floods.SIXTEEN_MIB)
    cli = await asyncio.to_thread(
        sandmesh,
        "run",
        str(program),
        "--gateway",
        mesh.services["gateway"].target,
        "--api-key",
        servers.api_key,
        "--no-progress",
        "--limit",
        f"output_bytes={LARGEST_OUTPUT}",
    )
    assert cli.returncode == 0, cli.stderr[-500:]
    assert cli.stdout == floods.SIXTEEN_MIB_STDOUT
    assert cli.stderr == floods.SIXTEEN_MIB_STDERR


async def test_limits_at_their_bounds_are_honoured_or_refused_by_name(
    sdk: client.AsyncClient,
) -> None:
    languages = await sdk._gateway.ListLanguages(gateway_pb2.ListLanguagesRequest(), timeout=10)
    (python,) = [language for language in languages.languages if language.id == "python3"]
    fields = [f.name for f in execution_pb2.Limits.DESCRIPTOR.fields]

    at_max = await sdk.run(request("python3", "print('hi')", python.max_limits))
    assert at_max.status == execution_pb2.EXECUTION_STATUS_COMPLETED, at_max.detail

    for field in fields:
        lowest = getattr(python.min_limits, field)
        assert lowest > 0, field
        limits = execution_pb2.Limits(**{field: lowest})
        result = await sdk.run(request("python3", "print('hi')", limits))
        # The lowest value is a real limit: the run keeps to it and says how it ended.
        assert result.status not in (
            execution_pb2.EXECUTION_STATUS_SYSTEM_ERROR,
            execution_pb2.EXECUTION_STATUS_REJECTED,
        ), (field, result.detail)
        if field == "output_bytes":
            assert result.status == execution_pb2.EXECUTION_STATUS_OUTPUT_LIMIT
            assert result.stdout == b"h"

        for value, why in (
            (lowest - 1, f"must be at least {lowest}"),
            (getattr(python.max_limits, field) + 1, "must be at most"),
        ):
            if value == 0:
                continue  # zero means "the default"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await sdk.submit(
                    request("python3", "print('hi')", execution_pb2.Limits(**{field: value}))
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            (bad,) = details_of(refused.value)
            assert [(v.field, why in v.description) for v in bad.field_violations] == [
                (f"request.limits.{field}", True)
            ]
