"""Scheduler settings, from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from sandmesh_runtime.settings import env


@dataclass(frozen=True)
class SchedulerSettings:
    port: int = env("SANDMESH_SCHEDULER_PORT", 50052, "gRPC port")
    database_url: str = env(
        "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/sandmesh", "Postgres, the record"
    )
    nats_url: str = env("NATS_URL", "nats://127.0.0.1:4222", "NATS with JetStream")
    queue_ttl_s: float = env(
        "SANDMESH_QUEUE_TTL_S", 600.0, "deadline of a job whose caller gave none"
    )
