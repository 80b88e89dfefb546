"""Scheduler settings, from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from sandmesh_runtime.settings import env


@dataclass(frozen=True)
class SchedulerSettings:
    port: int = env("SANDMESH_SCHEDULER_PORT", 50052, "gRPC port")
    max_queued_per_tenant: int = env(
        "SANDMESH_MAX_QUEUED_PER_TENANT", 1000, "open (queued or running) executions per tenant"
    )
    max_queued: int = env("SANDMESH_MAX_QUEUED", 10000, "queued executions in all")
    free_max_running: int = env(
        "SANDMESH_FREE_MAX_RUNNING", 1, "free tier: executions of one tenant handed to executors"
    )
    pro_max_running: int = env(
        "SANDMESH_PRO_MAX_RUNNING", 8, "pro tier: executions of one tenant handed to executors"
    )
    sweep_interval_s: float = env(
        "SANDMESH_SWEEP_INTERVAL_S", 1.0, "how often expired and stuck executions are closed"
    )
    executor_silence_s: float = env(
        "SANDMESH_EXECUTOR_SILENCE_S", 6.0, "an executor unheard this long is presumed dead"
    )
    stuck_margin_s: float = env(
        "SANDMESH_STUCK_MARGIN_S", 30.0, "how long past its deadline a run may stay RUNNING"
    )
