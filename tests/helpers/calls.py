"""Small readings the tests take of calls and of the database."""

from __future__ import annotations

import grpc
import psycopg


async def code_of(call: object) -> grpc.StatusCode:
    """The status code a call ends with (OK when it succeeds)."""
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def count_executions(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        row = await (await conn.execute("SELECT count(*) FROM executions")).fetchone()
    assert row is not None
    return int(row[0])
