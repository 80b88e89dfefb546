"""The public surface: reflection lists it, and RPCs of later work say UNIMPLEMENTED."""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh_devstack.mesh import Mesh
from sandmesh_runtime.errors import details_of
from tests.helpers.calls import count_executions
from tests.helpers.servers import Servers

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


async def test_languages_come_from_the_executors_with_real_versions(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
) -> None:
    listed = await gateway.ListLanguages(gateway_pb2.ListLanguagesRequest(), timeout=5)
    python = {language.id: language for language in listed.languages}["python3"]
    assert python.version.startswith("Python 3.")
    assert python.template and python.max_limits.memory_mb >= python.default_limits.memory_mb
    one = await gateway.GetLanguage(
        gateway_pb2.GetLanguageRequest(language_id="python3"), timeout=5
    )
    assert one.language == python
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.GetLanguage(gateway_pb2.GetLanguageRequest(language_id="cobol"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("request_fields", "field", "says"),
    [
        ({"language": "cobol", "source": "x"}, "request.language", "unknown language 'cobol'"),
        (
            {"language": "python3", "source": "x", "limits": execution_pb2.Limits(memory_mb=10**6)},
            "request.limits.memory_mb",
            "got 1000000",
        ),
        (
            {"language": "python3", "source": "x", "files": [execution_pb2.File(name="../x")]},
            "request.files[0].name",
            "plain file name",
        ),
    ],
)
async def test_bad_submissions_name_the_field_and_store_nothing(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
    request_fields: dict[str, object],
    field: str,
    says: str,
    servers: Servers,
) -> None:
    before = await count_executions(servers.postgres.url)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.SubmitExecution(
            gateway_pb2.SubmitExecutionRequest(
                request=execution_pb2.ExecutionRequest(**request_fields)  # type: ignore[arg-type]
            ),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad_request,) = details_of(caught.value)
    (violation,) = bad_request.field_violations
    assert violation.field == field and says in violation.description
    assert await count_executions(servers.postgres.url) == before
