"""The sandbox runner against real bubblewrap and Debian's python3."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import replace

import pytest

from services.executor.sandbox import (
    OutputSink,
    RunOutcome,
    SandboxLimits,
    Verdict,
    cgroups,
    run_in_sandbox,
    sandbox_layers,
)
from tests.helpers.host import pids_with

# The system interpreter, not the virtualenv's: only /usr is visible inside.
PYTHON = "/usr/bin/python3"

LIMITS = SandboxLimits(
    wall_time_s=5,
    cpu_time_s=3,
    memory_bytes=128 << 20,
    max_processes=16,
    output_bytes=1 << 20,
    file_size_bytes=1 << 20,
    tmp_bytes=16 << 20,
)


async def run_py(
    source: str,
    limits: SandboxLimits = LIMITS,
    stdin: bytes = b"",
    files: Mapping[str, bytes] | None = None,
    on_output: OutputSink | None = None,
) -> RunOutcome:
    all_files = {"main.py": source.encode()}
    all_files.update(files or {})
    return await run_in_sandbox([PYTHON, "main.py"], all_files, stdin, limits, on_output)


def _cgroup_memory_active() -> bool:
    return sandbox_layers()["cgroup_memory"]


def _vm_rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def no_cgroups(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Forces the rlimit-only fallback."""
    monkeypatch.setattr(cgroups, "create_run_cgroup", lambda *args: None)
    yield


def test_layers_reported() -> None:
    layers = sandbox_layers()
    assert layers["bwrap"] is True
    assert layers["rlimits"] is True
    assert all(isinstance(v, bool) for v in layers.values())


async def test_hello_world() -> None:
    out = await run_py("print('hello')")
    assert out.verdict is Verdict.COMPLETED, out
    assert out.stdout == b"hello\n"
    assert out.exit_code == 0
    assert out.signal_name is None
    assert out.cpu_time_ms > 0
    assert out.peak_memory_bytes > 0


async def test_stdin_and_nested_files() -> None:
    source = "import sys; print(sys.stdin.read().upper() + open('pkg/data.txt').read())"
    out = await run_py(source, stdin=b"abc", files={"pkg/data.txt": b"xyz"})
    assert out.verdict is Verdict.COMPLETED, out
    assert out.stdout == b"ABCxyz\n"


async def test_bad_files_are_refused_without_running() -> None:
    out = await run_py("print(1)", files={"../escape.py": b""})
    assert out.verdict is Verdict.FAILED
    assert "file" in out.detail
    big = await run_py("print(1)", files={"big.bin": b"x" * (LIMITS.file_size_bytes + 1)})
    assert big.verdict is Verdict.FAILED


async def test_nonzero_exit() -> None:
    out = await run_py("import sys; sys.stderr.write('bad'); sys.exit(3)")
    assert out.verdict is Verdict.FAILED
    assert out.exit_code == 3
    assert out.stderr == b"bad"


