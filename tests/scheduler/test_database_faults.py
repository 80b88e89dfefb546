"""A database fault is UNAVAILABLE with a retry delay on every call that reads the store,
never UNKNOWN: the runtime's error boundary translates it, no handler has to."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2

from sandmesh.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from sandmesh_runtime.errors import details_of
from tests.helpers.island import Island


@pytest.fixture
async def database_refusing(island: Island) -> AsyncIterator[None]:
    """The island's database takes no connection and drops those it has, as a database
    restarting or out of connections does; then it comes back."""
    url = island.env["DATABASE_URL"]
    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
        await conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (name,),
        )
        try:
            yield
        finally:
            await conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")


Stub: TypeAlias = "scheduler_pb2_grpc.SchedulerServiceAsyncStub"
CALLS: dict[str, Callable[[Stub], Awaitable[Any]]] = {
    "ListExecutions": lambda stub: stub.ListExecutions(
        scheduler_pb2.ListExecutionsRequest(tenant="t"), timeout=10
    ),
    "ListDeadLetters": lambda stub: stub.ListDeadLetters(
        scheduler_pb2.ListDeadLettersRequest(tenant="t"), timeout=10
    ),
    "ReplayDeadLetter": lambda stub: stub.ReplayDeadLetter(
        scheduler_pb2.ReplayDeadLetterRequest(
            tenant="t", dead_letter_id="00000000-0000-0000-0000-000000000000"
        ),
        timeout=10,
    ),
    "GetExecution": lambda stub: stub.GetExecution(
        scheduler_pb2.GetExecutionRequest(
            tenant="t", execution_id="00000000-0000-0000-0000-000000000000"
        ),
        timeout=10,
    ),
    "GetQueueStats": lambda stub: stub.GetQueueStats(
        scheduler_pb2.GetQueueStatsRequest(), timeout=10
    ),
}


async def test_every_read_of_the_store_is_unavailable_with_a_retry_delay(
    scheduler: scheduler_pb2_grpc.SchedulerServiceAsyncStub, database_refusing: None
) -> None:
    for name, call in CALLS.items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(scheduler)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, (name, refused.value)
        (retry,) = [
            d for d in details_of(refused.value) if isinstance(d, error_details_pb2.RetryInfo)
        ]
        assert retry.retry_delay.seconds >= 1, name
