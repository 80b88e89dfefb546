"""`sandmesh-browser-pool`: settings from the environment, then serve."""

from __future__ import annotations

from sandmesh_runtime import bootstrap
from services.browser_pool.service import BrowserPool
from services.browser_pool.settings import BrowserPoolSettings

main = bootstrap.entry_point("browser-pool", BrowserPool, BrowserPoolSettings)

if __name__ == "__main__":
    main()
