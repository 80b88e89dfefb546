"""The token buckets shared by gateway replicas, against the real Postgres."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from psycopg_pool import AsyncConnectionPool

from sandmesh_db.pool import new_pool
from sandmesh_db.tenants import TenantStore
from tests.helpers.servers import Servers


@pytest.fixture
async def store(servers: Servers) -> AsyncIterator[TenantStore]:
    pool: AsyncConnectionPool = new_pool(servers.postgres.url, max_size=20)
    await pool.open(wait=True)
    try:
        yield TenantStore(pool)
    finally:
        await pool.close()


async def test_a_bucket_grants_its_burst_then_says_how_long_to_wait(store: TenantStore) -> None:
    bucket = f"test:{uuid.uuid4()}"
    assert await store.take_token(bucket, rate=10, burst=2) == 0
    assert await store.take_token(bucket, rate=10, burst=2) == 0
    wait = await store.take_token(bucket, rate=10, burst=2)
    assert 0 < wait <= 0.1
    await asyncio.sleep(wait + 0.02)
    assert await store.take_token(bucket, rate=10, burst=2) == 0


async def test_concurrent_takers_never_get_more_than_the_burst(store: TenantStore) -> None:
    bucket = f"test:{uuid.uuid4()}"
    # A refill of one token per 1000 s: nothing comes back while the takers race.
    waits = await asyncio.gather(
        *(store.take_token(bucket, rate=0.001, burst=5) for _ in range(40))
    )
    assert sum(1 for wait in waits if wait == 0) == 5
    assert all(wait > 900 for wait in waits if wait)
