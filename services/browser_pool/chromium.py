"""One Chromium: started by us in its jail, driven by Playwright over CDP, killed by us.

The pool starts Chromium itself (not `chromium.launch`) so it knows the process, puts it in
its own process group, gives it a private directory for its profile, HOME and TMPDIR (so
everything it writes, crash-handler database included, is in one place we delete), and can
kill the whole tree. Chromium runs in a jail (`jail`) whose network namespace has no way
out but this browser's proxy (`proxy`); Playwright attaches with `connect_over_cdp` through
a relay on the host's loopback that carries exactly one connection into the jail.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from playwright.async_api import Browser, CDPSession, Playwright

from sandmesh_runtime import uids
from services.browser_pool import jail, procs
from services.browser_pool.proxy import Socks5Proxy, splice
from services.browser_pool.url_policy import UrlPolicy, endpoint

log = logging.getLogger("sandmesh.browser_pool.chromium")

FLAGS = (
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-port=0",
    # Loopback too goes through the proxy: no implicit bypass for localhost.
    "--proxy-bypass-list=<-loopback>",
    # WebRTC may not send UDP (STUN, TURN, peers) around the proxy.
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
)
TERM_GRACE_S = 2.0
RENDERER = "--type=renderer"  # in a renderer's command line
_ids = itertools.count(1)


class LaunchError(RuntimeError):
    """Chromium did not start or could not be attached to."""


class Chromium:
    """A started Chromium with the pool's bookkeeping."""

    def __init__(self, base_dir: Path) -> None:
        self.id = next(_ids)
        self.dir = base_dir
        self.uid: int | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.browser: Browser | None = None
        self.cdp: CDPSession | None = None
        self.proxy: Socks5Proxy | None = None
        self.devtools: tuple[str, int] | None = None  # the relay Playwright connects to
        self.jobs = 0
        self.pages = 0
        self.retiring = False
        self.closing = False  # we are killing it: its exit is not a crash
        self.last_used = time.monotonic()
        self.last_pong = 0.0  # when it last answered a health ping
        self.missed_pings = 0
        self.exited = asyncio.Event()
        self._policy: UrlPolicy | None = None
        self._relay: asyncio.Server | None = None
        self._into_jail: asyncio.StreamWriter | None = None
        self._zygotes: list[int] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def ready(self) -> bool:
        return self.browser is not None and not self.exited.is_set() and not self.closing

    async def launch(
        self,
        playwright: Playwright,
        executable: str,
        policy: UrlPolicy,
        timeout: float,
        js_heap_mb: int,
    ) -> None:
        profile = self.dir / "profile"
        profile.mkdir(parents=True)
        (self.dir / "tmp").mkdir()
        self.uid = uids.pick()
        if self.uid is not None:
            for owned in (self.dir, profile, self.dir / "tmp"):
                os.chown(owned, self.uid, self.uid)
        args = [
            *FLAGS,
            # A page's JavaScript heap ends at its share; the pool watches the rest (RSS).
            f"--js-flags=--max-old-space-size={js_heap_mb}",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        control, inside = socket.socketpair()
        init_fd = jail.init_source_fd()
        try:
            with (self.dir / "stderr.log").open("wb") as stderr:
                self.process = await asyncio.create_subprocess_exec(
                    *jail.command(executable, args, self.dir, self.uid, inside.fileno(), init_fd),
                    env=jail.environment(self.dir),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    pass_fds=(inside.fileno(), init_fd),
                    start_new_session=True,  # its own process group: one kill reaches all
                )
        finally:
            inside.close()
            os.close(init_fd)
        watcher = asyncio.create_task(self._watch_exit(), name=f"chromium-{self.id}-exit")
        self._tasks.add(watcher)
        async with asyncio.timeout(timeout):
            with control:
                control.settimeout(timeout)  # the thread below must end too
                listener, devtools = await asyncio.to_thread(jail.receive_sockets, control)
            self._policy = policy
            self.proxy = Socks5Proxy(policy)
            await self.proxy.serve(listener)
            port, path = await self._devtools_endpoint(profile / "DevToolsActivePort")
            relay_port = await self._relay_devtools(devtools, port)
            # Reserved from before Playwright connects: no page may take the relay first.
            self.devtools = ("127.0.0.1", relay_port)
            policy.reserved.add(self.devtools)
            self.browser = await playwright.chromium.connect_over_cdp(
                f"ws://127.0.0.1:{relay_port}{path}", timeout=timeout * 1000
            )
            self.cdp = await self.browser.new_browser_cdp_session()
            await self.ping(timeout)

    async def _relay_devtools(self, devtools: socket.socket, port: int) -> int:
        """Connect the jail's socket to DevTools; relay one host connection to it."""
        devtools.setblocking(False)
        await asyncio.get_running_loop().sock_connect(devtools, ("127.0.0.1", port))
        inner_reader, inner_writer = await asyncio.open_connection(sock=devtools)
        self._into_jail = inner_writer

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert self._relay is not None
            if not self._relay.is_serving():
                writer.close()  # the one connection is taken
                return
            self._relay.close()
            try:
                await asyncio.gather(splice(reader, inner_writer), splice(inner_reader, writer))
            finally:
                writer.close()
                inner_writer.close()

        self._relay = await asyncio.start_server(relay, "127.0.0.1", 0)
        return int(self._relay.sockets[0].getsockname()[1])

    def stderr_tail(self, limit: int = 2000) -> str:
        """The end of Chromium's own output: why it would not start."""
        try:
            return (self.dir / "stderr.log").read_bytes()[-limit:].decode(errors="replace")
        except OSError:
            return ""

    async def _devtools_endpoint(self, path: Path) -> tuple[int, str]:
        """(port, browser path) from DevToolsActivePort, once Chromium has written both."""
        while True:
            if self.exited.is_set():
                raise LaunchError(f"chromium exited with code {self.process_returncode()}")
            with contextlib.suppress(OSError, ValueError):
                lines = (await asyncio.to_thread(path.read_text)).split()
                if len(lines) == 2:
                    return int(lines[0]), lines[1]
            await asyncio.sleep(0.05)

    def process_returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    async def _watch_exit(self) -> None:
        assert self.process is not None
        await self.process.wait()
        self.exited.set()

    async def ping(self, timeout: float) -> None:
        """A CDP round trip to the browser process; raises when it does not answer in time."""
        if self.cdp is None or self.exited.is_set():
            raise RuntimeError("browser is not running")
        async with asyncio.timeout(timeout):
            await self.cdp.send("Browser.getVersion")
        self.last_pong = time.monotonic()

    def denial(self, url: str) -> str | None:
        """Why this browser's proxy recently refused to connect for `url`, if it did."""
        target = endpoint(url)
        if target is None or self.proxy is None:
            return None
        return self.proxy.denial(*target)

    def memory_bytes(self) -> int:
        return 0 if self.pid is None else procs.group_memory_bytes(self.pid)

    def renderers(self) -> list[int]:
        """Pids of this browser's renderer processes (one per site and browser context).

        Renderers are forked by Chromium's zygotes, which live as long as the browser and
        are single-threaded: once they are known, a look is a few small reads, not a scan
        of every process.
        """
        if self.pid is None:
            return []
        if not self._zygotes:
            self._zygotes = procs.group_members(self.pid, "--type=zygote")
        return [
            pid
            for zygote in self._zygotes
            for pid in procs.children(zygote)
            if RENDERER in procs.cmdline(pid)
        ]

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
        if self.proxy is not None:
            await self.proxy.close()
        if self._relay is not None:
            self._relay.close()
        if self._into_jail is not None:
            self._into_jail.close()
        if self.devtools is not None and self._policy is not None:
            self._policy.reserved.discard(self.devtools)
        for task in self._tasks:
            task.cancel()
        uids.release(self.uid)
        await asyncio.to_thread(shutil.rmtree, self.dir, True)
