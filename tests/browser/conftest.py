"""A browser-pool process against real Chromium, and local page servers for it to load.

`pages` (127.0.0.3) is allowlisted; `forbidden` (127.0.0.2, also loopback) is not, and
neither is 127.0.0.1, where the host's own services listen: every connection that reaches
either is an SSRF hole.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest

from sandmesh.browser.v1 import browser_pb2, browser_pb2_grpc
from sandmesh_devstack.mesh import ServiceProcess, health_status
from sandmesh_devstack.ports import free_port

HOME = b"""<!doctype html><html><head><title>Pool test</title></head>
<body><h1 id="greeting">Hello, pool</h1><p>Plain text here.</p></body></html>"""

TALL = b"""<!doctype html><html><body style="margin:0">
<div style="height:3000px;background:linear-gradient(red,blue)">tall</div></body></html>"""

LATE = b"""<!doctype html><html><body><script>
setTimeout(() => { const p = document.createElement('p'); p.id = 'late';
p.textContent = 'arrived late'; document.body.appendChild(p); }, 300);
</script></body></html>"""

COOKIE = b"""<!doctype html><html><body><script>
localStorage.setItem('secret', 'job-one'); document.cookie = 'script=job-one';
</script>cookie set</body></html>"""


@dataclass
class PageServer:
    host: str
    server: ThreadingHTTPServer
    hits: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


def _serve(host: str) -> PageServer:
    page_server: PageServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            page_server.hits.append((self.path, dict(self.headers.items())))
            headers = {"Content-Type": "text/html"}
            body = HOME
            if parts.path == "/slow":
                time.sleep(float(query["s"][0]))
            elif parts.path == "/tall":
                body = TALL
            elif parts.path == "/late":
                body = LATE
            elif parts.path == "/cookie":
                body = COOKIE
                headers["Set-Cookie"] = "session=job-one; Path=/"
            elif parts.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", query["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a browser killed mid-response is what some tests do on purpose

    server = Server((host, 0), Handler)
    server.daemon_threads = True
    page_server = PageServer(host, server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return page_server


PAGES_HOST = "127.0.0.3"


@pytest.fixture(scope="session")
def pages() -> Iterator[PageServer]:
    server = _serve(PAGES_HOST)
    yield server
    server.server.shutdown()


@pytest.fixture(scope="session")
def forbidden() -> Iterator[PageServer]:
    server = _serve("127.0.0.2")
    yield server
    server.server.shutdown()


# The test pool's shape: 2 browsers x 2 pages, 2 waiting; small enough to fill on purpose.
MAX_BROWSERS = 2
PAGES_PER_BROWSER = 2
QUEUE_SIZE = 2
RECYCLE_AFTER_JOBS = 100
MAX_BROWSER_MEMORY_MB = 768
MAX_PAGE_MEMORY_MB = 256
IDLE_RETIRE_S = 3  # the second browser goes soon after a burst, back to the one-browser baseline


@dataclass(frozen=True)
class PoolProcess:
    service: ServiceProcess
    log: Path

    def log_entries(self, message: str) -> list[dict[str, object]]:
        """The pool's JSON log lines with this message."""
        entries = []
        for line in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("message") == message:
                    entries.append(entry)
        return entries

    @property
    def pid(self) -> int:
        assert self.service.process is not None
        return self.service.process.pid

    def drivers(self) -> list[int]:
        """Pids of the Playwright driver (a Node.js process) the pool runs now."""
        return [
            proc.pid
            for proc in procs()
            if proc.ppid == self.pid and proc.state != "Z" and "run-driver" in cmdline(proc.pid)
        ]

    def browsers(self) -> list[tuple[int, str]]:
        """(pid, private dir) of each Chromium main process the pool runs now.

        The private dir holds the profile (`--user-data-dir`), HOME and TMPDIR.
        """
        found = []
        for pid in self.jailed():
            args = cmdline(pid)
            if not args or not args[0].endswith("/chromium") or "--type=" in " ".join(args):
                continue
            for arg in args:
                if arg.startswith("--user-data-dir="):
                    found.append((pid, str(Path(arg.split("=", 1)[1]).parent)))
        return found

    def jailed(self) -> list[int]:
        """Every live process the pool started for its browsers: jails and Chromium."""
        drivers = {pid for driver in self.drivers() for pid in tree(driver)}
        return [pid for pid in tree(self.pid) if pid != self.pid and pid not in drivers]


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str


