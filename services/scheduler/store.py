"""The executions and dead-letter tables: the scheduler is their only writer."""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from sandmesh.execution.v1 import execution_pb2
from sandmesh.scheduler.v1 import scheduler_pb2
from sandmesh_contracts import results, statuses
from sandmesh_contracts.wire import MAX_RESPONSE_BYTES
from sandmesh_db.rows import copy_times, fetch_one, parse_id
from sandmesh_queue import subjects
from sandmesh_runtime import deadlines, errors

_COLUMNS = (
    "id, tenant, request, status, attempt, result, created_at, started_at, finished_at,"
    " deadline, job_seq"
)
IDEMPOTENCY_WINDOW = "24 hours"


# How long a caller refused for a full queue is asked to wait.
QUEUE_FULL_RETRY_S = 2.0


class IdempotencyConflict(errors.AlreadyExists):
    """The key was used within the window for a different request."""

    def __init__(self, key: str, execution_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for a different request"
            f" (execution {execution_id})"
        )


class QueueFull(errors.QuotaExceeded):
    """Accepting one more would pass a queue-depth limit."""

    def __init__(self, scope: str, tenant: str, limit: int) -> None:
        super().__init__(
            f"the {scope} queue is full ({limit} executions waiting)",
            f"tenant:{tenant}",
            f"{limit} open executions",
            QUEUE_FULL_RETRY_S,
        )


@dataclass(frozen=True)
class NewExecution:
    tenant: str
    request: execution_pb2.ExecutionRequest
    deadline: datetime
    session_id: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class QueueLimits:
    per_tenant: int
    total: int
    # Executions of one tenant handed to executors at once, by tier: one tenant cannot
    # hold every executor slot. A tenant with no row (an internal caller) has no cap.
    running_by_tier: dict[str, int]


@dataclass(frozen=True)
class Closed:
    """An execution the scheduler closed itself, with what to clean up after it."""

    execution: execution_pb2.Execution
    job_seq: int | None


def request_hash(request: execution_pb2.ExecutionRequest) -> bytes:
    return hashlib.sha256(request.SerializeToString(deterministic=True)).digest()


def _to_proto(row: dict[str, Any]) -> execution_pb2.Execution:
    execution = execution_pb2.Execution(
        id=str(row["id"]),
        tenant=str(row["tenant"]),
        status=statuses.from_name(str(row["status"])),
        attempt=int(row["attempt"]),
    )
    execution.request.ParseFromString(row["request"])
    if row["result"] is not None:
        execution.result.ParseFromString(row["result"])
    copy_times(execution, row, ("created_at", "started_at", "finished_at", "deadline"))
    return execution