async def test_killed_by_signal() -> None:
    out = await run_py("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert out.verdict is Verdict.FAILED
    assert out.exit_code is None
    assert out.signal_name == "SIGSEGV"


async def test_cpu_limit() -> None:
    # Wall room for a loaded machine, where 1 s of CPU can take longer than 2 s to get.
    limits = replace(LIMITS, cpu_time_s=1, wall_time_s=6)
    out = await run_py("while True: pass", limits)
    assert out.verdict is Verdict.TIMEOUT, out
    assert "cpu" in out.detail
    assert out.wall_time_ms < 6000
    # RLIMIT_CPU is checked against tick-sampled time, which can run ahead of the cgroup's
    # exact count on a busy machine: SIGXCPU may come a little before 1 s by the cgroup.
    assert out.cpu_time_ms >= 700


async def test_wall_limit() -> None:
    limits = replace(LIMITS, wall_time_s=0.5)
    started = time.monotonic()
    out = await run_py("import time; time.sleep(30)", limits)
    assert out.verdict is Verdict.TIMEOUT, out
    assert "wall" in out.detail
    assert 500 <= out.wall_time_ms < 1000
    assert time.monotonic() - started < 2


async def test_memory_limit() -> None:
    out = await run_py("b = b'x' * (1 << 30)\nprint('survived')")
    assert out.verdict is not Verdict.COMPLETED
    assert b"survived" not in out.stdout
    if _cgroup_memory_active():
        assert out.verdict is Verdict.MEMORY_LIMIT, out
        assert out.peak_memory_bytes <= LIMITS.memory_bytes


async def test_process_limit() -> None:
    limits = replace(LIMITS, max_processes=4)
    source = """
import os, time
n = 0
for _ in range(20):
    try:
        if os.fork() == 0:
            time.sleep(1)
            os._exit(0)
        n += 1
    except OSError:
        break
print(n)
"""
    out = await run_py(source, limits)
    assert out.verdict is Verdict.COMPLETED, out
    # The program itself is one of the four.
    assert 1 <= int(out.stdout) < 4


async def test_network_is_unreachable() -> None:
    # A listener on the host's loopback that the sandbox must not reach.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        source = f"""
import socket
for addr in [("127.0.0.1", 4222), ("127.0.0.1", {port}), ("1.1.1.1", 53)]:
    try:
        socket.create_connection(addr, timeout=1).close()
        print("connected", addr)
    except OSError:
        print("refused")
"""
        out = await run_py(source)
    assert out.verdict is Verdict.COMPLETED, out
    assert out.stdout == b"refused\n" * 3


async def test_filesystem_is_confined() -> None:
    source = """
import os
def attempt(label, fn):
    try:
        fn()
        print(label, "ok")
    except OSError:
        print(label, "denied")
attempt("shadow", lambda: open("/etc/shadow").read())
attempt("root", lambda: open("/evil", "w").write("x"))
attempt("usr", lambda: open("/usr/evil", "w").write("x"))
attempt("work", lambda: open("/work/out.txt", "w").write("x"))
attempt("tmp", lambda: open("/tmp/out.txt", "w").write("x"))
attempt("tls keys", lambda: os.listdir("/etc/ssl/private"))
print(sorted(os.listdir("/etc")))
"""
    out = await run_py(source)
    assert out.verdict is Verdict.COMPLETED, out
    lines = out.stdout.decode().splitlines()
    assert lines[:6] == [
        "shadow denied",
        "root denied",
        "usr denied",
        "work ok",
        "tmp ok",
        "tls keys denied",
    ]
    assert "'shadow'" not in lines[6]


async def test_tmpfs_is_size_capped() -> None:
    limits = replace(LIMITS, tmp_bytes=1 << 20, file_size_bytes=8 << 20)
    source = """
try:
    with open("/tmp/fill", "wb") as fh:
        for _ in range(4):
            fh.write(b"x" * (1 << 20))
    print("filled")
except OSError as exc:
    print("full", exc.errno)
"""
    out = await run_py(source, limits)
    assert out.verdict is Verdict.COMPLETED, out
    assert out.stdout.startswith(b"full")


async def test_environment_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("SANDMESH_TEST_SECRET", secret)
    source = """
import os
print(sorted(os.environ.items()))
try:
    print(open("/proc/1/environ", "rb").read())
except PermissionError:
    print("pid 1 is out of reach")
"""
    out = await run_py(source)
    assert out.verdict is Verdict.COMPLETED, out
    assert secret.encode() not in out.stdout
    assert b"SANDMESH_TEST_SECRET" not in out.stdout
    assert b"('HOME', '/work')" in out.stdout
    host_home = os.environ.get("HOME", "")
    if host_home not in ("", "/work"):
        assert host_home.encode() not in out.stdout


async def test_output_limit() -> None:
    limits = replace(LIMITS, output_bytes=1 << 20, wall_time_s=10)
    source = """
import sys
chunk = b"x" * (1 << 20)
for _ in range(1024):
    sys.stdout.buffer.write(chunk)
print("finished", file=sys.stderr)
"""
    rss_before = _vm_rss_bytes()
    out = await run_py(source, limits)
    assert out.verdict is Verdict.OUTPUT_LIMIT, out
    assert out.stdout_truncated
    assert not out.stderr_truncated
    assert len(out.stdout) == limits.output_bytes
    assert b"finished" not in out.stderr
    assert out.wall_time_ms < 5000
    assert _vm_rss_bytes() - rss_before < 64 << 20


async def test_output_streams_live() -> None:
    arrivals: list[tuple[float, str, bytes]] = []

    async def sink(stream: str, chunk: bytes) -> None:
        arrivals.append((time.monotonic(), stream, chunk))

    source = "import time\nprint('first', flush=True)\ntime.sleep(0.5)\nprint('second')"
    out = await run_py(source, on_output=sink)
    finished = time.monotonic()
    assert out.verdict is Verdict.COMPLETED, out
    assert b"".join(c for _, s, c in arrivals if s == "stdout") == b"first\nsecond\n"
    first_at = next(t for t, _, c in arrivals if c.startswith(b"first"))
    assert finished - first_at >= 0.4


async def test_sink_errors_propagate() -> None:
    async def broken(stream: str, chunk: bytes) -> None:
        raise RuntimeError("client went away")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="client went away"):
        await run_py("import time\nprint('x', flush=True)\ntime.sleep(30)", on_output=broken)
    assert time.monotonic() - started < 3


DAEMON = """
import os, sys, time
marker = sys.argv[1]
r, w = os.pipe()
os.set_inheritable(w, True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/usr/bin/python3", ["python3", "-c",
            "import os, sys, time\\n"
            "open('/tmp/' + sys.argv[2], 'w').close()\\n"
            "os.write(int(sys.argv[1]), b'up')\\n"
            "time.sleep(60)\\n",
            str(w), marker])
    os._exit(0)
os.close(w)
print(os.read(r, 2).decode(), flush=True)
"""


async def _assert_daemon_dies() -> None:
    marker = f"sandmesh-daemon-{uuid.uuid4().hex}"
    started = time.monotonic()
    out = await run_in_sandbox(
        [PYTHON, "main.py", marker], {"main.py": DAEMON.encode()}, b"", LIMITS
    )
    assert out.verdict is Verdict.COMPLETED, out
    assert out.stdout == b"up\n"
    assert time.monotonic() - started < 5
    # SIGKILL is sent before the run returns; allow a moment for the reaping.
    for _ in range(40):
        if not pids_with(marker):
            break
        await asyncio.sleep(0.05)
    assert pids_with(marker) == []


async def test_daemon_does_not_outlive_run() -> None:
    await _assert_daemon_dies()


@pytest.mark.usefixtures("no_cgroups")
async def test_fallback_without_cgroups() -> None:
    busy = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass"
    out = await run_py(busy)
    assert out.verdict is Verdict.COMPLETED, out
    assert out.cpu_time_ms >= 300
    assert out.peak_memory_bytes > 1 << 20
    mem = await run_py("b = b'x' * (1 << 30)\nprint('survived')")
    assert mem.verdict is not Verdict.COMPLETED
    assert b"survived" not in mem.stdout
    await _assert_daemon_dies()
