"""Browser pool settings, from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from sandmesh_runtime.settings import env

_P = "SANDMESH_BROWSER_POOL_"


@dataclass(frozen=True)
class BrowserPoolSettings:
    port: int = env(f"{_P}PORT", 50054, "gRPC port")
    chromium_path: str = env(f"{_P}CHROMIUM_PATH", "/usr/bin/chromium", "Chromium executable")
    max_browsers: int = env(f"{_P}MAX_BROWSERS", 2, "Chromium processes at most")
    min_browsers: int = env(f"{_P}MIN_BROWSERS", 1, "Chromium processes kept started")
    pages_per_browser: int = env(f"{_P}PAGES_PER_BROWSER", 3, "concurrent jobs per browser")
    queue_size: int = env(f"{_P}QUEUE_SIZE", 16, "jobs waiting for a page at most")
    recycle_after_jobs: int = env(f"{_P}RECYCLE_AFTER_JOBS", 100, "jobs before a browser retires")
    max_browser_memory_mb: int = env(
        f"{_P}MAX_BROWSER_MEMORY_MB", 768, "process-tree memory (PSS) that retires a browser"
    )
    max_page_memory_mb: int = env(
        f"{_P}MAX_PAGE_MEMORY_MB",
        512,
        "a renderer's resident memory and JavaScript heap at most: past it the page is killed",
    )
    max_memory_percent: float = env(
        f"{_P}MAX_MEMORY_PERCENT", 90.0, "cgroup memory use (of its limit) that refuses jobs"
    )
    max_cpu_percent: float = env(
        f"{_P}MAX_CPU_PERCENT", 95.0, "cgroup CPU use (of its quota) that refuses jobs"
    )
    allowlist: str = env(
        f"{_P}ALLOWLIST", "", "comma-separated hosts and CIDRs exempt from the private-address ban"
    )
    page_timeout_s: float = env(f"{_P}PAGE_TIMEOUT_S", 30.0, "longest a job may take")
    ping_interval_s: float = env(f"{_P}PING_INTERVAL_S", 2.0, "health ping and memory check period")
    ping_timeout_s: float = env(f"{_P}PING_TIMEOUT_S", 3.0, "a browser slower than this is hung")
    launch_timeout_s: float = env(
        f"{_P}LAUNCH_TIMEOUT_S", 20.0, "longest a browser may take to start"
    )
    idle_retire_s: float = env(
        f"{_P}IDLE_RETIRE_S", 60.0, "an idle browser above MIN_BROWSERS retires after this"
    )
    work_dir: str = env(f"{_P}WORK_DIR", "", "browser dirs; keep it short (Chromium's sockets)")
