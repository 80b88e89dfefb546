"""Hostile programs against the mesh's real executor.

Each must end in the right verdict, and leave the executor healthy and the next run
unaffected (`assert_healthy` runs one right after).
"""

from __future__ import annotations

import asyncio
import fcntl
import gzip
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import grpc
import pytest

import services.executor.worker as executor_worker
from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh_runtime.errors import details_of
from tests.helpers.host import pids_with
from tests.helpers.runner import Result, Runner, assert_healthy, sandbox_status, status

if TYPE_CHECKING:
    from sandmesh.executor.v1.executor_pb2_grpc import ExecutorServiceAsyncStub as ExecutorStub

Limits = execution_pb2.Limits


async def test_fork_bomb_is_held_by_the_task_limit(run: Runner) -> None:
    marker = f"forkbomb-{uuid.uuid4().hex}"
    source = "#include <unistd.h>\nint main(void) { for (;;) fork(); }\n"
    result = await run(
        "c", source, args=[marker], limits=Limits(cpu_time_ms=2000, wall_time_ms=3000)
    )
    assert status(result) == "TIMEOUT", result
    assert result.error_code == "E004"
    assert pids_with(marker) == []
    await assert_healthy(run)


async def test_thread_bomb_is_held_by_the_task_limit(run: Runner) -> None:
    source = """
import threading, time
started = 0
try:
    while True:
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        started += 1
except RuntimeError:
    print(started)
"""
    result = await run("python3", source, limits=Limits(max_processes=16))
    assert status(result) == "COMPLETED", result
    # The main thread is one of the sixteen tasks.
    assert 0 < int(result.stdout) < 16
    await assert_healthy(run)


async def test_memory_bomb_ends_in_memory_limit(run: Runner) -> None:
    result = await run(
        "python3", "b = bytearray(1 << 30)\nprint('survived')", limits=Limits(memory_mb=128)
    )
    assert status(result) == "MEMORY_LIMIT", result
    assert result.error_code == "E003"
    assert result.stdout == b""
    assert 0 < result.usage.peak_memory_bytes <= 130 << 20
    await assert_healthy(run)


async def test_cpu_spin_and_sleep_forever_time_out_saying_which(run: Runner) -> None:
    spin, sleep = await asyncio.gather(
        run("python3", "while True:\n    pass\n", limits=Limits(cpu_time_ms=1000)),
        run("python3", "import time\ntime.sleep(3600)\n", limits=Limits(wall_time_ms=1000)),
    )
    assert status(spin) == "TIMEOUT" and spin.error_code == "E004"
    # RLIMIT_CPU counts tick-sampled time, which may run ahead of the cgroup's exact count.
    assert "cpu time" in spin.detail and spin.usage.cpu_time_ms >= 700
    assert status(sleep) == "TIMEOUT" and sleep.error_code == "E004"
    assert "wall time" in sleep.detail and 1000 <= sleep.usage.wall_time_ms < 2000
    await assert_healthy(run)


async def test_a_loop_that_breaks_out_runs(run: Runner) -> None:
    # No guessing at infinite loops from the source: only the limits stop a program.
    source = "n = 0\nwhile True:\n    n += 1\n    if n == 1000:\n        break\nprint(n)\n"
    result = await run("python3", source)
    assert status(result) == "COMPLETED" and result.stdout == b"1000\n"


async def test_a_gigabyte_to_stdout_is_cut_and_flagged(run: Runner) -> None:
    source = "import sys\nchunk = b'x' * (1 << 20)\nfor _ in range(1024):\n"
    source += "    sys.stdout.buffer.write(chunk)\n"
    result = await run("python3", source, limits=Limits(output_bytes=65536))
    assert status(result) == "OUTPUT_LIMIT", result
    assert result.stdout_truncated and not result.stderr_truncated
    assert result.stdout == b"x" * 65536
    await assert_healthy(run)


async def test_filling_tmp_stops_at_its_cap(run: Runner) -> None:
    source = """
try:
    with open("/tmp/fill", "wb") as fh:
        while True:
            fh.write(b"x" * (1 << 20))
except OSError as exc:
    print("stopped", exc.errno)
"""
    limits = Limits(tmp_mb=4, file_size_bytes=64 << 20)
    result = await run("python3", source, limits=limits)
    assert status(result) == "COMPLETED", result
    assert result.stdout == b"stopped 28\n"  # ENOSPC
    await assert_healthy(run)


