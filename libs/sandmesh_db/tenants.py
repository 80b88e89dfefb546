"""Tenants, their API keys, the audit log and shared rate buckets, in Postgres."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

TIERS = ("free", "pro")
KEY_PREFIX = "smk_"
# The tokens a bucket row `b` holds now: what it kept, refilled at %(rate)s per second since
# it was last taken from, up to %(burst)s.
_AVAILABLE = "least(%(burst)s, b.tokens + %(rate)s * extract(epoch FROM now() - b.updated_at))"


@dataclass(frozen=True)
class Caller:
    """Who is calling: the tenant and the key it used."""

    tenant: str
    tier: str
    key_id: str | None


@dataclass(frozen=True)
class AuditEntry:
    time: datetime
    tenant: str
    key_id: str
    method: str
    target_id: str
    code: str


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class TenantStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def create_tenant(self, tenant: str, tier: str) -> None:
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO tenants (id, tier) VALUES (%s, %s)"
                " ON CONFLICT (id) DO UPDATE SET tier = excluded.tier",
                (tenant, tier),
            )

    async def create_key(self, tenant: str) -> tuple[str, str]:
        """A new key for `tenant`: (key id, the key). The key is not kept, only its hash."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = uuid.uuid4()
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "INSERT INTO api_keys (id, tenant, key_hash)"
                " SELECT %s, id, %s FROM tenants WHERE id = %s",
                (key_id, hash_key(key), tenant),
            )
            if cursor.rowcount != 1:
                raise LookupError(f"tenant {tenant!r} does not exist")
        return str(key_id), key

    async def revoke_key(self, key_id: str) -> bool:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
                (uuid.UUID(key_id),),
            )
            return cursor.rowcount == 1

    async def caller(self, key: str, wait_s: float) -> Caller | None:
        """The caller a key stands for; None for an unknown or revoked key.

        Raises when Postgres cannot answer: the caller must then be denied (fail closed).
        """
        async with self._pool.connection(timeout=wait_s) as conn:
            cursor = await conn.execute(
                "SELECT k.id, t.id, t.tier FROM api_keys k JOIN tenants t ON t.id = k.tenant"
                " WHERE k.key_hash = %s AND k.revoked_at IS NULL",
                (hash_key(key),),
            )
            row = await cursor.fetchone()
        return None if row is None else Caller(tenant=row[1], tier=row[2], key_id=str(row[0]))

    async def audit(self, caller: Caller, method: str, target_id: str, code: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO audit_log (tenant, key_id, method, target_id, code)"
                " VALUES (%s, %s, %s, %s, %s)",
                (
                    caller.tenant,
                    caller.key_id and uuid.UUID(caller.key_id),
                    method,
                    target_id,
                    code,
                ),
            )

    async def audit_entries(self, tenant: str | None, limit: int) -> list[AuditEntry]:
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT time, tenant, coalesce(key_id::text, ''), method, target_id, code"
                " FROM audit_log WHERE %s::text IS NULL OR tenant = %s"
                " ORDER BY time DESC, id DESC LIMIT %s",
                (tenant, tenant, limit),
            )
            return [AuditEntry(*row) for row in await cursor.fetchall()]

    async def take_token(self, bucket: str, rate: float, burst: float) -> float:
        """Take one token from a bucket shared by every replica.

        Returns 0 when granted, else the seconds until a token will be there.
        """
        params = {"key": bucket, "rate": rate, "burst": burst}
        async with self._pool.connection() as conn:
            # One statement, so the row lock that serialises every submission of a tenant,
            # across replicas, is held for one statement; a refusal leaves the row as it was.
            cursor = await conn.execute(
                "INSERT INTO rate_buckets AS b (key, tokens, updated_at)"
                " VALUES (%(key)s, %(burst)s - 1, now())"
                " ON CONFLICT (key) DO UPDATE SET"
                f" tokens = {_AVAILABLE} - 1, updated_at = now()"
                f" WHERE {_AVAILABLE} >= 1"
                " RETURNING 1",
                params,
            )
            if await cursor.fetchone() is not None:
                return 0.0
            cursor = await conn.execute(
                f"SELECT {_AVAILABLE} FROM rate_buckets AS b WHERE key = %(key)s", params
            )
            row: Any = await cursor.fetchone()
        # A token may have come back since the refusal; the caller retries a moment later.
        return max((1 - float(row[0])) / rate, 0.001)
