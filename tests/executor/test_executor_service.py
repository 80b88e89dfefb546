"""The executor service as deployed: concurrency bound, cancellation, warm pool, layers."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
import nats
import pytest
from nats.aio.client import Client

from sandmesh.execution.v1 import execution_pb2
from sandmesh.executor.v1 import executor_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh_devstack.mesh import Mesh
from sandmesh_queue import subjects
from tests.helpers.runner import Runner, sandbox_status, status

if TYPE_CHECKING:
    from sandmesh.executor.v1.executor_pb2_grpc import ExecutorServiceAsyncStub as ExecutorStub


@pytest.fixture
async def nc(mesh: Mesh) -> AsyncIterator[Client]:
    connection = await nats.connect(mesh.services["executor"].env["NATS_URL"])
    try:
        yield connection
    finally:
        await connection.close()


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    # Ends sort before starts at the same instant: touching intervals do not overlap.
    points = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in points:
        running += step
        peak = max(peak, running)
    return peak


async def test_twenty_runs_at_once_finish_and_never_exceed_the_bound(
    run: Runner, executor: ExecutorStub, nc: Client
) -> None:
    capacity = (await sandbox_status(executor)).capacity
    assert capacity == os.cpu_count()
    js = nc.jetstream()
    seen_running: list[int] = []
    seen_pulled: list[int] = []
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen_running.append((await sandbox_status(executor)).running)
            pulled = 0
            for lane in subjects.LANES:
                consumer = subjects.executor_consumer(lane)
                pulled += (await js.consumer_info(subjects.JOBS_STREAM, consumer)).num_ack_pending
            seen_pulled.append(pulled)
            await asyncio.sleep(0.01)

    source = "import sys, time\nstart = time.time()\ntime.sleep(0.2)\n"
    source += "print(sys.argv[1], start, time.time())"
    watcher = asyncio.create_task(watch())
    started = time.monotonic()
    results = await asyncio.gather(*(run("python3", source, args=[str(i)]) for i in range(20)))
    elapsed = time.monotonic() - started
    done.set()
    await watcher

    assert [status(r) for r in results] == ["COMPLETED"] * 20
    lines = [r.stdout.decode().split() for r in results]
    assert [int(line[0]) for line in lines] == list(range(20))
    # The programs' own clocks: never more than `capacity` of them were alive at once.
    assert _max_overlap([(float(line[1]), float(line[2])) for line in lines]) <= capacity
    # Neither running nor pulled-but-unacked jobs ever went past the bound, and it was used.
    assert max(seen_running) <= capacity and max(seen_pulled) <= capacity
    assert max(seen_running) == capacity
    print(f"20 runs of 0.2 s with capacity {capacity}: {elapsed:.2f} s")


async def _submit(channel: grpc.aio.Channel, source: str) -> str:
    gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
    submitted = await gateway.SubmitExecution(
        gateway_pb2.SubmitExecutionRequest(
            request=execution_pb2.ExecutionRequest(language="python3", source=source)
        ),
        timeout=10,
    )
    return submitted.execution.id


async def _result_of(channel: grpc.aio.Channel, execution_id: str) -> execution_pb2.ExecutionResult:
    gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
    async for response in gateway.WatchExecution(
        gateway_pb2.WatchExecutionRequest(execution_id=execution_id), timeout=60
    ):
        if response.event.HasField("result"):
            return response.event.result
    raise AssertionError(f"no result for {execution_id}")


async def _wait_output(channel: grpc.aio.Channel, execution_id: str) -> None:
    """Until the program has written something: it is running inside its sandbox."""
    gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
    async for response in gateway.WatchExecution(
        gateway_pb2.WatchExecutionRequest(execution_id=execution_id), timeout=30
    ):
        if response.event.HasField("output"):
            return
    raise AssertionError(f"{execution_id} ended without output")


async def test_cancel_kills_running_runs_and_skips_queued_ones(
    run: Runner, executor: ExecutorStub, nc: Client
) -> None:
    capacity = (await sandbox_status(executor)).capacity
    sleeper = "import time\nprint('started', flush=True)\ntime.sleep(30)\nprint('finished')"
    running = [await _submit(run.channel, sleeper) for _ in range(capacity)]
    for execution_id in running:
        await _wait_output(run.channel, execution_id)
    # Every slot is busy: this one waits in the queue and is cancelled before it is pulled.
    queued = await _submit(run.channel, "print('must not run')")
    await nc.publish(subjects.CANCEL_SUBJECT, queued.encode())
    await nc.flush()

    cancelled_at = time.monotonic()
    for execution_id in running:
        await nc.publish(subjects.CANCEL_SUBJECT, execution_id.encode())
    await nc.flush()
    results = [await _result_of(run.channel, execution_id) for execution_id in running]
    assert time.monotonic() - cancelled_at < 1.5
    for result in results:
        assert status(result) == "CANCELLED", result
        assert result.stdout == b"started\n"

    skipped = await _result_of(run.channel, queued)
    assert status(skipped) == "CANCELLED", skipped
    assert skipped.stdout == b"" and "before it started" in skipped.detail
    assert (await run("python3", "print('next')")).stdout == b"next\n"


async def test_runs_are_served_from_the_warm_pool(run: Runner, executor: ExecutorStub) -> None:
    def pool_detail(response: executor_pb2.GetSandboxStatusResponse) -> str:
        layers = {layer.name: layer for layer in response.layers}
        assert layers["warm_pool"].active
        return layers["warm_pool"].detail

    before = pool_detail(await sandbox_status(executor))
    result = await run("python3", "import sys\nprint(sys.argv)", args=["x"])
    assert status(result) == "COMPLETED" and result.stdout == b"['main.py', 'x']\n"
    after = pool_detail(await sandbox_status(executor))
    warm_count = int(after.split("served warm ")[1].split(",")[0])
    assert warm_count > int(before.split("served warm ")[1].split(",")[0])
    # Refilled in the background: an idle python3 sandbox is waiting again.
    for _ in range(100):
        if "'python3': 1" in pool_detail(await sandbox_status(executor)):
            break
        await asyncio.sleep(0.05)
    assert "'python3': 1" in pool_detail(await sandbox_status(executor))


async def test_status_reports_every_sandbox_layer_active(executor: ExecutorStub) -> None:
    layers = {layer.name: layer.active for layer in (await sandbox_status(executor)).layers}
    expected = {
        "bwrap",
        "seccomp",
        "seccomp_enforced",
        "rlimits",
        "uid_isolation",
        "user_namespace",
        "pid_namespace",
        "net_namespace",
        "uts_namespace",
        "ipc_namespace",
        "read_only_root",
        "private_tmp",
        "no_host_secrets",
        "clean_environment",
        "cgroup_memory",
        "cgroup_pids",
        "cgroup_cpu",
        "cgroup_cpu_max",
    }
    assert expected <= set(layers)
    # cgroups are the one layer a machine may legitimately lack (rlimits then carry the load).
    assert all(layers[name] for name in expected if not name.startswith("cgroup_"))
