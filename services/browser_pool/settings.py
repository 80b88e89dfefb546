"""Browser pool settings, from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from sandmesh_runtime.settings import env


@dataclass(frozen=True)
class BrowserPoolSettings:
    port: int = env("SANDMESH_BROWSER_POOL_PORT", 50054, "gRPC port")
