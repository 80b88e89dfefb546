"""Gateway settings, from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from sandmesh_runtime.settings import env


@dataclass(frozen=True)
class GatewaySettings:
    port: int = env("SANDMESH_GATEWAY_PORT", 50051, "gRPC port")
    scheduler_target: str = env("SANDMESH_SCHEDULER_TARGET", "127.0.0.1:50052", "scheduler")
    browser_pool_target: str = env(
        "SANDMESH_BROWSER_POOL_TARGET", "127.0.0.1:50054", "the browser pool"
    )
    executor_target: str = env(
        "SANDMESH_EXECUTOR_TARGET", "127.0.0.1:50053", "any executor (languages)"
    )
    auth_disabled: bool = env(
        "SANDMESH_AUTH_DISABLED", False, "development only: every caller is tenant 'default'"
    )
    free_rate_per_s: float = env("SANDMESH_FREE_RATE_PER_S", 2.0, "free tier: submissions/s")
    free_burst: float = env("SANDMESH_FREE_BURST", 10.0, "free tier: burst of submissions")
    pro_rate_per_s: float = env("SANDMESH_PRO_RATE_PER_S", 50.0, "pro tier: submissions/s")
    pro_burst: float = env("SANDMESH_PRO_BURST", 100.0, "pro tier: burst of submissions")
    breaker_cooldown_s: float = env(
        "SANDMESH_BREAKER_COOLDOWN_S", 5.0, "how long an open breaker refuses before a trial"
    )
    max_request_bytes: int = env(
        "SANDMESH_MAX_REQUEST_BYTES", 768 * 1024, "source + files + stdin of one execution"
    )
    session_runs_per_minute: float = env(
        "SANDMESH_SESSION_RUNS_PER_MINUTE", 10.0, "runs one session may start a minute"
    )
    max_source_bytes: int = env("SANDMESH_MAX_SOURCE_BYTES", 256 * 1024, "largest source")
    downstream_timeout_s: float = env(
        "SANDMESH_DOWNSTREAM_TIMEOUT_S", 10.0, "longest call to a downstream service"
    )
