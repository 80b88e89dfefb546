"""The scheduler as the bootstrap runs it: its dependencies, servicer and background work."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import grpc

from sandmesh.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from sandmesh_db import pool as db_pool
from sandmesh_queue.connection import Queue
from sandmesh_queue.streams import QueueSettings
from sandmesh_runtime.health import Check
from sandmesh_runtime.settings import load
from sandmesh_runtime.tasks import TaskGroup
from services.scheduler import consumers
from services.scheduler.lifecycle import Lifecycle
from services.scheduler.registry import Registry
from services.scheduler.server import SchedulerServicer
from services.scheduler.settings import SchedulerSettings
from services.scheduler.store import ExecutionStore, QueueLimits


class Scheduler:
    name = "scheduler"

    def __init__(self, settings: SchedulerSettings) -> None:
        self.settings = settings
        self.pool = db_pool.new_pool(load(db_pool.DatabaseSettings).url)
        self.queue = Queue("sandmesh-scheduler", load(QueueSettings))
        store = ExecutionStore(
            self.pool,
            QueueLimits(
                settings.max_queued_per_tenant,
                settings.max_queued,
                {"free": settings.free_max_running, "pro": settings.pro_max_running},
            ),
        )
        self.lifecycle = Lifecycle(store, self.queue)
        self.registry = Registry(settings.executor_silence_s)
        self.tasks = TaskGroup()

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        servicer = SchedulerServicer(self.lifecycle, self.registry, self.settings)
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, server)
        return [scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name]

    def checks(self) -> Sequence[Check]:
        return [Check("postgres", lambda: db_pool.ping(self.pool)), Check("nats", self.queue.ping)]

    async def start(self) -> None:
        await self.pool.open(wait=False)
        for stream, durable, handler in consumers.CONSUMERS:
            self.tasks.supervise(
                durable,
                functools.partial(
                    consumers.consume, self.queue, stream, durable, handler(self.lifecycle)
                ),
            )
        self.tasks.supervise(
            "sweeper",
            lambda: consumers.sweep(
                self.lifecycle,
                self.registry,
                self.settings.sweep_interval_s,
                self.settings.stuck_margin_s,
            ),
        )
        self.tasks.supervise(
            "executors", lambda: consumers.listen_to_executors(self.queue, self.registry)
        )

    async def stop(self) -> None:
        await self.tasks.stop()
        await self.queue.close()
        await self.pool.close()