async def test_files_left_behind_are_not_seen_by_a_later_run(run: Runner) -> None:
    places = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/work"]
    token = uuid.uuid4().hex
    plant = f"""
import os
for place in {places!r}:
    try:
        with open(os.path.join(place, "left-{token}"), "w") as fh:
            fh.write("x")
        print(place, "written")
    except OSError:
        print(place, "refused")
"""
    look = f"""
import os
for place in {places!r}:
    print(place, os.path.exists(os.path.join(place, "left-{token}")))
"""
    planted = await run("python3", plant)
    assert status(planted) == "COMPLETED", planted
    # The private tmpfs mounts take the files; elsewhere the root is read-only.
    assert b"/tmp written" in planted.stdout and b"/dev/shm written" in planted.stdout
    assert b"/var/tmp refused" in planted.stdout
    for language in ("python3", "python3", "python3"):
        later = await run(language, look)
        assert later.stdout.decode().split() == [w for p in places for w in (p, "False")]


# One of the executor's own source files, which a program must not be able to touch.
OWN_FILE = Path(executor_worker.__file__).resolve()


async def test_host_files_cannot_be_written_or_read(run: Runner) -> None:
    before = await asyncio.to_thread(OWN_FILE.read_bytes)
    source = """
import os, sys
def attempt(label, fn):
    try:
        fn()
        print(label, "ok")
    except OSError:
        print(label, "denied")
attempt("etc", lambda: open("/etc/passwd", "a").write("evil::0:0::/:/bin/sh"))
attempt("etc-new", lambda: open("/etc/evil", "w").write("x"))
attempt("own", lambda: open(sys.argv[1], "a").write("# evil"))
attempt("shadow", lambda: open("/etc/shadow").read())
"""
    result = await run("python3", source, args=[str(OWN_FILE)])
    assert status(result) == "COMPLETED", result
    assert result.stdout.decode().split() == [
        "etc", "denied", "etc-new", "denied", "own", "denied", "shadow", "denied"
    ]  # fmt: skip
    assert await asyncio.to_thread(OWN_FILE.read_bytes) == before
    assert not await asyncio.to_thread(os.path.exists, "/etc/evil")


async def test_the_sandbox_sees_a_clean_environment(run: Runner) -> None:
    host_env = run.mesh.services["executor"].env
    source = """
import os
print(sorted(os.environ))
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            print(open(f"/proc/{pid}/environ", "rb").read())
        except PermissionError:
            print(pid, "out of reach")
"""
    result = await run("python3", source)
    assert status(result) == "COMPLETED", result
    names = result.stdout.decode().splitlines()[0]
    assert names == "['HOME', 'LANG', 'PATH', 'PWD']"
    # pid 1 is the sandbox's init, whose memory the program cannot read.
    assert b"1 out of reach" in result.stdout
    for secret in (host_env["NATS_URL"], host_env["DATABASE_URL"]):
        assert secret.encode() not in result.stdout


async def test_no_network_to_loopback_services_or_outside(run: Runner) -> None:
    env = run.mesh.services["executor"].env
    targets = [
        ("127.0.0.1", urlsplit(env["NATS_URL"]).port),
        ("127.0.0.1", urlsplit(env["DATABASE_URL"]).port),
        ("127.0.0.1", run.mesh.services["executor"].port),
        ("1.1.1.1", 443),
    ]
    source = f"""
import socket
for target in {targets!r}:
    try:
        socket.create_connection(target, timeout=1).close()
        print("connected")
    except OSError:
        print("unreachable")
"""
    result = await run("python3", source)
    assert status(result) == "COMPLETED", result
    assert result.stdout == b"unreachable\n" * len(targets)


async def test_a_double_forked_daemon_does_not_outlive_the_run(run: Runner) -> None:
    marker = f"daemon-{uuid.uuid4().hex}"
    source = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/usr/bin/python3", ["python3", "-c", "import time; time.sleep(60)", "{marker}"])
    os._exit(0)
