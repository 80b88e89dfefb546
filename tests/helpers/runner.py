"""Driving the mesh's real executor: run a program through the gateway, read its status."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from sandmesh import client
from sandmesh.execution.v1 import execution_pb2
from sandmesh.executor.v1 import executor_pb2, executor_pb2_grpc
from sandmesh_devstack.mesh import Mesh, health_status

Result = execution_pb2.ExecutionResult
STATUS = execution_pb2.ExecutionStatus


class Runner:
    """Submits programs through the gateway and follows them to their result."""

    def __init__(self, mesh: Mesh, channel: grpc.aio.Channel) -> None:
        self.mesh = mesh
        self.channel = channel

    async def __call__(
        self,
        language: str,
        source: str,
        *,
        stdin: bytes = b"",
        args: Sequence[str] = (),
        files: dict[str, bytes] | None = None,
        limits: execution_pb2.Limits | None = None,
    ) -> Result:
        request = execution_pb2.ExecutionRequest(
            language=language,
            source=source,
            stdin=stdin,
            args=list(args),
            files=[execution_pb2.File(name=n, content=c) for n, c in (files or {}).items()],
            limits=limits,
        )
        return await client.run(self.channel, request, timeout=90)


def status(result: Result) -> str:
    return client.status_name(result.status)


async def assert_healthy(run: Runner) -> None:
    """The executor still serves, and a plain run right after is unaffected."""
    assert health_status(run.mesh.services["executor"].target, "readiness") == "SERVING"
    assert run.mesh.services["executor"].exit_code() is None
    result = await run("python3", "print('still fine')")
    assert status(result) == "COMPLETED", result.detail
    assert result.stdout == b"still fine\n"


async def sandbox_status(
    executor: executor_pb2_grpc.ExecutorServiceAsyncStub,
) -> executor_pb2.GetSandboxStatusResponse:
    return await executor.GetSandboxStatus(executor_pb2.GetSandboxStatusRequest(), timeout=5)
