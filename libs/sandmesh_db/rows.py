"""Small conversions between database rows and protobuf messages, shared by every store."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from sandmesh_runtime import deadlines


def parse_id(text: str) -> uuid.UUID | None:
    """A row id from a caller's string; None for anything that is not a UUID."""
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def copy_times(message: Message, row: Mapping[str, Any], fields: Iterable[str]) -> None:
    """Set the Timestamp `fields` of `message` from the row's datetimes (NULL stays unset)."""
    for field in fields:
        value = row[field]
        if isinstance(value, datetime):
            getattr(message, field).FromDatetime(value)


async def fetch_one(
    pool: AsyncConnectionPool, query: str, params: tuple[Any, ...]
) -> dict[str, Any] | None:
    """The first row of `query` as a dict, or None; the wait for a connection ends with the
    caller's deadline."""
    async with pool.connection(timeout=deadlines.timeout()) as conn:
        cursor = conn.cursor(row_factory=dict_row)
        await cursor.execute(query, params)
        return await cursor.fetchone()
