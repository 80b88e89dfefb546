"""Executor settings, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sandmesh_runtime.settings import env


@dataclass(frozen=True)
class ExecutorSettings:
    port: int = env("SANDMESH_EXECUTOR_PORT", 50053, "gRPC port")
    concurrency: int = env(
        "SANDMESH_EXECUTOR_CONCURRENCY", os.cpu_count() or 1, "runs at a time; jobs pulled at most"
    )
    executor_id: str = env("SANDMESH_EXECUTOR_ID", "", "name in results; default host-pid")
    warm_pool_size: int = env(
        "SANDMESH_WARM_POOL_SIZE", 1, "pre-started sandboxes per interpreted language; 0 disables"
    )
    languages_file: str = env(
        "SANDMESH_LANGUAGES_FILE", "", "language registry to use instead of the built-in one"
    )
    report_timeout_s: float = env(
        "SANDMESH_REPORT_TIMEOUT_S",
        60.0,
        "bound on storing a run's output and on publishing its result, each; past it the"
        " slot is freed and the job handed back",
    )
    heartbeat_interval_s: float = env(
        "SANDMESH_HEARTBEAT_INTERVAL_S", 2.0, "how often it announces itself to the scheduler"
    )
