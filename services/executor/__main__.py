"""`sandmesh-executor`: settings from the environment, then serve."""

from __future__ import annotations

import os

# The sandbox forks with a preexec step while gRPC's threads run; gRPC's own fork handlers
# then abort one child in a few dozen under load. They must be off before grpc is imported.
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
