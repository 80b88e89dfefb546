"""Sessions: autosave with revisions, runs, pages of executions, and per-session limits."""

from __future__ import annotations

import grpc
import pytest

from sandmesh import client
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh_devstack.mesh import Mesh
from tests.helpers.calls import code_of
from tests.helpers.cli import make_tenant
from tests.helpers.servers import Servers

Gateway = gateway_pb2_grpc.GatewayServiceStub


async def test_a_stale_autosave_is_aborted_and_overwrites_nothing(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
) -> None:
    created = await gateway.CreateSession(
        gateway_pb2.CreateSessionRequest(language="python3", source="print(1)"), timeout=5
    )
    session = created.session
    assert session.revision == 1
    saved = await gateway.UpdateSessionSource(
        gateway_pb2.UpdateSessionSourceRequest(
            session_id=session.id, source="print(2)", base_revision=1
        ),
        timeout=5,
    )
    assert saved.session.revision == 2
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await gateway.UpdateSessionSource(
            gateway_pb2.UpdateSessionSourceRequest(
                session_id=session.id, source="print('old tab')", base_revision=1
            ),
            timeout=5,
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    assert "revision 2" in (stale.value.details() or "")
    now = await gateway.GetSession(gateway_pb2.GetSessionRequest(session_id=session.id), timeout=5)
    assert (now.session.source, now.session.revision) == ("print(2)", 2)

    closed = await gateway.CloseSession(
        gateway_pb2.CloseSessionRequest(session_id=session.id), timeout=5
    )
    assert closed.session.closed
    assert (
        await code_of(
            gateway.UpdateSessionSource(
                gateway_pb2.UpdateSessionSourceRequest(
                    session_id=session.id, source="x", base_revision=2
                ),
                timeout=5,
            )
        )
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (
        await code_of(
            gateway.RunSession(gateway_pb2.RunSessionRequest(session_id=session.id), timeout=5)
        )
        == grpc.StatusCode.FAILED_PRECONDITION
    )


async def test_runs_are_paged_without_gaps_and_limited_per_session(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
) -> None:
    session = (
        await gateway.CreateSession(
            gateway_pb2.CreateSessionRequest(language="python3", source="print('run')"),
            timeout=5,
        )
    ).session
    run_ids = []
    for _ in range(10):
        run = await gateway.RunSession(
            gateway_pb2.RunSessionRequest(session_id=session.id), timeout=10
        )
        run_ids.append(run.execution.id)
    with pytest.raises(grpc.aio.AioRpcError) as limited:
        await gateway.RunSession(gateway_pb2.RunSessionRequest(session_id=session.id), timeout=10)
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    pages: list[list[str]] = []
    token = ""
    while True:
        page = await gateway.ListSessionExecutions(
            gateway_pb2.ListSessionExecutionsRequest(
                session_id=session.id, page_size=4, page_token=token
            ),
            timeout=5,
        )
        pages.append([e.id for e in page.executions])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [4, 4, 2]
    assert [i for p in pages for i in p] == list(reversed(run_ids))
    assert (
        await code_of(
            gateway.ListSessionExecutions(
                gateway_pb2.ListSessionExecutionsRequest(session_id=session.id, page_token="junk"),
                timeout=5,
            )
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_another_tenants_session_is_not_found(mesh: Mesh, servers: Servers) -> None:
    _, _, other_key = make_tenant(servers)
    target = mesh.services["gateway"].target
    async with (
        client.connect(target, servers.api_key) as mine,
        client.connect(target, other_key) as theirs,
    ):
        owner, stranger = Gateway(mine), Gateway(theirs)
        session = (
            await owner.CreateSession(
                gateway_pb2.CreateSessionRequest(language="python3", source="print(1)"),
                timeout=5,
            )
        ).session
        for call in (
            stranger.GetSession(gateway_pb2.GetSessionRequest(session_id=session.id), timeout=5),
            stranger.UpdateSessionSource(
                gateway_pb2.UpdateSessionSourceRequest(
                    session_id=session.id, source="x", base_revision=1
                ),
                timeout=5,
            ),
            stranger.CloseSession(
                gateway_pb2.CloseSessionRequest(session_id=session.id), timeout=5
            ),
            stranger.RunSession(gateway_pb2.RunSessionRequest(session_id=session.id), timeout=5),
            stranger.ListSessionExecutions(
                gateway_pb2.ListSessionExecutionsRequest(session_id=session.id), timeout=5
            ),
        ):
            assert await code_of(call) == grpc.StatusCode.NOT_FOUND
        still = await owner.GetSession(
            gateway_pb2.GetSessionRequest(session_id=session.id), timeout=5
        )
        assert not still.session.closed and still.session.revision == 1
