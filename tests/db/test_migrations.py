"""Migrations: up, down and up again give the same schema; runners never collide."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from sandmesh_db import migrate
from tests.helpers.servers import Servers

SCHEMA = """
SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '')
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT tablename, indexname, indexdef, '', '' FROM pg_indexes WHERE schemaname = 'public'
ORDER BY 1, 2, 3
"""


@pytest.fixture
async def empty_database(servers: Servers) -> AsyncIterator[str]:
    name = f"migrations_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(servers.postgres.url, autocommit=True) as c:
        await c.execute(f'CREATE DATABASE "{name}"')
    yield servers.postgres.url.rsplit("/", 1)[0] + f"/{name}"
    async with await psycopg.AsyncConnection.connect(servers.postgres.url, autocommit=True) as c:
        await c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


async def schema(url: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        return list(await (await conn.execute(SCHEMA)).fetchall())


async def test_up_down_up_gives_the_same_schema(empty_database: str) -> None:
    every = [f"{m.version:04d}_{m.name}" for m in migrate.discover()]
    assert await migrate.up(empty_database) == every
    applied = await schema(empty_database)
    assert any(row[0] == "executions" for row in applied)

    assert await migrate.down(empty_database, steps=len(every)) == every[::-1]
    assert {row[0] for row in await schema(empty_database)} == {"schema_migrations"}
    assert [s.applied for s in await migrate.status(empty_database)] == [False] * len(every)

    assert await migrate.up(empty_database) == every
    assert await schema(empty_database) == applied
    assert await migrate.up(empty_database) == []


async def test_two_runners_at_once_apply_each_migration_once(empty_database: str) -> None:
    first, second = await asyncio.gather(migrate.up(empty_database), migrate.up(empty_database))
    every = [f"{m.version:04d}_{m.name}" for m in migrate.discover()]
    assert sorted([*first, *second]) == sorted(every)
    assert all(s.applied for s in await migrate.status(empty_database))


async def test_a_failing_step_leaves_nothing_half_applied(
    empty_database: str, tmp_path: Path
) -> None:
    directory = tmp_path
    (directory / "0001_good.up.sql").write_text("CREATE TABLE good (id int);")
    (directory / "0001_good.down.sql").write_text("DROP TABLE good;")
    (directory / "0002_bad.up.sql").write_text("CREATE TABLE half (id int); SELECT 1/0;")
    (directory / "0002_bad.down.sql").write_text("DROP TABLE half;")
    with pytest.raises(psycopg.errors.DivisionByZero):
        await migrate.up(empty_database, directory=directory)
    tables = {row[0] for row in await schema(empty_database)}
    assert tables == {"schema_migrations", "good"}
    statuses = await migrate.status(empty_database, directory=directory)
    assert [(s.version, s.applied) for s in statuses] == [(1, True), (2, False)]


def test_a_migration_without_its_down_step_is_refused(tmp_path: Path) -> None:
    directory = tmp_path
    (directory / "0001_only_up.up.sql").write_text("SELECT 1;")
    with pytest.raises(migrate.MigrationError, match="needs both an up and a down"):
        migrate.discover(directory)