def procs() -> list[Proc]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        found.append(Proc(int(name), int(fields[1]), fields[0]))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def tree(root: int) -> list[int]:
    """`root` and every live descendant."""
    children: dict[int, list[int]] = {}
    for proc in procs():
        if proc.state != "Z":
            children.setdefault(proc.ppid, []).append(proc.pid)
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def zombies_of(pid: int) -> list[int]:
    return [p.pid for p in procs() if p.ppid == pid and p.state == "Z"]


def mentioning(marker: str) -> list[int]:
    return [p.pid for p in procs() if p.state != "Z" and marker in " ".join(cmdline(p.pid))]


def pss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def wait_until(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


@pytest.fixture(scope="session")
def pool_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PoolProcess]:
    port = free_port()
    env = dict(os.environ)
    env.update(
        SANDMESH_HOST="127.0.0.1",
        SANDMESH_HEALTH_INTERVAL_S="0.3",
        SANDMESH_BROWSER_POOL_PORT=str(port),
        SANDMESH_BROWSER_POOL_ALLOWLIST=PAGES_HOST,
        SANDMESH_BROWSER_POOL_MAX_BROWSERS=str(MAX_BROWSERS),
        SANDMESH_BROWSER_POOL_PAGES_PER_BROWSER=str(PAGES_PER_BROWSER),
        SANDMESH_BROWSER_POOL_QUEUE_SIZE=str(QUEUE_SIZE),
        SANDMESH_BROWSER_POOL_RECYCLE_AFTER_JOBS=str(RECYCLE_AFTER_JOBS),
        SANDMESH_BROWSER_POOL_MAX_BROWSER_MEMORY_MB=str(MAX_BROWSER_MEMORY_MB),
        SANDMESH_BROWSER_POOL_PING_INTERVAL_S="0.5",
        SANDMESH_BROWSER_POOL_PING_TIMEOUT_S="2",
        SANDMESH_BROWSER_POOL_IDLE_RETIRE_S=str(IDLE_RETIRE_S),
        SANDMESH_BROWSER_POOL_MAX_PAGE_MEMORY_MB=str(MAX_PAGE_MEMORY_MB),
        # Addresses the pool holds and its browsers must never see.
        DATABASE_URL="postgresql://sandmesh:secret@127.0.0.1:5432/sandmesh",
        NATS_URL="nats://127.0.0.1:4222",
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path_factory.mktemp("pool") / "browser-pool.log"
    service = ServiceProcess("browser-pool", port, env, log)
    service.start()
    try:
        wait_until(
            lambda: (
                service.exit_code() is not None
                or health_status(service.target, "readiness") == "SERVING"
            ),
            60,
            f"browser pool ready; log: {log}",
        )
        assert service.exit_code() is None, log.read_text()
        running = PoolProcess(service, log)
        yield running
        # Graceful stop: every browser closed, every private dir removed.
        dirs = [d for _, d in running.browsers()]
        assert dirs
        assert service.stop() == 0, log.read_text()[-5000:]
        assert [(d, mentioning(d), os.path.exists(d)) for d in dirs] == [
            (d, [], False) for d in dirs
        ]
    finally:
        service.stop()


@pytest.fixture
async def pool(
    pool_process: PoolProcess,
) -> AsyncIterator[browser_pb2_grpc.BrowserPoolServiceAsyncStub]:
    async with grpc.aio.insecure_channel(pool_process.service.target) as channel:
        yield browser_pb2_grpc.BrowserPoolServiceStub(channel)


def page(url: str, **options: object) -> browser_pb2.PageOptions:
    return browser_pb2.PageOptions(url=url, **options)  # type: ignore[arg-type]
