"""`sandmesh-scheduler`: settings from the environment, then serve."""

from __future__ import annotations

from sandmesh_runtime import bootstrap
from services.scheduler.service import Scheduler
from services.scheduler.settings import SchedulerSettings

main = bootstrap.entry_point("scheduler", Scheduler, SchedulerSettings)

if __name__ == "__main__":
    main()