time.sleep(0.3)
print("parent done")
"""
    result = await run("python3", source)
    assert status(result) == "COMPLETED", result
    for _ in range(40):
        if not pids_with(marker):
            break
        await asyncio.sleep(0.05)
    assert pids_with(marker) == []


async def test_kill_minus_one_from_inside_leaves_the_executor_alive(run: Runner) -> None:
    source = "import os, signal, time\nos.kill(-1, signal.SIGKILL)\ntime.sleep(1)\nprint('alive')"
    result = await run("python3", source)
    assert status(result) in ("FAILED", "COMPLETED"), result
    await assert_healthy(run)


async def test_ptrace_and_foreign_proc_are_out_of_reach(run: Runner) -> None:
    source = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
child = os.fork()
if child == 0:
    import time
    time.sleep(5)
    os._exit(0)
PTRACE_ATTACH = 16
print("ptrace", libc.ptrace(PTRACE_ATTACH, child, 0, 0), ctypes.get_errno() == errno.EPERM)
os.kill(child, 9)
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
print("max-pid", max(pids))
cmdlines = b"".join(open(f"/proc/{p}/cmdline", "rb").read() for p in pids if p != child)
print("sandmesh" in cmdlines.decode(errors="replace"))
"""
    result = await run("python3", source)
    assert status(result) == "COMPLETED", result
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "ptrace -1 True"
    # Its own pid namespace: a handful of pids, none of the host's processes.
    assert int(lines[1].split()[1]) < 16
    assert lines[2] == "False"


async def test_a_compile_time_bomb_is_held_by_the_compile_limits(run: Runner) -> None:
    result = await run("c", "int main[0x10000000] = {1};\n")
    assert status(result) == "COMPILATION_ERROR", result
    assert result.error_code == "E001"
    assert result.usage.wall_time_ms < 30_000
    await assert_healthy(run)


async def test_a_decompression_bomb_cannot_expand_past_the_limits(run: Runner) -> None:
    bomb = gzip.compress(b"\0" * (256 << 20), compresslevel=9)
    assert len(bomb) < 1 << 20
    source = """
import gzip, shutil
with gzip.open("bomb.gz") as src, open("/work/expanded", "wb") as dst:
    shutil.copyfileobj(src, dst)
print("expanded")
"""
    limits = Limits(tmp_mb=16, file_size_bytes=8 << 20)
    result = await run("python3", source, files={"bomb.gz": bomb}, limits=limits)
    assert status(result) == "FAILED", result
    assert b"expanded" not in result.stdout
    assert b"File too large" in result.stderr or b"No space left" in result.stderr
    await assert_healthy(run)


# Programs that go for the process judging the run (the sandbox's pid 1): steal its
# descriptors with pidfd_getfd() and write to each (bwrap's reaper reported the exit status
# through an eventfd), and open its memory for writing. Each then exits 3.
FORGERS = {
    "python3": """
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
pidfd = libc.syscall(434, 1, 0)
stolen = [fd for fd in (libc.syscall(438, pidfd, n, 0) for n in range(64)) if fd >= 0]
for fd in stolen:
    os.write(fd, struct.pack("=Q", 1))
try:
    open("/proc/1/mem", "r+b")
    mem = "writable"
except OSError:
    mem = "denied"
print(f"stolen {len(stolen)} mem {mem}", flush=True)
sys.exit(3)
""",
    "ruby": """
pidfd = begin; syscall(434, 1, 0); rescue SystemCallError; nil; end
stolen = (0...64).filter_map do |n|
  syscall(438, pidfd, n, 0)
rescue SystemCallError
  nil
end
stolen.each { |fd| IO.for_fd(fd, autoclose: false).syswrite([1].pack("Q")) }
mem = begin; File.open("/proc/1/mem", "r+"); "writable"; rescue SystemCallError; "denied"; end
puts "stolen #{stolen.size} mem #{mem}"
$stdout.flush
exit 3
""",
    "php": """<?php
try {
    $libc = FFI::cdef("long syscall(long number, ...);");
    $ffi = "enabled";
} catch (Throwable $e) {
    $ffi = "refused";
}
$mem = @fopen("/proc/1/mem", "r+") === false ? "denied" : "writable";
echo "ffi $ffi mem $mem\\n";
exit(3);
""",
}


