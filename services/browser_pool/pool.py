"""The pool: bounded browsers and pages, a bounded admission queue, recycling and healing.

Admission hands a free page slot straight to the oldest waiter (no thundering herd). A job
is refused at once when the queue is full or the pool's cgroup is under memory or CPU
pressure; a wait ends at the caller's deadline. Each job gets a fresh browser context that
is closed on every path. A monitor pings every browser, replaces the hung and the crashed,
retires the worn (jobs or memory) and the idle, and reaps orphaned helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from playwright.async_api import BrowserContext, Playwright, async_playwright
from playwright.async_api import Error as PlaywrightError

from sandmesh_runtime import deadlines, errors
from sandmesh_runtime.tasks import TaskGroup
from services.browser_pool import procs
from services.browser_pool.chromium import Chromium
from services.browser_pool.settings import BrowserPoolSettings
from services.browser_pool.url_policy import UrlPolicy

log = logging.getLogger("sandmesh.browser_pool.pool")
T = TypeVar("T")

RETRY_AFTER_S = 1.0
PING_MISSES = 2
# A live driver answers in milliseconds; one that does not within this is presumed dead.
DRIVER_PROBE_S = 3.0
# Closing a context ends its renderers in milliseconds, even one spinning in JavaScript; a
# browser that takes this long (a loaded machine can take a second) is not trusted to.
CONTEXT_CLOSE_S = 5.0
# How often renderers' memory is read: a page can grow by its allocation rate times this
# past its share before it is killed.
RENDERER_WATCH_S = 0.25


class Refused(errors.ResourceExhausted):
    """The pool cannot take the job now; the caller may retry after `retry_after`."""

    def __init__(self, message: str, retry_after: float = RETRY_AFTER_S) -> None:
        super().__init__(message, retry_after=retry_after)


class Stopping(errors.Unavailable):
    """The pool is shutting down."""


class BrowserCrashed(errors.Unavailable):
    """The browser running the job died or hung during it."""


@dataclass(frozen=True)
class Pressure:
    memory_bytes: int
    memory_limit: int | None
    cpu_fraction: float | None

    def refusal(self, settings: BrowserPoolSettings) -> str | None:
        if self.memory_limit:
            used = 100.0 * self.memory_bytes / self.memory_limit
            if used >= settings.max_memory_percent:
                return f"memory at {used:.0f}% of the cgroup limit"
        if self.cpu_fraction is not None and 100 * self.cpu_fraction >= settings.max_cpu_percent:
            return f"CPU at {100 * self.cpu_fraction:.0f}% of the cgroup quota"
        return None


@dataclass(frozen=True)
class Stats:
    browsers: int
    pages_in_use: int
    queue_length: int
    recycles: int
    crashes: int
    memory_bytes: int


@dataclass(frozen=True)
class Job:
    context: BrowserContext
    browser: Chromium


class Pool:
    def __init__(self, settings: BrowserPoolSettings, policy: UrlPolicy) -> None:
        self.settings = settings
        self.policy = policy
        self.browsers: list[Chromium] = []
        self.recycles = 0
        self.crashes = 0
        self._waiters: deque[asyncio.Future[Chromium]] = deque()
        self._launching = 0
        self._playwright: Playwright | None = None
        self._driver_lock = asyncio.Lock()
        self._tasks = TaskGroup()
        self._closers: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._cgroup = procs.Cgroup()
        self._cpu = procs.CpuMeter()
        self._pressure = Pressure(0, None, None)
        self._dir = Path(tempfile.mkdtemp(prefix="sandmesh-pool-", dir=settings.work_dir or None))
        # Browsers run as other uids: they may pass through to their own dirs, not list them.
        self._dir.chmod(0o711)

    # ---- lifecycle

    async def start(self) -> None:
        if not procs.become_subreaper():
            log.warning("cannot become a child subreaper; orphaned helpers go to init")
        self._tasks.supervise("browser-pool-monitor", self._monitor)
        self._tasks.supervise("browser-pool-renderers", self._watch_renderers)

    async def stop(self) -> None:
        self._stopping = True
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(Stopping("the browser pool is stopping"))
        await self._tasks.stop()
        await asyncio.gather(*(self._close(b) for b in list(self.browsers)))
        await asyncio.gather(*self._closers, return_exceptions=True)
        if self._playwright is not None:
            with contextlib.suppress(Exception):
                await self._playwright.stop()
        procs.reap_orphans(set())
        await asyncio.to_thread(shutil.rmtree, self._dir, True)

    # ---- admission

    @property
    def queue_length(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def _free(self) -> Chromium | None:
        limit = self.settings.pages_per_browser
        open_ = [b for b in self.browsers if b.ready and not b.retiring and b.pages < limit]
        return min(open_, key=lambda b: b.pages, default=None)

    async def _acquire(self) -> Chromium:
        if self._stopping:
            raise Stopping("the browser pool is stopping")
        refusal = self._pressure.refusal(self.settings)
        if refusal is not None:
            raise Refused(f"browser pool under pressure: {refusal}", 2 * RETRY_AFTER_S)
        if not self._waiters and (browser := self._free()) is not None:
            browser.pages += 1
            return browser
        if self.queue_length >= self.settings.queue_size:
            raise Refused(f"browser pool queue is full ({self.settings.queue_size} waiting)")
        waiter: asyncio.Future[Chromium] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._grow()
        left = deadlines.time_left()
        try:
            async with asyncio.timeout(left if left is not None else self.settings.page_timeout_s):
                return await waiter
        except BaseException as exc:
            # A slot handed over just as the wait timed out or was cancelled must go back.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release(waiter.result())
            if isinstance(exc, TimeoutError):
                raise errors.DeadlineExceeded(
                    "no browser page became free before the deadline"
                ) from None
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _release(self, browser: Chromium) -> None:
        browser.pages -= 1
        browser.last_used = time.monotonic()
        if not browser.closing:  # a crashed browser is already being replaced
            if browser.jobs >= self.settings.recycle_after_jobs:
                self._retire(browser, f"served {browser.jobs} jobs")
            elif browser.retiring and browser.pages == 0:
                self._retire(browser, "drained")
        self._dispatch()

    def _dispatch(self) -> None:
        while self._waiters:
            browser = self._free()
            if browser is None:
                break
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            browser.pages += 1
            waiter.set_result(browser)
        self._grow()

    def _grow(self) -> None:
        """Start a browser when jobs wait with no free page, or below the minimum."""
        if self._stopping:
            return
        accepting = [b for b in self.browsers if not b.retiring and not b.closing]
        free_pages = (
            sum(max(0, self.settings.pages_per_browser - b.pages) for b in accepting)
            + self._launching * self.settings.pages_per_browser
        )
        wanted = self.queue_length > free_pages or (
            len(accepting) + self._launching < self.settings.min_browsers
        )
        if wanted and len(self.browsers) + self._launching < self.settings.max_browsers:
            self._launching += 1
            task = asyncio.create_task(self._launch(), name="chromium-launch")
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)

    async def _launch(self) -> None:
        browser = Chromium(Path(tempfile.mkdtemp(prefix="b", dir=self._dir)))
        try:
            await browser.launch(
                await self._driver(),
                self.settings.chromium_path,
                self.policy,
                self.settings.launch_timeout_s,
                self.settings.max_page_memory_mb,
            )
        except Exception as exc:
            log.error(
                "chromium failed to start: %s",
                exc,
                extra={"browser": browser.id, "stderr": browser.stderr_tail()},
            )
            await browser.destroy()
            return
        finally:
            self._launching -= 1
        if self._stopping:
            await browser.destroy()
            return
        self.browsers.append(browser)
        watcher = asyncio.create_task(self._on_exit(browser), name=f"chromium-{browser.id}")
        self._closers.add(watcher)
        watcher.add_done_callback(self._closers.discard)
        log.info("browser started", extra={"browser": browser.id, "pid": browser.pid})
        self._dispatch()

    async def _driver(self) -> Playwright:
        """The one Playwright driver (a Node.js process) every browser is driven through.

        A driver that died takes every call through it down with "target closed", browser
        launches included, so each launch first checks that it still answers.
        """
        async with self._driver_lock:
            if self._playwright is not None and not await _answers(self._playwright):
                log.error("the Playwright driver does not answer; starting a new one")
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(DRIVER_PROBE_S):
                        await self._playwright.stop()
                self._playwright = None
            if self._playwright is None:
                self._playwright = await async_playwright().start()
            return self._playwright

    # ---- jobs

    @contextlib.asynccontextmanager
    async def job(self, **context_options: Any) -> AsyncIterator[Job]:
        """A page slot with a fresh browser context, closed whatever happens."""
        browser = await self._acquire()
        browser.jobs += 1
        context: BrowserContext | None = None
        try:
            assert browser.browser is not None
            context = await self.guarded(
                browser,
                browser.browser.new_context(
                    service_workers="block", accept_downloads=False, **context_options
                ),
            )
            yield Job(context, browser)
        except PlaywrightError as exc:
            if await self.died(browser):
                raise BrowserCrashed(
                    "the browser running this job crashed; it is being replaced"
                ) from exc
            raise
        finally:
            # The end of a job must not depend on its call: a cancelled or timed-out call
            # would otherwise leave its page running (an endless script keeps a core busy).
            end = asyncio.create_task(self._end_job(browser, context), name="job-end")
            self._closers.add(end)
            end.add_done_callback(self._closers.discard)
            await asyncio.shield(end)

    async def _end_job(self, browser: Chromium, context: BrowserContext | None) -> None:
        try:
            if context is not None and not browser.exited.is_set():
                async with asyncio.timeout(CONTEXT_CLOSE_S):
                    await context.close()
        except Exception:
            if not browser.exited.is_set():  # a dead browser is being replaced already
                # Which renderer was the job's cannot be asked of a browser that will not
                # close a context: stop them all now, and replace the browser.
                killed = browser.renderers()
                procs.kill_all(killed)
                log.warning(
                    "a context did not close; its browser's renderers were killed",
                    extra={"browser": browser.id, "renderers": killed},
                )
                self._retire(browser, "a context failed to close")
        finally:
            self._release(browser)

    async def guarded(self, browser: Chromium, work: Awaitable[T]) -> T:
        """`work`, abandoned the moment its browser dies.

        Playwright does not always fail a call when Chromium is killed under it; the process
        exit we see ourselves is the signal that cannot be missed.
        """
        task = asyncio.ensure_future(work)
        lost = asyncio.ensure_future(browser.exited.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if task.cancelled():
            raise BrowserCrashed("the browser running this job crashed; it is being replaced")
        return task.result()

    async def died(self, browser: Chromium) -> bool:
        """Whether the job's failure is the browser's death (its exit may lag the error)."""
        if browser.exited.is_set() or (browser.closing and not browser.retiring):
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(browser.exited.wait(), 0.5)
        return browser.exited.is_set()

    # ---- recycling and healing

    def _retire(self, browser: Chromium, reason: str) -> None:
        if browser.closing and not browser.retiring:
            return  # already being replaced after a crash
        if not browser.retiring:
            browser.retiring = True
            self.recycles += 1
            log.info("browser retiring", extra={"browser": browser.id, "reason": reason})
        if browser.pages == 0 and not browser.closing:
            self._spawn_close(browser)
        self._grow()

    def _spawn_close(self, browser: Chromium) -> None:
        browser.closing = True
        task = asyncio.create_task(self._close(browser), name=f"chromium-{browser.id}-close")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _close(self, browser: Chromium) -> None:
        try:
            await browser.destroy()
        finally:
            if browser in self.browsers:
                self.browsers.remove(browser)
            procs.reap_orphans(self._own_children())
            self._dispatch()

    async def _on_exit(self, browser: Chromium) -> None:
        await browser.exited.wait()
        if not browser.closing:
            self._crashed(browser, f"exited with code {browser.process_returncode()}")

    def _crashed(self, browser: Chromium, reason: str) -> None:
        self.crashes += 1
        log.error("browser lost: %s", reason, extra={"browser": browser.id, "pid": browser.pid})
        self._spawn_close(browser)
        self._grow()

    def _own_children(self) -> set[int]:
        # asyncio waits for these itself; reaping them here would steal their exit status.
        return {b.pid for b in self.browsers if b.pid is not None and not b.exited.is_set()}

    async def _monitor(self) -> None:
        while True:
            await self._check_browsers()
            self._measure()
            procs.reap_orphans(self._own_children())
            self._grow()
            await asyncio.sleep(self.settings.ping_interval_s)

    async def _check_browsers(self) -> None:
        limit = self.settings.max_browser_memory_mb << 20
        now = time.monotonic()
        idle_spare = len([b for b in self.browsers if b.ready]) > self.settings.min_browsers
        for browser in [b for b in self.browsers if b.ready]:
            try:
                await browser.ping(self.settings.ping_timeout_s)
                browser.missed_pings = 0
            except Exception as exc:
                # One slow answer can be CPU starvation; two in a row is a hung browser.
                browser.missed_pings += 1
                if browser.missed_pings >= PING_MISSES:
                    self._crashed(browser, f"health ping failed: {type(exc).__name__} {exc}")
                continue
            memory = await asyncio.to_thread(browser.memory_bytes)
            if memory > limit:
                self._retire(browser, f"memory {memory >> 20} MB over {limit >> 20} MB")
            elif (
                idle_spare
                and browser.pages == 0
                and now - browser.last_used > self.settings.idle_retire_s
            ):
                self._retire(browser, "idle")
                idle_spare = False

    async def _watch_renderers(self) -> None:
        """Kill any renderer over its memory share: the page fails, its browser stays."""
        limit = self.settings.max_page_memory_mb << 20
        while True:
            busy = [b for b in self.browsers if b.ready and b.pages]
            for browser, pid, memory in await asyncio.to_thread(_oversized, busy, limit):
                procs.kill_all([pid])
                log.warning(
                    "renderer over its memory share killed",
                    extra={"browser": browser.id, "pid": pid, "memory": memory},
                )
            await asyncio.sleep(RENDERER_WATCH_S)

    def _measure(self) -> None:
        reading = self._cgroup.read()
        memory = reading.memory_bytes
        if memory is None:
            memory = procs.tree_memory_bytes(os.getpid())
        self._pressure = Pressure(memory, reading.memory_limit, self._cpu.sample(reading))

    # ---- observation

    async def live_browser(self) -> None:
        """Readiness: a browser answered the monitor's health ping recently.

        The monitor's result is used rather than a ping of our own: under CPU load a ping
        can take longer than the readiness check may, and readiness must not flap for that.
        """
        fresh = 2 * self.settings.ping_interval_s + self.settings.ping_timeout_s
        now = time.monotonic()
        if not any(b.ready and now - b.last_pong < fresh for b in self.browsers):
            raise RuntimeError(f"no browser answered a health ping in the last {fresh:.0f} s")

    def pressure_ok(self) -> None:
        refusal = self._pressure.refusal(self.settings)
        if refusal is not None:
            raise RuntimeError(refusal)

    def stats(self) -> Stats:
        return Stats(
            browsers=len([b for b in self.browsers if not b.exited.is_set()]),
            pages_in_use=sum(b.pages for b in self.browsers),
            queue_length=self.queue_length,
            recycles=self.recycles,
            crashes=self.crashes,
            memory_bytes=self._pressure.memory_bytes,
        )


def _oversized(browsers: list[Chromium], limit: int) -> list[tuple[Chromium, int, int]]:
    """(browser, pid, resident memory) of each renderer of these browsers over `limit`."""
    found = []
    for browser in browsers:
        for pid in browser.renderers():
            memory = procs.rss_bytes(pid)
            if memory > limit:
                found.append((browser, pid, memory))
    return found


async def _answers(playwright: Playwright) -> bool:
    """Whether the driver answers a call that needs no browser."""
    try:
        async with asyncio.timeout(DRIVER_PROBE_S):
            request = await playwright.request.new_context()
            await request.dispose()
    except Exception:
        return False
    return True
