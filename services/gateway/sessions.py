"""Editing sessions: one program written and run over time, saved with revisions."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg_pool import AsyncConnectionPool

from sandmesh.gateway.v1 import gateway_pb2
from sandmesh_db.rows import copy_times, fetch_one, parse_id
from sandmesh_runtime import errors

_COLUMNS = "id, language, source, revision, closed, created_at, updated_at"


class StaleRevision(errors.Aborted):
    """The write named a revision that is no longer the latest."""

    def __init__(self, given: int, latest: int) -> None:
        super().__init__(
            f"base_revision {given} is stale: the session is at revision {latest}; reload it"
        )


class SessionClosed(errors.FailedPrecondition):
    """The session was closed; it can be read but not changed or run."""


def _to_proto(row: dict[str, Any]) -> gateway_pb2.Session:
    session = gateway_pb2.Session(
        id=str(row["id"]),
        language=row["language"],
        source=row["source"],
        revision=row["revision"],
        closed=row["closed"],
    )
    copy_times(session, row, ("created_at", "updated_at"))
    return session


class SessionStore:
    """Sessions of each tenant; another tenant's session is simply not there."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def _one(self, query: str, params: tuple[Any, ...]) -> gateway_pb2.Session | None:
        row = await fetch_one(self._pool, query, params)
        return None if row is None else _to_proto(row)

    async def create(self, tenant: str, language: str, source: str) -> gateway_pb2.Session:
        session = await self._one(
            "INSERT INTO sessions (id, tenant, language, source) VALUES (%s, %s, %s, %s)"
            f" RETURNING {_COLUMNS}",
            (uuid.uuid4(), tenant, language, source),
        )
        assert session is not None
        return session

    async def get(self, tenant: str, session_id: str) -> gateway_pb2.Session | None:
        key = parse_id(session_id)
        if key is None:
            return None
        return await self._one(
            f"SELECT {_COLUMNS} FROM sessions WHERE id = %s AND tenant = %s", (key, tenant)
        )

    async def save(
        self, tenant: str, session_id: str, source: str, base_revision: int
    ) -> gateway_pb2.Session | None:
        """Save a new source over `base_revision`; None when there is no such session.

        Raises StaleRevision when a newer write got there first, SessionClosed when closed.
        """
        key = parse_id(session_id)
        if key is None:
            return None
        # Compare-and-set on the revision: a stale write changes nothing.
        saved = await self._one(
            "UPDATE sessions SET source = %s, revision = revision + 1, updated_at = now()"
            " WHERE id = %s AND tenant = %s AND revision = %s AND NOT closed"
            f" RETURNING {_COLUMNS}",
            (source, key, tenant, base_revision),
        )
        if saved is not None:
            return saved
        current = await self.get(tenant, session_id)
        if current is None:
            return None
        if current.closed:
            raise SessionClosed(f"session {session_id} is closed")
        raise StaleRevision(base_revision, current.revision)

    async def close(self, tenant: str, session_id: str) -> gateway_pb2.Session | None:
        key = parse_id(session_id)
        if key is None:
            return None
        return await self._one(
            "UPDATE sessions SET closed = true, updated_at = now()"
            f" WHERE id = %s AND tenant = %s RETURNING {_COLUMNS}",
            (key, tenant),
        )
