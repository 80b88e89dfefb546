"""`sandmesh-scheduler`: settings from the environment, then serve."""

from __future__ import annotations

from sandmesh_runtime import bootstrap, settings
from services.scheduler.service import Scheduler
from services.scheduler.settings import SchedulerSettings


def main() -> None:
    def build() -> tuple[Scheduler, int]:
        config = settings.load(SchedulerSettings)
        return Scheduler(config), config.port

    bootstrap.run("scheduler", build)


if __name__ == "__main__":
    main()
