"""`sandmesh-executor`: settings from the environment, then serve."""

from __future__ import annotations

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
