"""`sandmesh-browser-pool`: settings from the environment, then serve."""

from __future__ import annotations

from sandmesh_runtime import bootstrap, settings
from services.browser_pool.service import BrowserPool
from services.browser_pool.settings import BrowserPoolSettings


def main() -> None:
    def build() -> tuple[BrowserPool, int]:
        config = settings.load(BrowserPoolSettings)
        return BrowserPool(config), config.port

    bootstrap.run("browser-pool", build)


if __name__ == "__main__":
    main()
