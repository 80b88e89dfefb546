"""Every service serves Prometheus metrics, and the counters move when executions run."""

from __future__ import annotations

import re
import urllib.request

import pytest

from sandmesh import client
from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh_devstack.mesh import SERVICES, Mesh
from tests.helpers.servers import Servers


def scrape(mesh: Mesh, service: str) -> str:
    port = mesh.services[service].metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode())


def value(text: str, series: str) -> float:
    """The sum of every sample of `series` whose labels contain all the given ones."""
    name, _, labels = series.partition("{")
    wanted = [part for part in labels.rstrip("}").split(",") if part]
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if match and all(label in (match.group(1) or "") for label in wanted):
            total += float(match.group(2))
    return total


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_answers_in_prometheus_text_format(mesh: Mesh, service: str) -> None:
    text = scrape(mesh, service)
    assert "# TYPE grpc_server_handled_total counter" in text
    assert "# TYPE grpc_server_handling_seconds histogram" in text
    assert value(text, "process_resident_memory_bytes") > 0


async def test_counters_move_when_an_execution_runs(mesh: Mesh, servers: Servers) -> None:
    before = {service: scrape(mesh, service) for service in ("gateway", "scheduler", "executor")}
    async with client.connect(mesh.services["gateway"].target, servers.api_key) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        submitted_execution = await gateway.SubmitExecution(
            gateway_pb2.SubmitExecutionRequest(
                request=execution_pb2.ExecutionRequest(language="python3", source="print(1)")
            ),
            timeout=10,
        )
        # Read to the stream's end: the server counts a stream once its handler has returned.
        events = [
            response.event
            async for response in gateway.WatchExecution(
                gateway_pb2.WatchExecutionRequest(execution_id=submitted_execution.execution.id),
                timeout=60,
            )
        ]
    assert events[-1].result.status == execution_pb2.EXECUTION_STATUS_COMPLETED
    after = {service: scrape(mesh, service) for service in before}

    def moved(service: str, series: str) -> float:
        return value(after[service], series) - value(before[service], series)

    submitted = (
        'grpc_server_handled_total{grpc_service="sandmesh.gateway.v1.GatewayService",'
        'grpc_method="SubmitExecution",grpc_type="unary",grpc_code="OK"}'
    )
    assert moved("gateway", submitted) == 1
    watched = (
        'grpc_server_handling_seconds_count{grpc_method="WatchExecution",grpc_type="server_stream"}'
    )
    assert moved("gateway", watched) >= 1
    assert moved("scheduler", 'sandmesh_executions_finished_total{status="COMPLETED"}') >= 1
    assert moved("executor", 'sandmesh_sandbox_run_seconds_count{language="python3"}') >= 1
    assert "sandmesh_queue_depth" in after["scheduler"]
    assert "sandmesh_browser_pool" in scrape(mesh, "browser-pool")
