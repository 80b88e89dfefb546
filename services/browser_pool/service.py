"""The browser pool as the bootstrap runs it.

Its operations answer UNIMPLEMENTED (the generated servicer's default) until the pool
itself is built; the service already serves health and reflection like the others.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from sandmesh.browser.v1 import browser_pb2, browser_pb2_grpc
from sandmesh_runtime.health import Check
from services.browser_pool.settings import BrowserPoolSettings


class BrowserPool:
    name = "browser-pool"

    def __init__(self, settings: BrowserPoolSettings) -> None:
        self.settings = settings

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        # The generated base answers UNIMPLEMENTED for every RPC; the stubs call it abstract.
        servicer = browser_pb2_grpc.BrowserPoolServiceServicer()  # type: ignore[abstract]
        browser_pb2_grpc.add_BrowserPoolServiceServicer_to_server(servicer, server)
        return [browser_pb2.DESCRIPTOR.services_by_name["BrowserPoolService"].full_name]

    def checks(self) -> Sequence[Check]:
        return []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
