"""The real servers the suite runs against, and meshes of the four services on them."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg_pool import AsyncConnectionPool

from sandmesh_db import migrate
from sandmesh_db.tenants import TenantStore
from sandmesh_devstack.mesh import SERVICES, Mesh
from sandmesh_devstack.nats import LocalNats
from sandmesh_devstack.ports import free_ports
from sandmesh_devstack.postgres import LocalPostgres


@dataclass(frozen=True)
class Servers:
    nats: LocalNats
    postgres: LocalPostgres
    api_key: str  # of tenant "default", which the tests act as
    database_url: str  # the database on `postgres` that services started on these use

    async def with_own_database(self, nats: LocalNats) -> Servers:
        """`nats` with a database of its own on the same Postgres, migrated, with tenant
        "default" and a key of it.

        A scheduler sweeps every execution of its database and deletes their jobs from its
        own NATS; a scheduler on another NATS sharing the database would expire, reap and
        requeue executions it cannot see, so a NATS of its own needs a database of its own.
        """
        name = f"own_{uuid.uuid4().hex[:12]}"
        async with await psycopg.AsyncConnection.connect(
            self.postgres.url, autocommit=True
        ) as conn:
            await conn.execute(f"CREATE DATABASE {name}")  # name is ours: no quoting needed
        database_url = self.postgres.url.rsplit("/", 1)[0] + "/" + name
        return Servers(nats, self.postgres, await prepare_database(database_url), database_url)


async def prepare_database(url: str) -> str:
    """Migrate, create the tenant the tests act as, and return an API key of it."""
    await migrate.up(url)
    async with AsyncConnectionPool(url, min_size=1, max_size=1) as pool:
        store = TenantStore(pool)
        await store.create_tenant("default", "pro")
        _, key = await store.create_key("default")
    return key


def start_mesh(servers: Servers, log_dir: Path, extra_env: dict[str, str] | None = None) -> Mesh:
    """The four services on free ports against the session's servers, ready to serve."""
    mesh = Mesh(
        log_dir,
        servers.nats.url,
        servers.database_url,
        ports=dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True)),
        extra_env=extra_env,
    )
    mesh.start()
    try:
        mesh.wait_ready()
    except BaseException:
        mesh.stop()
        raise
    return mesh


@contextlib.contextmanager
def own_mesh(
    servers: Servers,
    base: Path,
    extra_env: dict[str, str] | None = None,
    max_payload: int | None = None,
) -> Iterator[tuple[Mesh, Servers]]:
    """The four services on a NATS server of their own (with `max_payload`, if given) and
    a database of their own on the session's Postgres, ready to serve."""
    nats = LocalNats.start(base / "nats", max_payload=max_payload)
    try:
        own = asyncio.run(servers.with_own_database(nats))
        mesh = start_mesh(own, base / "logs", extra_env)
        try:
            yield mesh, own
        finally:
            mesh.stop()
    finally:
        nats.stop()
