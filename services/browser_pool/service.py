"""The browser pool as the bootstrap runs it: the pool, its servicer and its readiness."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import grpc

from sandmesh.browser.v1 import browser_pb2, browser_pb2_grpc
from sandmesh_runtime import metrics
from sandmesh_runtime.health import Check
from services.browser_pool.pool import Pool, Stats
from services.browser_pool.server import BrowserPoolServicer
from services.browser_pool.settings import BrowserPoolSettings
from services.browser_pool.url_policy import Allowlist, UrlPolicy


class BrowserPool:
    name = "browser-pool"

    def __init__(self, settings: BrowserPoolSettings) -> None:
        self.settings = settings
        self.pool = Pool(settings, UrlPolicy(Allowlist.parse(settings.allowlist)))

    def _export_stats(self) -> None:
        """Pool occupancy as gauges, read from the pool whenever they are scraped."""
        for field in dataclasses.fields(Stats):
            metrics.BROWSER_POOL.labels(field.name).set_function(
                functools.partial(self._stat, field.name)
            )

    def _stat(self, name: str) -> float:
        return float(getattr(self.pool.stats(), name))

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        browser_pb2_grpc.add_BrowserPoolServiceServicer_to_server(
            BrowserPoolServicer(self.pool), server
        )
        return [browser_pb2.DESCRIPTOR.services_by_name["BrowserPoolService"].full_name]

    def checks(self) -> Sequence[Check]:
        # Ready only while a live browser answers and the cgroup is not under pressure.
        return [Check("browser", self.pool.live_browser), Check("pressure", self._pressure)]

    async def _pressure(self) -> None:
        self.pool.pressure_ok()

    async def start(self) -> None:
        await self.pool.start()
        self._export_stats()

    async def stop(self) -> None:
        await self.pool.stop()