async def _warm_and_cold(
    run: Runner, executor: ExecutorStub, language: str, source: str
) -> tuple[Result, Result]:
    """The same program through a warm sandbox of the pool, then cold (a tmp size the pool
    does not serve)."""
    for _ in range(200):
        if f"'{language}': 1" in await _pool_detail(executor):
            break
        await asyncio.sleep(0.05)
    before = _served_warm(await _pool_detail(executor))
    warm = await run(language, source)
    assert _served_warm(await _pool_detail(executor)) == before + 1, "not served warm"
    cold = await run(language, source, limits=Limits(tmp_mb=32))
    assert _served_warm(await _pool_detail(executor)) == before + 1, "not served cold"
    return warm, cold


async def _pool_detail(executor: ExecutorStub) -> str:
    layers = {layer.name: layer for layer in (await sandbox_status(executor)).layers}
    return layers["warm_pool"].detail


def _served_warm(detail: str) -> int:
    return int(detail.split("served warm ")[1].split(",")[0])


@pytest.mark.parametrize("language", sorted(FORGERS))
async def test_a_program_cannot_forge_its_verdict(
    run: Runner, executor: ExecutorStub, language: str
) -> None:
    for result in await _warm_and_cold(run, executor, language, FORGERS[language]):
        assert status(result) == "FAILED", result
        assert result.HasField("exit_code") and result.exit_code == 3, result
        expected = b"ffi refused mem denied\n" if language == "php" else b"stolen 0 mem denied\n"
        assert result.stdout == expected, result


