"""A mesh on a NATS server whose max_payload is 64 KiB: every message is sized from what
the server says, so outputs of every size around that bound complete at their first attempt,
and a request too large for its queue is refused by name instead of retried."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from sandmesh import client
from sandmesh.execution.v1 import execution_pb2
from sandmesh_devstack.mesh import Mesh
from sandmesh_runtime.errors import details_of
from tests.helpers.servers import Servers, own_mesh

MAX_PAYLOAD = 64 * 1024
SIZES = (
    0,
    1,
    30_000,
    MAX_PAYLOAD - 8 * 1024,
    MAX_PAYLOAD - 1,
    MAX_PAYLOAD,
    MAX_PAYLOAD + 1,
    200_000,
    1024 * 1024,
)


@pytest.fixture(scope="module")
def small(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, str]]:
    with own_mesh(servers, tmp_path_factory.mktemp("small"), max_payload=MAX_PAYLOAD) as (
        mesh,
        own,
    ):
        yield mesh, own.api_key


@pytest.fixture
async def sdk(small: tuple[Mesh, str]) -> AsyncIterator[client.AsyncClient]:
    mesh, api_key = small
    async with client.AsyncClient(mesh.services["gateway"].target, api_key, timeout=60) as sdk:
        yield sdk


def retries_logged(mesh: Mesh) -> list[str]:
    """Log lines of the executor and scheduler that retried something."""
    lines = []
    for name in ("executor", "scheduler"):
        for line in mesh.services[name].log_path.read_text().splitlines():
            try:
                message = json.loads(line).get("message", "")
            except ValueError:
                continue
            if "retry" in message:
                lines.append(line)
    return lines


async def test_outputs_of_every_size_around_max_payload_complete_at_the_first_attempt(
    small: tuple[Mesh, str], sdk: client.AsyncClient
) -> None:
    mesh, _ = small
    for size in SIZES:
        source = (
            "import sys\n"
            f"sys.stdout.buffer.write(b'o' * {size})\n"
            f"sys.stderr.buffer.write(b'e' * {size})\n"
        )
        request = execution_pb2.ExecutionRequest(language="python3", source=source)
        execution = await sdk.submit(request)
        chunks = []
        async for event in sdk.watch(execution.id):
            if event.HasField("output"):
                chunks.append(event.output)
        final = await sdk.get(execution.id)
        result = final.result
        assert result.status == execution_pb2.EXECUTION_STATUS_COMPLETED, (size, result.detail)
        assert final.attempt == 1, size
        assert (result.stdout_size, result.stderr_size) == (size, size)
        assert len(result.stdout) <= MAX_PAYLOAD // 2
        stdout = await sdk.read_output(execution.id, execution_pb2.OUTPUT_STREAM_STDOUT)
        stderr = await sdk.read_output(execution.id, execution_pb2.OUTPUT_STREAM_STDERR)
        assert (stdout, stderr) == (b"o" * size, b"e" * size), size
        assert all(len(chunk.data) < MAX_PAYLOAD for chunk in chunks)
    assert retries_logged(mesh) == []


async def test_a_request_too_large_for_the_queue_is_refused_by_name(
    small: tuple[Mesh, str], sdk: client.AsyncClient
) -> None:
    mesh, _ = small
    source = "print(len('" + "x" * (MAX_PAYLOAD + 1000) + "'))\n"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await sdk.submit(execution_pb2.ExecutionRequest(language="python3", source=source))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = details_of(refused.value)
    (violation,) = bad.field_violations
    assert violation.field == "request"
    assert "work queue carries at most" in violation.description
    fits = await sdk.run(
        execution_pb2.ExecutionRequest(language="python3", source="print('still serving')")
    )
    assert fits.stdout == b"still serving\n"
    assert retries_logged(mesh) == []
