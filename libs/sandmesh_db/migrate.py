"""Versioned migrations with an up and a down step each.

Files are `migrations/NNNN_name.up.sql` and `NNNN_name.down.sql`. The runner holds a
Postgres advisory lock for its whole run, so two runners never interleave, and applies
each step in its own transaction together with its bookkeeping row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# An arbitrary constant naming Sandmesh's migration lock among the database's advisory locks.
LOCK_KEY = 0x5A4D_0001
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$")


class MigrationError(RuntimeError):
    """The migration files or the database are not in a state the runner can work with."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up: str
    down: str


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    applied: bool


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration in `directory`, in version order; each must have both steps."""
    steps: dict[tuple[int, str], dict[str, str]] = {}
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match is None:
            continue
        version, name, direction = int(match[1]), match[2], match[3]
        steps.setdefault((version, name), {})[direction] = path.read_text()
    migrations = []
    for (version, name), sql in sorted(steps.items()):
        if set(sql) != {"up", "down"}:
            raise MigrationError(f"migration {version:04d}_{name} needs both an up and a down file")
        migrations.append(Migration(version, name, sql["up"], sql["down"]))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migrations share a version number")
    return migrations


async def _prepare(conn: psycopg.AsyncConnection) -> set[int]:
    await conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY,"
        " name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    cursor = await conn.execute("SELECT version FROM schema_migrations")
    return {row[0] for row in await cursor.fetchall()}


async def up(url: str, target: int | None = None, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration up to `target` (default: all); returns what ran."""
    migrations = discover(directory)
    ran: list[str] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        applied = await _prepare(conn)
        for migration in migrations:
            if migration.version in applied or (target is not None and migration.version > target):
                continue
            async with conn.transaction():
                await conn.execute(migration.up.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            ran.append(f"{migration.version:04d}_{migration.name}")
    return ran


async def down(url: str, steps: int = 1, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Revert the newest `steps` applied migrations; returns what ran."""
    if steps < 1:
        raise MigrationError(f"steps must be at least 1, got {steps}")
    by_version = {m.version: m for m in discover(directory)}
    ran: list[str] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        applied = sorted(await _prepare(conn), reverse=True)
        for version in applied[:steps]:
            migration = by_version.get(version)
            if migration is None:
                raise MigrationError(f"version {version:04d} is applied but has no migration files")
            async with conn.transaction():
                await conn.execute(migration.down.encode())
                await conn.execute("DELETE FROM schema_migrations WHERE version = %s", (version,))
            ran.append(f"{migration.version:04d}_{migration.name}")
    return ran


async def status(url: str, directory: Path = MIGRATIONS_DIR) -> list[MigrationStatus]:
    """Which migrations are applied."""
    migrations = discover(directory)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        applied = await _prepare(conn)
    return [MigrationStatus(m.version, m.name, m.version in applied) for m in migrations]
