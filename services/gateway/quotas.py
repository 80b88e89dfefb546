"""The tenant's rate limits: token buckets in Postgres, shared by every gateway replica.

When the buckets cannot be read the call is denied (UNAVAILABLE), never let through: the
limit fails closed, like authentication.
"""

from __future__ import annotations

from sandmesh_db.tenants import TenantStore
from sandmesh_runtime import errors
from services.gateway import auth
from services.gateway.settings import GatewaySettings


class Quotas:
    def __init__(self, tenants: TenantStore, settings: GatewaySettings) -> None:
        self._tenants = tenants
        self._settings = settings

    def _rate(self) -> tuple[float, float]:
        if auth.current().tier == "pro":
            return self._settings.pro_rate_per_s, self._settings.pro_burst
        return self._settings.free_rate_per_s, self._settings.free_burst

    async def _take(self, bucket: str, rate: float, burst: float) -> float:
        try:
            return await self._tenants.take_token(bucket, rate, burst)
        except Exception as exc:
            raise errors.Unavailable("the rate limiter is unavailable; denied") from exc

    async def wait(self, kind: str = "submit") -> float:
        """Take a `kind` token from the caller's tenant's bucket: 0 when granted, else the
        seconds until one is there."""
        rate, burst = self._rate()
        return await self._take(f"{kind}:{auth.current().tenant}", rate, burst)

    async def take(self, kind: str = "submit") -> None:
        """The tenant's rate limit: over it, RESOURCE_EXHAUSTED with when to come back."""
        caller = auth.current()
        rate, burst = self._rate()
        wait_s = await self.wait(kind)
        if wait_s > 0:
            raise errors.QuotaExceeded(
                f"tenant {caller.tenant!r} is over its {caller.tier} rate of {rate:g}"
                f" submissions per second",
                f"tenant:{caller.tenant}",
                f"{rate:g} submissions per second, bursts of {burst:g}",
                wait_s,
            )

    async def take_session_run(self, session_id: str) -> None:
        """A session's own limit on runs a minute, beside the tenant's."""
        per_minute = self._settings.session_runs_per_minute
        wait_s = await self._take(f"session:{session_id}", per_minute / 60.0, per_minute)
        if wait_s > 0:
            raise errors.QuotaExceeded(
                f"session {session_id} is over its {per_minute:g} runs a minute",
                f"session:{session_id}",
                f"{per_minute:g} runs a minute",
                wait_s,
            )
