"""One tenant cannot hold every executor slot: each tier has a cap on the executions of one
tenant handed to executors at once, and the rest of its work waits its turn."""

from __future__ import annotations

import asyncio

from sandmesh import client
from sandmesh.execution.v1 import execution_pb2
from sandmesh_devstack.mesh import Mesh
from tests.helpers.cli import make_tenant
from tests.helpers.servers import Servers

SLEEP = "import time\ntime.sleep(2)\nprint('slept')"


async def test_a_free_tenant_runs_one_at_a_time_and_leaves_slots_to_others(
    mesh: Mesh, servers: Servers
) -> None:
    target = mesh.services["gateway"].target
    _, _, free_key = make_tenant(servers, "free")
    sleeper = client.AsyncClient(target, free_key, timeout=60)
    other = client.AsyncClient(target, servers.api_key, timeout=60)
    async with sleeper, other:
        request = execution_pb2.ExecutionRequest(language="python3", source=SLEEP)
        first = await sleeper.submit(request)
        second = await sleeper.submit(request)
        running_at_once = 0
        hello = asyncio.create_task(
            other.run(execution_pb2.ExecutionRequest(language="python3", source="print('hi')"))
        )
        while True:
            states = [(await sleeper.get(e.id)).status for e in (first, second)]
            running_at_once = max(
                running_at_once, states.count(execution_pb2.EXECUTION_STATUS_RUNNING)
            )
            if all(s == execution_pb2.EXECUTION_STATUS_COMPLETED for s in states):
                break
            await asyncio.sleep(0.05)
        said = await hello
        done = [await sleeper.get(e.id) for e in (first, second)]
    assert said.stdout == b"hi\n"
    assert [d.result.stdout for d in done] == [b"slept\n", b"slept\n"]
    # The free tier's cap is one: the second waited for the first, not for a slot.
    assert running_at_once == 1
    assert done[1].started_at.ToDatetime() >= done[0].finished_at.ToDatetime()
