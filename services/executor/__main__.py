"""`sandmesh-executor`: settings from the environment, then serve."""

from __future__ import annotations

import os

# gRPC's fork handlers restart its threads in a fork()ed child, which can abort it before it
# execs. The sandbox spawns through vfork (no preexec_fn, see sandbox/launch.py), which runs
# no handlers; turning them off, before grpc is imported, covers any other fork as well.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from sandmesh_runtime import bootstrap
from services.executor.service import Executor
from services.executor.settings import ExecutorSettings

main = bootstrap.entry_point("executor", Executor, ExecutorSettings)

if __name__ == "__main__":
    main()