def encode_page_token(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_page_token(token: str) -> tuple[datetime, uuid.UUID]:
    """The position a page token stands for; InvalidArgument for one we did not make."""
    try:
        created, row_id = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        return datetime.fromisoformat(created), uuid.UUID(row_id)
    except ValueError:
        raise errors.InvalidArgument([("page_token", "is not a token we issued")]) from None


M = TypeVar("M", execution_pb2.Execution, scheduler_pb2.DeadLetter)


def _within_budget(items: list[M]) -> list[M]:
    """The first items whose answer stays under MAX_RESPONSE_BYTES (at least one)."""
    size = 0
    for count, item in enumerate(items):
        size += item.ByteSize()
        if size > MAX_RESPONSE_BYTES and count:
            return items[:count]
    return items


def _next_token(rows: list[dict[str, Any]], shown: int) -> str:
    """The token of the page after the first `shown` of `rows` (one more than a page was
    read, so a full page with nothing after it has no token)."""
    if len(rows) <= shown:
        return ""
    last = rows[shown - 1]
    return encode_page_token(last["created_at"], last["id"])


async def _bounded(conn: AsyncConnection[Any]) -> None:
    """Postgres work stops when the caller's deadline does."""
    timeout_ms = max(1, int(deadlines.timeout(30.0) * 1000))
    await conn.execute(f"SET LOCAL statement_timeout = {timeout_ms}")


class ExecutionStore:
    """Reads and writes executions; request-path statements end with the caller's deadline."""

    def __init__(self, pool: AsyncConnectionPool, limits: QueueLimits) -> None:
        self._pool = pool
        self._limits = limits

    async def insert(self, new: NewExecution) -> tuple[execution_pb2.Execution, bool]:
        """Store a new execution as QUEUED; returns it and whether it is new.

        With an idempotency key seen within the window for the same request, the earlier
        execution comes back instead (not new).
        """
        digest = request_hash(new.request)
        async with (
            self._pool.connection(timeout=deadlines.timeout()) as conn,
            conn.transaction(),
        ):
            await _bounded(conn)
            cursor = conn.cursor(row_factory=dict_row)
            if new.idempotency_key:
                existing = await self._by_key(cursor, new.tenant, new.idempotency_key, digest)
                if existing is not None:
                    return existing, False
            await self._check_depth(conn, new.tenant)
            await cursor.execute(
                "INSERT INTO executions (id, tenant, session_id, idempotency_key, request,"
                " request_hash, language, priority, status, deadline)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL"
                f" DO NOTHING RETURNING {_COLUMNS}",
                (
                    uuid.uuid4(),
                    new.tenant,
                    new.session_id,
                    new.idempotency_key,
                    new.request.SerializeToString(),
                    digest,
                    new.request.language,
                    statuses.lane(new.request.priority),
                    statuses.QUEUED,
                    new.deadline,
                ),
            )
            row = await cursor.fetchone()
            if row is None:
                # A concurrent submission with the same key won the race: answer with its row.
                assert new.idempotency_key
                raced = await self._by_key(cursor, new.tenant, new.idempotency_key, digest)
                assert raced is not None
                return raced, False
        return _to_proto(row), True

    async def _by_key(
        self, cursor: Any, tenant: str, key: str, digest: bytes
    ) -> execution_pb2.Execution | None:
        """The execution made with `key` within the window; IdempotencyConflict if it was
        made from another request."""
        await cursor.execute(
            f"SELECT {_COLUMNS}, request_hash, created_at > now() - interval '{IDEMPOTENCY_WINDOW}'"
            " AS fresh FROM executions WHERE tenant = %s AND idempotency_key = %s FOR UPDATE",
            (tenant, key),
        )
        row = await cursor.fetchone()
        if row is None:
            return None
        if not row["fresh"]:
            # Past the window the key is free again.
            await cursor.execute(
                "UPDATE executions SET idempotency_key = NULL WHERE id = %s", (row["id"],)
            )
            return None
        if bytes(row["request_hash"]) != digest:
            raise IdempotencyConflict(key, str(row["id"]))
        return _to_proto(row)

    async def _check_depth(self, conn: AsyncConnection[Any], tenant: str) -> None:
        """A tenant's open (queued or running) executions, and all queued ones, are bounded."""
        cursor = await conn.execute(
            "SELECT count(*) FILTER (WHERE tenant = %s),"
            " count(*) FILTER (WHERE status = %s) FROM executions WHERE status IN (%s, %s)",
            (tenant, statuses.QUEUED, *statuses.OPEN),
        )
        row = await cursor.fetchone()
        assert row is not None
        if row[0] >= self._limits.per_tenant:
            raise QueueFull("tenant's", tenant, self._limits.per_tenant)
        if row[1] >= self._limits.total:
            raise QueueFull("global", tenant, self._limits.total)

    async def delete_finished_before(self, retention_s: float, batch: int = 1000) -> int:
        """Delete up to `batch` executions (with their dead letters) that finished more than
        `retention_s` ago; how many went."""
        async with self._pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "WITH old AS (SELECT id FROM executions WHERE finished_at"
                " < now() - make_interval(secs => %s) LIMIT %s),"
                " letters AS (DELETE FROM dead_letters WHERE execution_id IN (SELECT id FROM old))"
                " DELETE FROM executions WHERE id IN (SELECT id FROM old)",
                (retention_s, batch),
            )
            return cursor.rowcount

    async def claim_dispatch(
        self, tenant: str, surely_waiting: bool = False
    ) -> list[execution_pb2.Execution]:
        """Mark as handed over as many of `tenant`'s waiting executions as its running cap
        leaves room for (interactive first, then oldest), and return them to be queued;
        `surely_waiting` when the caller just stored one.

        Under a per-tenant advisory lock, so schedulers running side by side never hand
        over more than the cap between them.
        """
        async with self._pool.connection() as conn:
            if surely_waiting:
                return await self._claim(conn, tenant)
            # Most runs end with nothing of their tenant waiting: one look at the partial
            # index spares the locked claim. A row held after this look is its own
            # submission's to dispatch (or the sweeper's).
            cursor = await conn.execute(
                "SELECT EXISTS (SELECT 1 FROM executions WHERE tenant = %s AND status = %s"
                " AND dispatched_at IS NULL)",
                (tenant, statuses.QUEUED),
            )
            waiting = await cursor.fetchone()
            if waiting is None or not waiting[0]:
                return []
            return await self._claim(conn, tenant)

    async def _claim(
        self, conn: AsyncConnection[Any], tenant: str
    ) -> list[execution_pb2.Execution]:
        async with conn.transaction():
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (tenant,))
            await cursor.execute(
                "SELECT (SELECT tier FROM tenants WHERE id = %s) AS tier,"
                " (SELECT count(*) FROM executions WHERE tenant = %s AND status IN (%s, %s)"
                "  AND dispatched_at IS NOT NULL) AS handed_over",
                (tenant, tenant, *statuses.OPEN),
            )
            row = await cursor.fetchone()
            assert row is not None
            cap = self._limits.running_by_tier.get(row["tier"]) if row["tier"] else None
            room = None if cap is None else max(0, cap - int(row["handed_over"]))
            if room == 0:
                return []
            await cursor.execute(
                "UPDATE executions SET dispatched_at = now() WHERE id IN"
                " (SELECT id FROM executions WHERE tenant = %s AND status = %s"
                "  AND dispatched_at IS NULL"
                "  ORDER BY priority = 'batch', created_at LIMIT %s FOR UPDATE)"
                f" RETURNING {_COLUMNS}",
                (tenant, statuses.QUEUED, room),
            )
            rows = await cursor.fetchall()
        return [_to_proto(row) for row in sorted(rows, key=lambda r: r["created_at"])]

    async def release_dispatch(self, execution_id: str) -> None:
        """Its job never reached the queue: it waits again, for a later dispatch."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE executions SET dispatched_at = NULL WHERE id = %s AND status = %s",
                (uuid.UUID(execution_id), statuses.QUEUED),
            )

    async def release_stale_dispatches(self, after_s: float = 30.0) -> None:
        """Executions marked handed over whose job never got its stream sequence (a
        scheduler stopped between the two) wait again, well inside the broker's dedupe
        window, so a republish of a job that did go out is dropped."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE executions SET dispatched_at = NULL WHERE status = %s"
                " AND job_seq IS NULL AND dispatched_at < now() - make_interval(secs => %s)",
                (statuses.QUEUED, after_s),
            )

    async def tenants_waiting(self) -> list[str]:
        """Tenants with executions waiting for room under their running cap."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT DISTINCT tenant FROM executions"
                " WHERE status = %s AND dispatched_at IS NULL",
                (statuses.QUEUED,),
            )
            return [row[0] for row in await cursor.fetchall()]

    async def release_key(self, execution_id: str) -> None:
        """Free the idempotency key of an execution that was never queued, so a retry with
        the same key makes a fresh one instead of finding this failure."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE executions SET idempotency_key = NULL WHERE id = %s",
                (uuid.UUID(execution_id),),
            )

    async def set_job_seq(self, execution_id: str, seq: int) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE executions SET job_seq = %s WHERE id = %s", (seq, uuid.UUID(execution_id))
            )

    async def get(self, tenant: str, execution_id: str) -> execution_pb2.Execution | None:
        """One execution of `tenant`, or None (also for another tenant's id)."""
        key = parse_id(execution_id)
        if key is None:
            return None
        row = await fetch_one(
            self._pool,
            f"SELECT {_COLUMNS} FROM executions WHERE id = %s AND tenant = %s",
            (key, tenant),
        )
        return None if row is None else _to_proto(row)

    async def list_executions(
        self, tenant: str, session_id: str | None, page_size: int, page_token: str
    ) -> tuple[list[execution_pb2.Execution], str]:
        """A page of `tenant`'s executions (of one session, if given), newest first."""
        after = decode_page_token(page_token) if page_token else None
        async with self._pool.connection(timeout=deadlines.timeout()) as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                f"SELECT {_COLUMNS} FROM executions WHERE tenant = %s"
                " AND (%s::text IS NULL OR session_id = %s)"
                " AND (%s::timestamptz IS NULL OR (created_at, id) < (%s, %s))"
                " ORDER BY created_at DESC, id DESC LIMIT %s",
                (
                    tenant,
                    session_id,
                    session_id,
                    after and after[0],
                    after and after[0],
                    after and after[1],
                    page_size + 1,
                ),
            )
            rows = await cursor.fetchall()
        executions = _within_budget([_to_proto(row) for row in rows[:page_size]])
        return executions, _next_token(rows, len(executions))

    async def queue_estimate(self, execution: execution_pb2.Execution) -> tuple[int, int]:
        """Jobs ahead in the same lane, and the wait they mean at the recent finish rate (ms)."""
        async with self._pool.connection(timeout=deadlines.timeout()) as conn:
            cursor = await conn.execute(
                "SELECT (SELECT count(*) FROM executions WHERE status = %s AND priority = %s"
                "        AND created_at < %s),"
                "       (SELECT count(*) FROM executions"
                "        WHERE finished_at > now() - interval '60 seconds')",
                (
                    statuses.QUEUED,
                    statuses.lane(execution.request.priority),
                    execution.created_at.ToDatetime(tzinfo=UTC),
                ),
            )
            row = await cursor.fetchone()
        assert row is not None
        ahead, finished_last_minute = int(row[0]), int(row[1])
        per_second = finished_last_minute / 60.0
        wait_ms = int(1000 * (ahead + 1) / per_second) if per_second > 0 else 0
        return ahead, wait_ms

    async def mark_running(self, execution_id: str, attempt: int, executor_id: str) -> bool:
        """Record that an attempt started; a final execution stays final."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE executions SET status = %s, attempt = %s, executor_id = %s,"
                " started_at = coalesce(started_at, now())"
                " WHERE id = %s AND status IN (%s, %s)",
                (
                    statuses.RUNNING,
                    attempt,
                    executor_id or None,
                    uuid.UUID(execution_id),
                    *statuses.OPEN,
                ),
            )
            return cursor.rowcount == 1

    async def mark_retrying(self, execution_id: str, error: str) -> None:
        """An attempt failed for our reasons and will be tried again: QUEUED, with why."""
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE executions SET status = %s, last_error = %s"
                " WHERE id = %s AND status IN (%s, %s)",
                (statuses.QUEUED, error, uuid.UUID(execution_id), *statuses.OPEN),
            )

    async def finish(
        self, execution_id: str, attempt: int, result: execution_pb2.ExecutionResult
    ) -> str | None:
        """Store the final result once: the execution's tenant, or None when it was
        already final."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE executions SET status = %s, attempt = greatest(attempt, %s), result = %s,"
                " finished_at = now() WHERE id = %s AND status IN (%s, %s) RETURNING tenant",
                (
                    statuses.to_name(result.status),
                    attempt,
                    result.SerializeToString(),
                    uuid.UUID(execution_id),
                    *statuses.OPEN,
                ),
            )
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def _close_where(
        self, condition: str, params: tuple[Any, ...], result: execution_pb2.ExecutionResult
    ) -> list[Closed]:
        async with self._pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "UPDATE executions SET status = %s, result = %s, finished_at = now()"
                f" WHERE status IN (%s, %s) AND {condition} RETURNING {_COLUMNS}",
                (
                    statuses.to_name(result.status),
                    result.SerializeToString(),
                    *statuses.OPEN,
                    *params,
                ),
            )
            rows = await cursor.fetchall()
        return [Closed(_to_proto(row), row["job_seq"]) for row in rows]

    async def cancel(self, tenant: str, execution_id: str) -> Closed | None:
        """Close an open execution of `tenant` as CANCELLED; None when not open or unknown."""
        key = parse_id(execution_id)
        if key is None:
            return None
        closed = await self._close_where(
            "id = %s AND tenant = %s",
            (key, tenant),
            results.closed(execution_pb2.EXECUTION_STATUS_CANCELLED, "cancelled by the caller"),
        )
        return closed[0] if closed else None

    async def expire_overdue(self) -> list[Closed]:
        """Close every job still queued past its deadline as EXPIRED."""
        return await self._close_where(
            "status = 'QUEUED' AND deadline < now()",
            (),
            results.closed(
                execution_pb2.EXECUTION_STATUS_EXPIRED,
                "the deadline passed while it was queued; it never ran",
                execution_pb2.ERROR_CODE_TIME,
            ),
        )

    async def reap_stuck(self, margin_s: float) -> list[Closed]:
        """Close runs still RUNNING past their deadline plus a margin: nothing runs forever."""
        return await self._close_where(
            "status = 'RUNNING' AND deadline + make_interval(secs => %s) < now()",
            (margin_s,),
            results.closed(
                execution_pb2.EXECUTION_STATUS_SYSTEM_ERROR,
                "the run outlived its deadline without a result; its executor was lost",
                execution_pb2.ERROR_CODE_SYSTEM,
            ),
        )

    async def requeue_runs_of(self, executor_id: str) -> list[str]:
        """Put the RUNNING executions of a lost executor back to QUEUED: JetStream redelivers
        their jobs after ack_wait, to whichever executor pulls next."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE executions SET status = %s, last_error = 'executor ' || executor_id"
                " || ' went silent during attempt ' || attempt"
                " WHERE status = %s AND executor_id = %s RETURNING id::text",
                (statuses.QUEUED, statuses.RUNNING, executor_id),
            )
            return [row[0] for row in await cursor.fetchall()]

    async def queued_by_lane(self) -> dict[str, tuple[int, float]]:
        """Per lane: executions queued, and the age in seconds of the oldest of them."""
        depth = {lane: (0, 0.0) for lane in subjects.LANES}
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT priority, count(*), extract(epoch FROM now() - min(created_at))"
                " FROM executions WHERE status = %s GROUP BY priority",
                (statuses.QUEUED,),
            )
            for lane, count, oldest in await cursor.fetchall():
                depth[lane] = (int(count), float(oldest))
        return depth

    async def lane_counts(self) -> dict[str, tuple[int, float]]:
        """Per lane: executions running now, and executions finished per second lately."""
        async with self._pool.connection(timeout=deadlines.timeout()) as conn:
            cursor = await conn.execute(
                "SELECT priority, count(*) FILTER (WHERE status = %s),"
                " count(*) FILTER (WHERE finished_at > now() - interval '60 seconds') / 60.0"
                " FROM executions WHERE status = %s"
                " OR finished_at > now() - interval '60 seconds' GROUP BY priority",
                (statuses.RUNNING, statuses.RUNNING),
            )
            return {row[0]: (int(row[1]), float(row[2])) for row in await cursor.fetchall()}

    async def dead_letter(self, execution_id: str, reason: str, deliveries: int) -> Closed | None:
        """Record a job that exhausted its deliveries and close it as SYSTEM_ERROR."""
        key = parse_id(execution_id)
        if key is None:
            return None
        closed = await self._close_where(
            "id = %s",
            (key,),
            results.closed(
                execution_pb2.EXECUTION_STATUS_SYSTEM_ERROR,
                f"moved to the dead-letter store: {reason}",
                execution_pb2.ERROR_CODE_SYSTEM,
            ),
        )
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO dead_letters (id, execution_id, tenant, reason, last_error,"
                " deliveries) SELECT %s, id, tenant, %s, last_error, %s FROM executions"
                " WHERE id = %s"
                " ON CONFLICT (execution_id) DO NOTHING",
                (uuid.uuid4(), reason, deliveries, key),
            )
        return closed[0] if closed else None

    async def list_dead_letters(
        self, tenant: str, page_size: int, page_token: str
    ) -> tuple[list[scheduler_pb2.DeadLetter], str]:
        """A page of `tenant`'s dead letters, newest first, and the next page's token."""
        after = decode_page_token(page_token) if page_token else None
        async with self._pool.connection(timeout=deadlines.timeout()) as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "SELECT d.*, e.request FROM dead_letters d JOIN executions e"
                " ON e.id = d.execution_id WHERE d.tenant = %s"
                " AND (%s::timestamptz IS NULL OR (d.created_at, d.id) < (%s, %s))"
                " ORDER BY d.created_at DESC, d.id DESC LIMIT %s",
                (tenant, after and after[0], after and after[0], after and after[1], page_size + 1),
            )
            rows = await cursor.fetchall()
        letters = []
        for row in rows[:page_size]:
            letter = scheduler_pb2.DeadLetter(
                id=str(row["id"]),
                execution_id=str(row["execution_id"]),
                tenant=row["tenant"],
                reason=row["reason"],
                last_error=row["last_error"],
                deliveries=row["deliveries"],
            )
            letter.request.ParseFromString(row["request"])
            letter.created_at.FromDatetime(row["created_at"])
            if row["replayed_at"] is not None:
                letter.replayed_at.FromDatetime(row["replayed_at"])
            letters.append(letter)
        letters = _within_budget(letters)
        return letters, _next_token(rows, len(letters))

    async def dead_letter_request(
        self, tenant: str, dead_letter_id: str
    ) -> execution_pb2.ExecutionRequest | None:
        """The request of `tenant`'s dead letter not yet replayed; None otherwise."""
        key = parse_id(dead_letter_id)
        if key is None:
            return None
        async with self._pool.connection(timeout=deadlines.timeout()) as conn:
            cursor = await conn.execute(
                "SELECT e.request FROM dead_letters d JOIN executions e ON e.id = d.execution_id"
                " WHERE d.id = %s AND d.tenant = %s AND d.replayed_at IS NULL",
                (key, tenant),
            )
            row = await cursor.fetchone()
        return None if row is None else execution_pb2.ExecutionRequest.FromString(row[0])

    async def mark_replayed(self, dead_letter_id: str, execution_id: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "UPDATE dead_letters SET replayed_at = now(), replay_execution_id = %s"
                " WHERE id = %s",
                (uuid.UUID(execution_id), uuid.UUID(dead_letter_id)),
            )
