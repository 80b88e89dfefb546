"""Real servers for the suite: NATS with JetStream, Postgres, and the four services.

They are started here as local processes (testcontainers would need a Docker engine,
which this kind of machine does not have), once per test session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from sandmesh import client
from sandmesh.gateway.v1 import gateway_pb2_grpc
from sandmesh_devstack.mesh import Mesh
from sandmesh_devstack.nats import LocalNats
from sandmesh_devstack.postgres import LocalPostgres
from tests.helpers.servers import Servers, prepare_database, start_mesh


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    base = tmp_path_factory.mktemp("servers")
    nats = LocalNats.start(base / "nats")
    postgres = LocalPostgres.start(base / "postgres")
    api_key = asyncio.run(prepare_database(postgres.url))
    try:
        yield Servers(nats, postgres, api_key, postgres.url)
    finally:
        nats.stop()
        postgres.destroy()


@pytest.fixture(scope="session")
def mesh(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    running = start_mesh(servers, tmp_path_factory.mktemp("mesh"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
async def gateway(
    mesh: Mesh, servers: Servers
) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceAsyncStub]:
    async with client.connect(mesh.services["gateway"].target, servers.api_key) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)
