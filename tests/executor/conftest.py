"""Fixtures reaching the session mesh's gateway and executor."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from sandmesh import client
from sandmesh.executor.v1 import executor_pb2_grpc
from sandmesh_devstack.mesh import Mesh
from tests.helpers.runner import Runner
from tests.helpers.servers import Servers


@pytest.fixture
async def run(mesh: Mesh, servers: Servers) -> AsyncIterator[Runner]:
    async with client.connect(mesh.services["gateway"].target, servers.api_key) as channel:
        yield Runner(mesh, channel)


@pytest.fixture
async def executor(mesh: Mesh) -> AsyncIterator[executor_pb2_grpc.ExecutorServiceAsyncStub]:
    async with grpc.aio.insecure_channel(mesh.services["executor"].target) as channel:
        yield executor_pb2_grpc.ExecutorServiceStub(channel)
