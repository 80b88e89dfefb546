"""Browser jobs through the gateway: the caller's key, its quota, the pool's URL policy."""

from __future__ import annotations

import json
import urllib.parse

import grpc
import pytest

from sandmesh import client
from sandmesh.browser.v1 import browser_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh_devstack.mesh import Mesh
from tests.helpers.calls import code_of
from tests.helpers.servers import Servers

PAGE = "data:text/html," + urllib.parse.quote("<h1>from the pool</h1>")


async def test_evaluate_through_the_gateway(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
) -> None:
    response = await gateway.Evaluate(
        gateway_pb2.EvaluateRequest(
            evaluate=browser_pb2.EvaluateRequest(
                page=browser_pb2.PageOptions(url=PAGE),
                function="(suffix) => document.querySelector('h1').textContent + suffix",
                args_json=json.dumps(["!"]),
            )
        ),
        timeout=60,
    )
    assert json.loads(response.evaluate.result_json) == "from the pool!"


async def test_the_pools_url_policy_and_the_gateways_auth_apply(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub, mesh: Mesh
) -> None:
    loopback = gateway_pb2.GetContentRequest(
        content=browser_pb2.GetContentRequest(
            page=browser_pb2.PageOptions(url=f"http://{mesh.services['gateway'].target}/")
        )
    )
    assert await code_of(gateway.GetContent(loopback, timeout=60)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await gateway.Screenshot(gateway_pb2.ScreenshotRequest(), timeout=10)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    async with client.connect(mesh.services["gateway"].target) as anonymous:
        stub = gateway_pb2_grpc.GatewayServiceStub(anonymous)
        assert await code_of(stub.GetContent(loopback, timeout=10)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )


async def test_pdf_through_the_gateway(mesh: Mesh, servers: Servers) -> None:
    async with client.connect(mesh.services["gateway"].target, servers.api_key) as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        response = await stub.Pdf(
            gateway_pb2.PdfRequest(
                pdf=browser_pb2.PdfRequest(page=browser_pb2.PageOptions(url=PAGE))
            ),
            timeout=60,
        )
    assert response.pdf.pdf.startswith(b"%PDF")
