"""The gateway as the bootstrap runs it: its downstream channels and servicer."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from sandmesh.browser.v1 import browser_pb2_grpc
from sandmesh.executor.v1 import executor_pb2_grpc
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh.scheduler.v1 import scheduler_pb2_grpc
from sandmesh_db import pool as db_pool
from sandmesh_db.tenants import TenantStore
from sandmesh_queue.connection import Queue
from sandmesh_queue.streams import QueueSettings
from sandmesh_runtime import clients
from sandmesh_runtime.health import Check
from sandmesh_runtime.interceptors import CallHook
from sandmesh_runtime.settings import load
from sandmesh_runtime.tasks import TaskGroup
from services.gateway.auth import Authenticator
from services.gateway.languages import LanguageCatalog
from services.gateway.quotas import Quotas
from services.gateway.server import GatewayServicer
from services.gateway.sessions import SessionStore
from services.gateway.settings import GatewaySettings


class Gateway:
    name = "gateway"

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.queue = Queue("sandmesh-gateway", load(QueueSettings))
        self.pool = db_pool.new_pool(load(db_pool.DatabaseSettings).url)
        self.tenants = TenantStore(self.pool)
        self.authenticator = Authenticator(self.tenants, settings.auth_disabled)
        self.tasks = TaskGroup()
        self.scheduler_channel: grpc.aio.Channel | None = None
        self.executor_channel: grpc.aio.Channel | None = None
        self.browser_channel: grpc.aio.Channel | None = None

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        # Reads are idempotent, so the channel retries them; writes are never retried here.
        self.scheduler_channel = clients.channel(
            self.settings.scheduler_target,
            clients.retry_config(
                "sandmesh.scheduler.v1.SchedulerService", ["GetExecution", "ListDeadLetters"]
            ),
        )
        self.executor_channel = clients.channel(
            self.settings.executor_target,
            clients.retry_config(
                "sandmesh.executor.v1.ExecutorService", ["ListLanguages", "GetLanguage"]
            ),
        )
        # Browser jobs are not idempotent for the caller's quota, so they are not retried.
        self.browser_channel = clients.channel(self.settings.browser_pool_target)
        servicer = GatewayServicer(
            scheduler_pb2_grpc.SchedulerServiceStub(self.scheduler_channel),
            browser_pb2_grpc.BrowserPoolServiceStub(self.browser_channel),
            LanguageCatalog(executor_pb2_grpc.ExecutorServiceStub(self.executor_channel)),
            Quotas(self.tenants, self.settings),
            SessionStore(self.pool),
            self.queue,
            self.settings,
        )
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
        return [gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name]

    def checks(self) -> Sequence[Check]:
        # The scheduler is left out on purpose: a gateway that went unready with it would take
        # every replica out of the load balancer at once, when it should answer UNAVAILABLE.
        return [Check("nats", self.queue.ping), Check("postgres", lambda: db_pool.ping(self.pool))]

    def hooks(self) -> Sequence[CallHook]:
        return [self.authenticator.hook]

    async def start(self) -> None:
        await self.pool.open(wait=False)
        self.tasks.supervise("nats", self._connect, forever=False)

    async def _connect(self) -> None:
        await self.queue.ready()

    async def stop(self) -> None:
        await self.tasks.stop()
        await self.queue.close()
        await self.pool.close()
        for channel in (self.scheduler_channel, self.executor_channel, self.browser_channel):
            if channel is not None:
                await channel.close()
