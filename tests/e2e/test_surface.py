"""The public surface: reflection lists it, and RPCs of later work say UNIMPLEMENTED."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh_devstack.mesh import Mesh

SERVICE_NAMES = {
    "gateway": "sandmesh.gateway.v1.GatewayService",
    "scheduler": "sandmesh.scheduler.v1.SchedulerService",
    "executor": "sandmesh.executor.v1.ExecutorService",
    "browser-pool": "sandmesh.browser.v1.BrowserPoolService",
}


@pytest.mark.parametrize("service", SERVICE_NAMES)
def test_reflection_lists_the_service_and_health(mesh: Mesh, service: str) -> None:
    with grpc.insecure_channel(mesh.services[service].target) as channel:
        listed = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {SERVICE_NAMES[service], "grpc.health.v1.Health"} <= listed


async def test_rpcs_of_later_issues_answer_unimplemented(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.CreateSession(gateway_pb2.CreateSessionRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
