"""One trace follows an execution through every service, exported over OTLP.

The services run as processes exporting to an OTLP/gRPC receiver that this test serves
itself; the spans are read back from what it received.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from sandmesh import client
from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh_devstack.mesh import Mesh
from sandmesh_devstack.nats import LocalNats
from tests.helpers.servers import Servers, start_mesh


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    links: tuple[str, ...]  # span ids


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(
                attribute.value.string_value
                for attribute in resource_spans.resource.attributes
                if attribute.key == "service.name"
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Span(
                            service,
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            tuple(link.span_id.hex() for link in span.links),
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()

    def in_trace(self, trace_id: str) -> dict[str, list[Span]]:
        found: dict[str, list[Span]] = defaultdict(list)
        for span in self.spans:
            if span.trace_id == trace_id:
                found[span.service].append(span)
        return found


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    server = grpc.aio.server()
    collector = Receiver()
    # opentelemetry-proto ships its gRPC stubs untyped.
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield collector, port
    finally:
        await server.stop(None)


@pytest.fixture
async def traced_mesh(
    receiver: tuple[Receiver, int], servers: Servers, tmp_path: Path
) -> AsyncIterator[tuple[Mesh, Servers]]:
    _, port = receiver
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        # Send batches quickly so the test reads them back within seconds.
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    # A NATS of its own, so no executor of another mesh (which exports nothing) takes the job.
    nats = LocalNats.start(tmp_path / "nats")
    private = await servers.with_own_database(nats)
    try:
        # Started off the event loop: the receiver serves on it while the services come up.
        mesh = await asyncio.to_thread(start_mesh, private, tmp_path / "logs", env)
        try:
            yield mesh, private
        finally:
            await asyncio.to_thread(mesh.stop)
    finally:
        nats.stop()


async def test_one_trace_covers_gateway_scheduler_and_executor(
    traced_mesh: tuple[Mesh, Servers], receiver: tuple[Receiver, int], tmp_path: Path
) -> None:
    mesh, servers = traced_mesh
    collector, _ = receiver
    trace_id = secrets.token_hex(16)
    caller_span = secrets.token_hex(8)
    traceparent = (("traceparent", f"00-{trace_id}-{caller_span}-01"),)

    async with client.connect(mesh.services["gateway"].target, servers.api_key) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        submitted = await gateway.SubmitExecution(
            gateway_pb2.SubmitExecutionRequest(
                request=execution_pb2.ExecutionRequest(language="python3", source="print(42)")
            ),
            metadata=traceparent,
            timeout=30,
        )
        async for response in gateway.WatchExecution(
            gateway_pb2.WatchExecutionRequest(execution_id=submitted.execution.id),
            metadata=traceparent,
            timeout=60,
        ):
            if response.event.HasField("result"):
                assert response.event.result.status == execution_pb2.EXECUTION_STATUS_COMPLETED
                break

    submit_name = "sandmesh.gateway.v1.GatewayService/SubmitExecution"
    watch_name = "sandmesh.gateway.v1.GatewayService/WatchExecution"
    enqueue_name = "sandmesh.scheduler.v1.SchedulerService/Enqueue"
    wanted = {
        ("sandmesh-gateway", submit_name),
        ("sandmesh-gateway", watch_name),
        ("sandmesh-scheduler", enqueue_name),
        ("sandmesh-scheduler", "RESULTS process"),
        ("sandmesh-executor", "execute job"),
    }
    for _ in range(100):
        found = collector.in_trace(trace_id)
        seen = {(service, span.name) for service, spans in found.items() for span in spans}
        if wanted <= seen:
            break
        await asyncio.sleep(0.2)
    assert wanted <= seen, seen

    spans = {span.span_id: span for spans in found.values() for span in spans}

    def named(service: str, name: str) -> Span:
        return next(span for span in found[service] if span.name == name)

    # The chain of parents runs caller → gateway → scheduler → NATS → executor → scheduler.
    assert named("sandmesh-gateway", submit_name).parent_id == caller_span
    enqueue = named("sandmesh-scheduler", enqueue_name)
    assert spans[enqueue.parent_id].service == "sandmesh-gateway"
    execute = named("sandmesh-executor", "execute job")
    assert execute.parent_id == enqueue.span_id
    stored = named("sandmesh-scheduler", "RESULTS process")
    assert spans[stored.parent_id] == execute
    # The stream's last hop: the watch links to the span that published the result.
    watch = named("sandmesh-gateway", watch_name)
    assert watch.parent_id == caller_span
    assert [spans[link].name for link in watch.links] == ["RESULTS process"]

    # The executor's log lines about this execution carry the same trace id.
    await asyncio.to_thread(mesh.stop)
    lines = [
        json.loads(line)
        for line in (tmp_path / "logs" / "executor.log").read_text().splitlines()
        if line.startswith("{")
    ]
    mine = [line for line in lines if line.get("execution_id") == submitted.execution.id]
    assert mine and all(line["trace_id"] == trace_id for line in mine), mine
