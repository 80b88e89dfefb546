"""The executions table: the scheduler is its only writer."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from sandmesh.execution.v1 import execution_pb2
from sandmesh_contracts import statuses
from sandmesh_runtime import deadlines

_COLUMNS = (
    "id, tenant, request, status, attempt, result, created_at, started_at, finished_at, deadline"
)


@dataclass(frozen=True)
class NewExecution:
    tenant: str
    request: execution_pb2.ExecutionRequest
    deadline: datetime
    session_id: str | None = None
    idempotency_key: str | None = None


def _to_proto(row: dict[str, object]) -> execution_pb2.Execution:
    execution = execution_pb2.Execution(
        id=str(row["id"]),
        tenant=str(row["tenant"]),
        status=statuses.from_name(str(row["status"])),
        attempt=int(row["attempt"]),  # type: ignore[call-overload]
    )
    execution.request.ParseFromString(row["request"])  # type: ignore[arg-type]
    if row["result"] is not None:
        execution.result.ParseFromString(row["result"])  # type: ignore[arg-type]
    for field in ("created_at", "started_at", "finished_at", "deadline"):
        value = row[field]
        if isinstance(value, datetime):
            getattr(execution, field).FromDatetime(value)
    return execution


def _statement_timeout_ms() -> int:
    """Postgres work stops when the caller's deadline does."""
    return max(1, int(deadlines.timeout(30.0) * 1000))


class ExecutionStore:
    """Reads and writes executions; every statement is bounded by the caller's deadline."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def insert(self, new: NewExecution) -> execution_pb2.Execution:
        """Store a new execution as QUEUED."""
        lane = statuses.lane(new.request.priority)
        async with (
            self._pool.connection(timeout=deadlines.timeout(5.0)) as conn,
            conn.transaction(),
        ):
            await conn.execute(f"SET LOCAL statement_timeout = {_statement_timeout_ms()}")
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "INSERT INTO executions (id, tenant, session_id, idempotency_key, request,"
                " language, priority, status, deadline)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                f" RETURNING {_COLUMNS}",
                (
                    uuid.uuid4(),
                    new.tenant,
                    new.session_id,
                    new.idempotency_key,
                    new.request.SerializeToString(),
                    new.request.language,
                    lane,
                    statuses.QUEUED,
                    new.deadline,
                ),
            )
            row = await cursor.fetchone()
        assert row is not None
        return _to_proto(row)

    async def get(self, tenant: str, execution_id: str) -> execution_pb2.Execution | None:
        """One execution of `tenant`, or None (also for another tenant's id)."""
        try:
            key = uuid.UUID(execution_id)
        except ValueError:
            return None
        async with self._pool.connection(timeout=deadlines.timeout(5.0)) as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                f"SELECT {_COLUMNS} FROM executions WHERE id = %s AND tenant = %s",
                (key, tenant),
            )
            row = await cursor.fetchone()
        return None if row is None else _to_proto(row)

    async def queue_position(self, execution: execution_pb2.Execution) -> int:
        """How many jobs of the same lane were queued before this one."""
        async with self._pool.connection(timeout=deadlines.timeout(5.0)) as conn:
            cursor = await conn.execute(
                "SELECT count(*) FROM executions WHERE status = %s AND priority = %s"
                " AND created_at < %s",
                (
                    statuses.QUEUED,
                    statuses.lane(execution.request.priority),
                    execution.created_at.ToDatetime(),
                ),
            )
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def mark_running(self, execution_id: str, attempt: int) -> bool:
        """Record that an attempt started; a final execution stays final."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE executions SET status = %s, attempt = %s,"
                " started_at = coalesce(started_at, now())"
                " WHERE id = %s AND status IN (%s, %s)",
                (statuses.RUNNING, attempt, uuid.UUID(execution_id), *statuses.OPEN),
            )
            return cursor.rowcount == 1

    async def finish(
        self, execution_id: str, attempt: int, result: execution_pb2.ExecutionResult
    ) -> bool:
        """Store the final result once; False when the execution was already final."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE executions SET status = %s, attempt = greatest(attempt, %s), result = %s,"
                " finished_at = now() WHERE id = %s AND status IN (%s, %s)",
                (
                    statuses.to_name(result.status),
                    attempt,
                    result.SerializeToString(),
                    uuid.UUID(execution_id),
                    *statuses.OPEN,
                ),
            )
            return cursor.rowcount == 1
