"""The scheduler as the bootstrap runs it: its dependencies, servicer and consumers."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from sandmesh.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from sandmesh_db import pool as db_pool
from sandmesh_queue.connection import Queue
from sandmesh_runtime.health import Check
from sandmesh_runtime.tasks import TaskGroup
from services.scheduler import consumers
from services.scheduler.server import SchedulerServicer
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import ExecutionStore


class Scheduler:
    name = "scheduler"

    def __init__(self, settings: SchedulerSettings) -> None:
        self.settings = settings
        self.pool = db_pool.new_pool(settings.database_url)
        self.queue = Queue(settings.nats_url, "sandmesh-scheduler")
        self.store = ExecutionStore(self.pool)
        self.tasks = TaskGroup()

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        # RPCs not written yet fall through to the generated base: UNIMPLEMENTED.
        servicer = SchedulerServicer(self.store, self.queue, self.settings)  # type: ignore[abstract]
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, server)
        return [scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name]

    def checks(self) -> Sequence[Check]:
        return [Check("postgres", lambda: db_pool.ping(self.pool)), Check("nats", self.queue.ping)]

    async def start(self) -> None:
        await self.pool.open(wait=False)
        self.tasks.supervise("results", lambda: consumers.store_results(self.queue, self.store))
        self.tasks.supervise("status", lambda: consumers.record_status(self.queue, self.store))

    async def stop(self) -> None:
        await self.tasks.stop()
        await self.queue.close()
        await self.pool.close()
