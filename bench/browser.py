"""Bench 5: a screenshot of a local page through the warm browser pool vs plain Playwright.

Baselines: Playwright launching Chromium for every job, and Playwright with one browser
launched up front and a fresh context per job (what the pool does inside). All three use
the same Debian Chromium, viewport, page and wait (the load event), interleaved job by job.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from playwright.async_api import Browser, Playwright, async_playwright
from playwright.async_api import Error as PlaywrightError

from bench.common import Ratio, Result, Size, Stack, ratio, summarize_ms
from sandmesh.browser.v1 import browser_pb2, browser_pb2_grpc
from sandmesh_devstack.mesh import ServiceProcess, health_status
from sandmesh_devstack.ports import free_port

NAME = "browser"
RUNS = {Size.FULL: 50, Size.TINY: 2}
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = (1280, 720)
JOB_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 60.0
PAGE = b"""<!doctype html><html><head><title>bench</title></head>
<body style="font-family:sans-serif"><h1>Sandmesh bench</h1><p>A local page.</p></body></html>"""

POOL = "browser pool (warm)"
PER_JOB = "Playwright, launch per job"
SHARED = "Playwright, one pre-launched browser"


@contextmanager
def _page_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per screenshot would drown the tables

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def _pool(stack: Stack) -> Iterator[str]:
    """The browser-pool service alone: it needs no NATS or Postgres."""
    port = free_port()
    env = {
        **os.environ,
        "SANDMESH_HOST": "127.0.0.1",
        "SANDMESH_BROWSER_POOL_PORT": str(port),
        # The page is on loopback, which the pool's URL policy bans unless allowlisted.
        "SANDMESH_BROWSER_POOL_ALLOWLIST": "127.0.0.1",
        "SANDMESH_BROWSER_POOL_CHROMIUM_PATH": CHROMIUM,
        "PYTHONUNBUFFERED": "1",
    }
    service = ServiceProcess("browser-pool", port, env, stack.base / "browser-pool.log")
    service.start()
    try:
        stop_at = time.monotonic() + READY_TIMEOUT_S
        while health_status(service.target, "readiness") != "SERVING":
            if service.exit_code() is not None or time.monotonic() > stop_at:
                raise RuntimeError(f"browser pool did not become ready; see {service.log_path}")
            time.sleep(0.2)
        yield service.target
    finally:
        service.stop()


async def _launch(playwright: Playwright) -> Browser:
    return await playwright.chromium.launch(
        executable_path=CHROMIUM, args=FLAGS, headless=True, timeout=JOB_TIMEOUT_S * 1000
    )


async def _shot(browser: Browser, url: str) -> None:
    width, height = VIEWPORT
    context = await browser.new_context(viewport={"width": width, "height": height})
    try:
        page = await context.new_page()
        await page.goto(url, wait_until="load", timeout=JOB_TIMEOUT_S * 1000)
        image = await page.screenshot(type="png")
    finally:
        await context.close()
    if not image.startswith(b"\x89PNG"):
        raise RuntimeError("Playwright returned something other than a PNG")


async def _measure(
    target: str, url: str, runs: int
) -> tuple[dict[str, list[float]], dict[str, str], int]:
    """Samples per series, series that could not run (with why), and the error count."""
    samples: dict[str, list[float]] = {POOL: [], PER_JOB: [], SHARED: []}
    unavailable: dict[str, str] = {}
    errors = 0
    width, height = VIEWPORT
    request = browser_pb2.ScreenshotRequest(
        page=browser_pb2.PageOptions(
            url=url,
            wait_until=browser_pb2.WAIT_UNTIL_LOAD,
            viewport=browser_pb2.Viewport(width=width, height=height),
        ),
        format=browser_pb2.IMAGE_FORMAT_PNG,
    )
    async with grpc.aio.insecure_channel(target) as channel, async_playwright() as playwright:
        stub = browser_pb2_grpc.BrowserPoolServiceStub(channel)
        shared = await _launch(playwright)

        async def pool_job() -> None:
            response = await stub.Screenshot(request, timeout=JOB_TIMEOUT_S)
            if not response.image.startswith(b"\x89PNG"):
                raise RuntimeError("the pool returned something other than a PNG")

        async def per_job() -> None:
            browser = await _launch(playwright)
            try:
                await _shot(browser, url)
            finally:
                await browser.close()

        series: dict[str, Callable[[], Awaitable[None]]] = {
            POOL: pool_job,
            PER_JOB: per_job,
            SHARED: lambda: _shot(shared, url),
        }
        try:
            # One untimed job each: the pool's first page and Playwright's driver warm up.
            for label, body in series.items():
                try:
                    await body()
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                        raise
                    unavailable[label] = f"not available: {error.code().name}"
            for _ in range(runs):
                for label, body in series.items():
                    if label in unavailable:
                        continue
                    started = time.perf_counter()
                    try:
                        await body()
                    except (grpc.RpcError, PlaywrightError, RuntimeError, TimeoutError):
                        errors += 1
                        continue
                    samples[label].append(time.perf_counter() - started)
        finally:
            await shared.close()
    return samples, unavailable, errors


def run(stack: Stack, size: Size) -> Result:
    runs = RUNS[size]
    result = Result(
        name=NAME,
        title="screenshot of a local page (PNG, 1280x720), ms",
        config={"runs_per_series": runs, "chromium": CHROMIUM, "flags": FLAGS},
        columns=["series", "runs", "p50", "p95", "p99", "mean"],
    )
    with _page_server() as url, _pool(stack) as target:
        samples, unavailable, errors = asyncio.run(_measure(target, url, runs))
    result.errors = errors
    summaries = {label: summarize_ms(s) for label, s in samples.items()}
    for label, s in summaries.items():
        if label in unavailable:
            result.rows.append([label, unavailable[label], None, None, None, None])
        else:
            row = [s.get(k) for k in ("p50", "p95", "p99", "mean")]
            result.rows.append([label, s["count"], *row])
    p50 = {label: float(s.get("p50", 0)) for label, s in summaries.items()}
    result.ratios = [
        Ratio("pool/launch-per-job p50", ratio(p50[POOL], p50[PER_JOB]), "lower is better"),
        Ratio("pool/pre-launched p50", ratio(p50[POOL], p50[SHARED]), "the pool's own overhead"),
        Ratio(
            "pre-launched/launch-per-job p50",
            ratio(p50[SHARED], p50[PER_JOB]),
            "what keeping a browser saves",
        ),
    ]
    result.data = {"summaries_ms": summaries, "unavailable": unavailable}
    return result