async def test_an_argument_too_long_for_exec_is_a_bad_request(
    gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
) -> None:
    request = execution_pb2.ExecutionRequest(
        language="c", source="int main(void) { return 0; }\n", args=["ok", "x" * 200_000]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gateway.SubmitExecution(
            gateway_pb2.SubmitExecutionRequest(request=request), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad_request,) = details_of(caught.value)
    fields = {v.field: v.description for v in bad_request.field_violations}
    assert fields == {"request.args[1]": "must be at most 131071 bytes, got 200000"}


SIXTEEN_SPINNERS = """
#include <pthread.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *spin(void *start) {
    while (now() - *(double *)start < 2.0) {
    }
    return 0;
}

int main(void) {
    pthread_t threads[16];
    double start = now();
    for (int i = 0; i < 16; i++) pthread_create(&threads[i], 0, spin, &start);
    for (int i = 0; i < 16; i++) pthread_join(threads[i], 0);
    return 0;
}
"""


@pytest.mark.parametrize("millicores", [500, 1000])
async def test_sixteen_threads_get_no_more_than_the_runs_cpu_share(
    run: Runner, millicores: int
) -> None:
    limits = Limits(cpu_millicores=millicores, cpu_time_ms=20000, max_processes=32)
    result = await run("c", SIXTEEN_SPINNERS, limits=limits)
    assert status(result) == "COMPLETED", result
    wall, cpu = result.usage.wall_time_ms, result.usage.cpu_time_ms
    # A 100 ms scheduling period of slack: the quota is enforced per period.
    assert cpu <= wall * millicores / 1000 + 100, (cpu, wall)
    assert wall >= 2000


async def test_a_warm_sandbox_shows_nothing_of_its_launcher(
    run: Runner, executor: ExecutorStub
) -> None:
    source = "import sys\nprint(sorted(globals()))\nprint(sorted(sys.modules))\nprint(sys.argv)\n"
    warm, cold = await _warm_and_cold(run, executor, "python3", source)
    assert status(warm) == "COMPLETED" and status(cold) == "COMPLETED", (warm, cold)
    assert warm.stdout == cold.stdout
    assert b"_LAUNCHER" not in warm.stdout and b"'runpy'" not in warm.stdout
    assert warm.stdout.splitlines()[2] == b"['main.py']"


async def test_the_syscall_allow_list_refuses_what_programs_do_not_need(run: Runner) -> None:
    source = """
import ctypes, errno, socket
libc = ctypes.CDLL(None, use_errno=True)
def sock(family, kind, proto=0):
    try:
        socket.socket(family, kind, proto).close()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
def call(nr, *args):
    return "ok" if libc.syscall(nr, *args) >= 0 else errno.errorcode[ctypes.get_errno()]
print("vsock", sock(40, socket.SOCK_STREAM))
print("packet", sock(17, socket.SOCK_RAW))
print("netlink-uevent", sock(16, socket.SOCK_DGRAM, 15))
print("netlink-route", sock(16, socket.SOCK_DGRAM, 0))
print("unix", sock(socket.AF_UNIX, socket.SOCK_STREAM))
print("inet6", sock(socket.AF_INET6, socket.SOCK_DGRAM))
print("io_uring_setup", call(425, 1, None))
print("not-yet-a-syscall", call(1023))
print("ptrace", call(101, 0, 1, 0, 0))
"""
    result = await run("python3", source)
    assert status(result) == "COMPLETED", result
    assert result.stdout.decode().split("\n")[:-1] == [
        "vsock EAFNOSUPPORT",
        "packet EAFNOSUPPORT",
        "netlink-uevent EPROTONOSUPPORT",
        "netlink-route ok",
        "unix ok",
        "inet6 ok",
        "io_uring_setup ENOSYS",
        "not-yet-a-syscall ENOSYS",
        "ptrace EPERM",
    ]


async def test_a_call_that_only_serves_an_attack_kills_the_program(run: Runner) -> None:
    source = "import ctypes\nctypes.CDLL(None).syscall(246, 0, 0, 0, 0)\nprint('survived')\n"
    result = await run("python3", source)  # kexec_load
    assert status(result) == "FAILED", result
    assert result.signal == "SIGSYS" and result.stdout == b""
    await assert_healthy(run)


async def test_inotify_sees_nothing_and_proc_tells_nothing_of_other_runs(run: Runner) -> None:
    source = """
import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
print("inotify", libc.inotify_init1(0), errno.errorcode[ctypes.get_errno()])
print("fanotify", libc.syscall(300, 0, 0), errno.errorcode[ctypes.get_errno()])
print(open("/proc/loadavg").read().strip())
print("pressure", os.listdir("/proc/pressure") if os.path.exists("/proc/pressure") else [])
"""
    # Another run compiling meanwhile is what a watcher on /usr used to see.
    watched, _ = await asyncio.gather(
        run("python3", source), run("c", "int main(void) { return 0; }\n")
    )
    assert status(watched) == "COMPLETED", watched
    assert watched.stdout.decode().splitlines() == [
        "inotify -1 ENOSYS",
        "fanotify -1 ENOSYS",
        "0.00 0.00 0.00 1/1 1",
        "pressure []",
    ]


def _lock_at_once(path: str) -> None:
    """Take and drop an exclusive flock; raises if anything holds one."""
    with open(path, "rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fh, fcntl.LOCK_UN)


async def test_a_held_flock_blocks_nobody_outside_the_run(run: Runner) -> None:
    marker = f"lockholder-{uuid.uuid4().hex}"
    shared = "/etc/ld.so.cache"  # a host file every sandbox sees read-only
    holder = f"""
import fcntl, os
fd = os.open("{shared}", os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
fcntl.fcntl(fd, fcntl.F_SETLK, b"\\0" * 32)  # and a POSIX read lock
print("locked", flush=True)
os.set_inheritable(fd, True)
os.execv("/usr/bin/python3", ["python3", "-c", "import time; time.sleep(4)", "{marker}"])
"""
    held = asyncio.create_task(run("python3", holder))
    # The marker is in a command line only once the lock is held (and kept across exec).
    while not pids_with(marker):
        assert not held.done(), held.result()
        await asyncio.sleep(0.05)
    await asyncio.to_thread(_lock_at_once, shared)
    other = f"""
import fcntl
with open("{shared}", "rb") as fh:
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("free")
"""
    neighbour = await run("python3", other)
    assert status(neighbour) == "COMPLETED" and neighbour.stdout == b"free\n", neighbour
    result = await held
    assert status(result) == "COMPLETED" and result.stdout == b"locked\n", result
