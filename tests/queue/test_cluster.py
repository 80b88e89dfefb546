"""On a 3-node NATS cluster the streams are replicated: a queued job outlives its leader.

Three real nats-server processes routed into one cluster, as deploy/ runs them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import nats
import pytest
from nats.js import JetStreamContext

from sandmesh.execution.v1 import execution_pb2
from sandmesh.queue.v1 import queue_pb2
from sandmesh_devstack.nats import LocalNats
from sandmesh_queue import messages, streams, subjects

REPLICATED = streams.QueueSettings(replicas=3)
T = TypeVar("T")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[LocalNats]]:
    nodes = LocalNats.cluster(tmp_path)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
async def js(cluster: list[LocalNats]) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(
        servers=[node.url for node in cluster], reconnect_time_wait=0.2, max_reconnect_attempts=-1
    )
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def eventually(attempt: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """Retry `attempt` (a coroutine function) until it stops raising: a new cluster elects
    its JetStream leaders, and a cluster that lost a node re-elects them, in a few seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await attempt()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_streams_are_replicated_and_a_job_survives_its_leader(
    cluster: list[LocalNats], js: JetStreamContext
) -> None:
    await eventually(lambda: streams.ensure_streams(js, REPLICATED))
    for config in streams.stream_configs(REPLICATED):
        info = await js.stream_info(str(config.name))
        assert info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2

    job = queue_pb2.Job(
        execution_id=str(uuid.uuid4()),
        tenant="t",
        request=execution_pb2.ExecutionRequest(language="python3", source="print(1)"),
    )
    job.deadline.FromSeconds(int(time.time()) + 300)
    await messages.publish_job(js, job, "interactive")

    before = await js.stream_info(subjects.JOBS_STREAM)
    assert before.cluster is not None
    leader = before.cluster.leader
    by_name = {f"node{i}": node for i, node in enumerate(cluster)}
    by_name[str(leader)].kill()

    async def new_leader() -> str:
        info = await js.stream_info(subjects.JOBS_STREAM)
        assert info.cluster is not None and info.cluster.leader not in (None, leader)
        return str(info.cluster.leader)

    assert await eventually(new_leader) != leader

    async def pull() -> queue_pb2.Job:
        subscription = await js.pull_subscribe_bind(
            durable=subjects.executor_consumer("interactive"), stream=subjects.JOBS_STREAM
        )
        (msg,) = await subscription.fetch(1, timeout=2)
        await msg.ack_sync()
        return queue_pb2.Job.FromString(msg.data)

    pulled = await eventually(pull)
    assert pulled.execution_id == job.execution_id


def test_replicas_outside_one_to_five_is_refused() -> None:
    with pytest.raises(ValueError, match="SANDMESH_STREAM_REPLICAS must be 1 to 5, got 7"):
        streams.QueueSettings(replicas=7)
