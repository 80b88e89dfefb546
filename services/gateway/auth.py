"""API-key authentication, tenant context and the audit trail, as one call hook.

Every public call names its tenant through its key; the policy check fails closed, so a
key that cannot be verified (Postgres away) is refused, never waved through.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from sandmesh_db.tenants import Caller, TenantStore
from sandmesh_runtime import errors
from sandmesh_runtime.interceptors import call_status

log = logging.getLogger("sandmesh.gateway")

# Calls that change something are written to the audit log.
MUTATING = frozenset(
    f"/sandmesh.gateway.v1.GatewayService/{name}"
    for name in (
        "SubmitExecution",
        "RunExecution",
        "CancelExecution",
        "SubmitBatch",
        "CreateSession",
        "UpdateSessionSource",
        "CloseSession",
        "RunSession",
        "ReplayDeadLetter",
    )
)
DEVELOPMENT_CALLER = Caller(tenant="default", tier="pro", key_id=None)
VERIFY_WAIT_S = 1.0

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller")
_target: contextvars.ContextVar[str] = contextvars.ContextVar("audit_target", default="")


def current() -> Caller:
    """The authenticated caller of the call being served."""
    return _caller.get()


def note_target(target_id: str) -> None:
    """Name the object a mutating call acted on, for its audit entry."""
    _target.set(target_id)


def _bearer(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip() or None
    return None


class Authenticator:
    def __init__(self, store: TenantStore, disabled: bool) -> None:
        self._store = store
        self._disabled = disabled
        # Lookups in flight by key: calls arriving together with one key share one query
        # (500 watchers of a run make one, not 500), and none outlives its answer.
        self._lookups: dict[str, asyncio.Future[Caller | None]] = {}
        if disabled:
            log.warning(
                "AUTHENTICATION IS DISABLED: every caller acts as tenant 'default'."
                " Never run like this outside a developer's machine."
            )

    async def _identify(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        if self._disabled:
            return DEVELOPMENT_CALLER
        key = _bearer(context)
        if key is None:
            raise errors.Unauthenticated(
                "missing API key: send the metadata 'authorization: Bearer <key>'",
            )
        try:
            caller = await self._lookup(key)
        except Exception as exc:
            log.warning("cannot verify API keys; denying", extra={"error": str(exc)})
            raise errors.Unavailable("the API key cannot be verified now; denied") from exc
        if caller is None:
            raise errors.Unauthenticated("unknown or revoked API key")
        return caller

    async def _lookup(self, key: str) -> Caller | None:
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(self._store.caller(key, VERIFY_WAIT_S))
            self._lookups[key] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(key, None))
        # Shielded: one caller going away must not cancel the answer the others wait for.
        return await asyncio.shield(lookup)

    @contextlib.asynccontextmanager
    async def hook(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        """Call hook: authenticate, expose the caller, and audit mutating calls."""
        if not method.startswith("/sandmesh."):
            yield
            return
        caller = await self._identify(context)
        # Not reset afterwards, as in deadlines.deadline_hook: the call's context is its own.
        _caller.set(caller)
        _target.set("")
        try:
            yield
        finally:
            if method in MUTATING:
                try:
                    await self._store.audit(
                        caller, method.rsplit("/", 1)[1], _target.get(), call_status().name
                    )
                except Exception:
                    log.exception("audit entry lost", extra={"method": method})
