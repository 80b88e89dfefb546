"""`sandmesh-executor`: settings from the environment, then serve."""

from __future__ import annotations

import os

# gRPC's fork handlers restart its threads in a fork()ed child, which can abort it before it
# execs. The sandbox spawns through vfork (no preexec_fn, see sandbox/launch.py), which runs
# no handlers; turning them off, before grpc is imported, covers any other fork as well.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from sandmesh_runtime import bootstrap, settings
from services.executor.service import Executor
from services.executor.settings import ExecutorSettings


def main() -> None:
    def build() -> tuple[Executor, int]:
        config = settings.load(ExecutorSettings)
        return Executor(config), config.port

    bootstrap.run("executor", build)


if __name__ == "__main__":
    main()
