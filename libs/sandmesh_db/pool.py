"""The Postgres connection pool a service holds, opened without waiting for the server."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from sandmesh_runtime.settings import env


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = env(
        "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/sandmesh", "Postgres, the record"
    )


async def _configure(conn: AsyncConnection) -> None:
    await conn.set_autocommit(True)


def new_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> AsyncConnectionPool:
    """A pool to open with `open(wait=False)`: it connects in the background, so start-up
    never blocks on Postgres, and keeps reconnecting while the server is away."""
    return AsyncConnectionPool(
        url,
        min_size=min_size,
        max_size=max_size,
        open=False,
        configure=_configure,
        kwargs={"connect_timeout": 2},
        reconnect_timeout=0,  # keep trying for as long as the service runs
        check=AsyncConnectionPool.check_connection,
    )


async def ping(pool: AsyncConnectionPool, wait_s: float = 0.8) -> None:
    """Readiness probe: a pooled connection answers `SELECT 1`."""
    async with pool.connection(timeout=wait_s) as conn:
        await conn.execute("SELECT 1")
