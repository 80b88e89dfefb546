"""One Chromium process: started by us, driven by Playwright over CDP, killed by us.

The pool starts Chromium itself (not `chromium.launch`) so it knows the process, puts it in
its own process group, gives it a private directory for its profile, HOME and TMPDIR (so
everything it writes, crash-handler database included, is in one place we delete), and can
kill the whole tree. Playwright attaches with `connect_over_cdp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import signal
import subprocess
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO

from playwright.async_api import Browser, CDPSession, Playwright

from services.browser_pool import procs
from services.browser_pool.url_policy import UrlPolicy

log = logging.getLogger("sandmesh.browser_pool.chromium")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
TERM_GRACE_S = 2.0
_ids = itertools.count(1)


class LaunchError(RuntimeError):
    """Chromium did not start or could not be attached to."""


class Chromium:
    """A started Chromium with the pool's bookkeeping."""

    def __init__(self, base_dir: Path) -> None:
        self.id = next(_ids)
        self.dir = base_dir
        self.process: asyncio.subprocess.Process | None = None
        self.browser: Browser | None = None
        self.cdp: CDPSession | None = None
        self.devtools: tuple[str, int] | None = None
        self.jobs = 0
        self.pages = 0
        self.retiring = False
        self.closing = False  # we are killing it: its exit is not a crash
        self.last_used = time.monotonic()
        self.last_pong = 0.0  # when it last answered a health ping
        self.missed_pings = 0
        self.exited = asyncio.Event()
        # Denial reasons by URL, so a job can say why its navigation was blocked.
        self.denied: OrderedDict[str, str] = OrderedDict()
        self._policy: UrlPolicy | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def ready(self) -> bool:
        return self.browser is not None and not self.exited.is_set() and not self.closing

    async def launch(
        self, playwright: Playwright, executable: str, policy: UrlPolicy, timeout: float
    ) -> None:
        profile = self.dir / "profile"
        tmp = self.dir / "tmp"
        profile.mkdir(parents=True)
        tmp.mkdir()
        env = {**os.environ, "HOME": str(self.dir), "TMPDIR": str(tmp)}
        with (self.dir / "stderr.log").open("wb") as stderr:
            self.process = await self._spawn(executable, profile, env, stderr)
        watcher = asyncio.create_task(self._watch_exit(), name=f"chromium-{self.id}-exit")
        self._handlers.add(watcher)
        async with asyncio.timeout(timeout):
            port = await self._devtools_port(profile / "DevToolsActivePort")
            self.devtools = ("127.0.0.1", port)
            self.browser = await playwright.chromium.connect_over_cdp(
                f"http://127.0.0.1:{port}", timeout=timeout * 1000
            )
            self.cdp = await self.browser.new_browser_cdp_session()
            self._policy = policy
            # Browser-wide request interception: unlike `route`, it also stops redirect hops,
            # worker and service-worker requests.
            self.cdp.on("Fetch.requestPaused", self._on_request_paused)
            await self.cdp.send("Fetch.enable", {"patterns": [{"urlPattern": "*"}]})
            await self.ping(timeout)

    @staticmethod
    async def _spawn(
        executable: str, profile: Path, env: dict[str, str], stderr: BinaryIO
    ) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            # Killed with the pool, even by SIGKILL or the OOM killer: the pool's subreaper and
            # destroy() cannot act then, and its own session keeps it out of any group kill.
            # Its helpers exit once it is gone.
            "setpriv",
            "--pdeathsig",
            "KILL",
            "--",
            executable,
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its own process group: one kill reaches every helper
        )

    def stderr_tail(self, limit: int = 2000) -> str:
        """The end of Chromium's own output: why it would not start."""
        try:
            return (self.dir / "stderr.log").read_bytes()[-limit:].decode(errors="replace")
        except OSError:
            return ""

    async def _devtools_port(self, path: Path) -> int:
        while True:
            if self.exited.is_set():
                raise LaunchError(f"chromium exited with code {self.process_returncode()}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int((await asyncio.to_thread(path.read_text)).split()[0])
            await asyncio.sleep(0.05)

    def process_returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    async def _watch_exit(self) -> None:
        assert self.process is not None
        await self.process.wait()
        self.exited.set()

    def _on_request_paused(self, event: dict[str, Any]) -> None:
        task = asyncio.create_task(self._decide(event))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _decide(self, event: dict[str, Any]) -> None:
        assert self.cdp is not None and self._policy is not None
        request_id = event["requestId"]
        url = event["request"]["url"]
        try:
            reason = await self._policy.check(url)
        except Exception as exc:  # a policy bug must deny, never let the request through
            reason = f"policy check failed: {exc}"
        try:
            if reason is None:
                await self.cdp.send("Fetch.continueRequest", {"requestId": request_id})
            else:
                self.denied[url] = reason
                while len(self.denied) > 256:
                    self.denied.popitem(last=False)
                log.info("request denied", extra={"url": url[:200], "reason": reason})
                await self.cdp.send(
                    "Fetch.failRequest", {"requestId": request_id, "errorReason": "BlockedByClient"}
                )
        except Exception:
            # The request went away (page closed, navigation replaced): nothing to decide.
            pass

    async def ping(self, timeout: float) -> None:
        """A CDP round trip to the browser process; raises when it does not answer in time."""
        if self.cdp is None or self.exited.is_set():
            raise RuntimeError("browser is not running")
        async with asyncio.timeout(timeout):
            await self.cdp.send("Browser.getVersion")
        self.last_pong = time.monotonic()

    def memory_bytes(self) -> int:
        return 0 if self.pid is None else procs.group_memory_bytes(self.pid)

    async def destroy(self) -> None:
        """Stop the process tree (politely, then not), reap it, delete its directory."""
        self.closing = True
        if self.browser is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self.browser.close()
        pid = self.pid
        if pid is not None and not self.exited.is_set():
            procs.kill_group(pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exited.wait(), TERM_GRACE_S)
        if pid is not None:
            # Helpers outlive the main process; anything that named our dir is ours.
            procs.kill_group(pid)
            await self.exited.wait()
        for _ in range(20):
            leftover = procs.pids_mentioning(str(self.dir))
            if not leftover:
                break
            procs.kill_all(leftover)
            await asyncio.sleep(0.05)
        for task in self._handlers:
            task.cancel()
        await asyncio.to_thread(shutil.rmtree, self.dir, True)
