"""Runs one untrusted program in a bubblewrap sandbox and reports how it went.

Layers, outermost first:

* bwrap namespaces (user, pid, net, ipc, uts, cgroup), a read-only root with
  only system directories, private size-capped tmpfs for /work, /tmp and
  /dev/shm, a clean environment and uid 65534 inside;
* when the executor runs as root, bwrap itself is started under a random
  unprivileged host uid, so the sandbox is not host root in disguise and
  RLIMIT_NPROC counts only this run's tasks;
* a per-run cgroup (see ``cgroups``): memory limit with reliable OOM
  detection, task limit, CPU share, CPU accounting and kill-all;
* rlimits set before bwrap is exec'd (``prlimit``, then ``setpriv`` for the uid);
* a seccomp allow-list (see ``seccomp``) loaded by bwrap right before it execs
  the sandbox's init (see ``init.c``), which runs the program and whose exit
  status is the verdict's;
* when the run ends, everything left in its cgroup (or with its uid) is killed.

A cancel event, and a build mode that hands /work back as a tar archive
through an inherited pipe, are the two hooks the executor's pipeline uses.

CPU time and peak memory come from the cgroup.  Without one they are sampled
from /proc over bwrap's process tree (densely at first, then every 100 ms),
which gives lower bounds: rusage cannot be used because asyncio reaps bwrap
itself without reading it, so the program's usage never reaches any rusage
of this run alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import resource
import secrets
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from services.executor.sandbox import bwrap, cgroups, init, seccomp
from services.executor.sandbox.limits import SandboxLimits

logger = logging.getLogger(__name__)

OutputSink = Callable[[str, bytes], Awaitable[None]]

_CHUNK = 64 * 1024
_NOFILE = 256
# The outer bwrap and the sandbox's pid 1 (our init) are tasks too.
BWRAP_TASKS = 2
# How long readers may take to see EOF once the sandbox is gone.
_DRAIN_GRACE_S = 2.0
_MONITOR_INTERVAL_S = 0.05
_SAMPLE_INTERVAL_S = 0.1

# Random host uids for sandboxes started as root: above systemd's container
# ranges and below its "foreign" range and 2**31.
_RUN_UID_BASE = 0x7000_0000
_RUN_UID_SPAN = 0x0FFE_0000
_uids_in_use: set[int] = set()

# Keeps cleanup tasks alive when the run itself was cancelled.
_background: set[asyncio.Task[None]] = set()


class Verdict(StrEnum):
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    MEMORY_LIMIT = "MEMORY_LIMIT"
    OUTPUT_LIMIT = "OUTPUT_LIMIT"
    SYSTEM_ERROR = "SYSTEM_ERROR"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class SandboxOptions:
    """How the sandbox around one command looks, beyond its limits.

    env: added to the clean environment.
    ro_binds: extra host paths shown read-only (a toolchain's configuration).
    executable: program files staged with the executable bit.
    export_work: when the command exits 0, /work is archived (tar) through an
        inherited pipe and returned in ``RunOutcome.exported``: how a build's
        output reaches the next sandbox without touching the host's disk.
    """

    env: Mapping[str, str] = field(default_factory=dict)
    ro_binds: tuple[str, ...] = ()
    executable: frozenset[str] = frozenset()
    export_work: bool = False


DEFAULT_OPTIONS = SandboxOptions()


@dataclass
class RunOutcome:
    verdict: Verdict
    exit_code: int | None  # None when killed by a signal
    signal_name: str | None  # e.g. "SIGKILL"
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    wall_time_ms: int
    cpu_time_ms: int
    peak_memory_bytes: int
    detail: str  # human sentence, e.g. "wall time limit of 1.0 s exceeded"
    exported: bytes | None = None  # tar of /work, with SandboxOptions.export_work


def _seconds(value: float) -> str:
    return f"{value:.1f}" if round(value, 1) == value else f"{value:g}"


def _mib(value: int) -> str:
    mib = value / (1024 * 1024)
    return f"{mib:.0f}" if mib == int(mib) else f"{mib:.1f}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def early_outcome(verdict: Verdict, detail: str) -> RunOutcome:
    """An outcome for a run that never started."""
    return RunOutcome(
        verdict=verdict,
        exit_code=None,
        signal_name=None,
        stdout=b"",
        stderr=b"",
        stdout_truncated=False,
        stderr_truncated=False,
        wall_time_ms=0,
        cpu_time_ms=0,
        peak_memory_bytes=0,
        detail=detail,
    )


# ------------------------------------------------------------ child set-up


def rlimits_for(
    limits: SandboxLimits, cg: cgroups.RunCgroup | None, run_uid: int | None
) -> list[tuple[int, int, int]]:
    """The rlimits a run with ``limits`` gets, as (resource, soft, hard)."""
    return _rlimits(
        limits,
        memory_in_cgroup=cg is not None and cg.has_memory,
        tasks_in_cgroup=cg is not None and cg.has_pids,
        run_uid=run_uid,
    )


def pick_run_uid() -> int | None:
    """A fresh unprivileged host uid for one sandbox (None unless we are root)."""
    if os.geteuid() != 0:
        return None
    while True:
        uid = _RUN_UID_BASE + secrets.randbelow(_RUN_UID_SPAN)
        if uid not in _uids_in_use:
            _uids_in_use.add(uid)
            return uid


def _rlimits(
    limits: SandboxLimits, memory_in_cgroup: bool, tasks_in_cgroup: bool, run_uid: int | None
) -> list[tuple[int, int, int]]:
    cpu = limits.cpu_rlimit_s
    wanted = [
        # SIGXCPU at the soft limit, SIGKILL one second later if it is caught.
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes),
        (resource.RLIMIT_NOFILE, _NOFILE, _NOFILE),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    if not memory_in_cgroup:
        # Address space is a poor proxy (it counts reservations, so a cgroup
        # is preferred), but it is all there is without one.
        wanted.append((resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes))
    # RLIMIT_NPROC counts every task of the real uid (and never applies to
    # root), so it is exact only when the uid is private to the run.
    if run_uid is not None:
        nproc = limits.max_processes + BWRAP_TASKS
        wanted.append((resource.RLIMIT_NPROC, nproc, nproc))
    elif not tasks_in_cgroup and os.getuid() != 0:
        # Shared uid, no pids cgroup: a fork-bomb backstop on top of what the
        # uid already runs; concurrent runs share the headroom.
        nproc = _uid_task_count(os.getuid()) + limits.max_processes + BWRAP_TASKS
        wanted.append((resource.RLIMIT_NPROC, nproc, nproc))
    result: list[tuple[int, int, int]] = []
    for res, soft, hard in wanted:
        _, cur_hard = resource.getrlimit(res)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        result.append((res, soft, hard))
    return result


_RLIMIT_OPTIONS = {
    resource.RLIMIT_CPU: "cpu",
    resource.RLIMIT_FSIZE: "fsize",
    resource.RLIMIT_NOFILE: "nofile",
    resource.RLIMIT_CORE: "core",
    resource.RLIMIT_AS: "as",
    resource.RLIMIT_NPROC: "nproc",
}
# Joins each cgroup named before "--" (writing 0 moves the writer itself), then execs the rest.
_JOIN_CGROUPS = 'while [ "$1" != -- ]; do echo 0 > "$1" || exit 125; shift; done; shift; exec "$@"'


def _launch_prefix(
    procs_files: list[str], rlimits: list[tuple[int, int, int]], run_uid: int | None
) -> list[str]:
    """Commands that prepare the process bwrap will become, each exec'ing the next.

    Not a ``preexec_fn``: that forces a real fork() of this multi-threaded process, and
    gRPC's at-fork handlers then restart its poller threads in the child, which can
    abort it.  Without one, the child is a vfork that only execs.  The order matters:
    join the run's cgroup first (no window outside it), set the rlimits while still
    root, then drop to the run's uid.
    """
    prefix: list[str] = []
    if procs_files:
        prefix += ["/bin/sh", "-c", _JOIN_CGROUPS, "sh", *procs_files, "--"]
    prefix += ["/usr/bin/prlimit"]
    prefix += [f"--{_RLIMIT_OPTIONS[res]}={soft}:{hard}" for res, soft, hard in rlimits]
    prefix += ["--"]
    if run_uid is not None:
        prefix += [
            "/usr/bin/setpriv",
            f"--reuid={run_uid}",
            f"--regid={run_uid}",
            "--clear-groups",
            "--",
        ]
    return prefix


# ------------------------------------------------------- /proc fallbacks


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, cpu ticks incl. reaped children, rss pages) of a process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        ticks = sum(int(f) for f in fields[11:15])
        return int(fields[1]), ticks, int(fields[21])
    except (IndexError, ValueError):
        return None


def _all_pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


class _TreeSampler:
    """Peak CPU and RSS of a process tree, for runs without a usable cgroup."""

    def __init__(self, root_pid: int) -> None:
        self._root = root_pid
        self._tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")
        self.cpu_ns = 0
        self.peak_rss = 0

    def sample(self) -> None:
        stats: dict[int, tuple[int, int, int]] = {}
        for pid in _all_pids():
            st = _proc_stat(pid)
            if st is not None:
                stats[pid] = st
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in stats.items():
            children.setdefault(ppid, []).append(pid)
        ticks = rss = 0
        todo = [self._root] if self._root in stats else []
        while todo:
            pid = todo.pop()
            _, t, r = stats[pid]
            ticks += t
            rss += r
            todo.extend(children.get(pid, ()))
        self.cpu_ns = max(self.cpu_ns, ticks * self._tick_ns)
        self.peak_rss = max(self.peak_rss, rss * self._page)


def _uid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _uid_task_count(uid: int) -> int:
    """Tasks (threads included, as RLIMIT_NPROC counts them) of real uid ``uid``."""
    count = 0
    for pid in _all_pids():
        try:
            with open(f"/proc/{pid}/status", "rb") as fh:
                fields = dict(line.split(b":", 1) for line in fh if b":" in line)
            if int(fields[b"Uid"].split()[0]) == uid:
                count += int(fields[b"Threads"])
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return count


def _kill_uid(uid: int) -> None:
    """SIGKILL every process whose real uid is ``uid`` (private to one run)."""
    for pid in _all_pids():
        if _uid_of(pid) != uid:
            continue
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            # Re-checked through the pidfd's pid so a recycled pid is spared.
            if _uid_of(pid) == uid:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        finally:
            os.close(pidfd)


# ------------------------------------------------------------------ the run


class _Capture:
    def __init__(self) -> None:
        self.data = bytearray()
        self.truncated = False


class _Run:
    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        limits: SandboxLimits,
        cg: cgroups.RunCgroup | None,
        run_uid: int | None,
        on_output: OutputSink | None,
        cpu_baseline_ns: int = 0,
    ) -> None:
        self.proc = proc
        self.cpu_baseline_ns = cpu_baseline_ns
        self.limits = limits
        self.cg = cg
        self.run_uid = run_uid
        self.on_output = on_output
        self.kill_reason: str | None = None
        self.sink_error: Exception | None = None
        self.stdout = _Capture()
        self.stderr = _Capture()
        needs_sampler = cg is None or not (cg.has_cpu and cg.has_memory)
        self.sampler = _TreeSampler(proc.pid) if needs_sampler else None
        self.peak_memory = 0

    def kill(self, reason: str | None = None) -> None:
        if reason is not None and self.kill_reason is None:
            self.kill_reason = reason
        if self.proc.returncode is None:
            # bwrap is the leader of its own session (start_new_session);
            # its death takes the sandbox's pid 1, and with it the whole pid
            # namespace, down (--die-with-parent).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.cg is not None:
            self.cg.kill_all()
        elif self.run_uid is not None:
            _kill_uid(self.run_uid)

    async def pump(self, name: str, stream: asyncio.StreamReader, cap: _Capture) -> None:
        limit = self.limits.output_bytes
        while True:
            chunk = await stream.read(_CHUNK)
            if not chunk:
                return
            room = limit - len(cap.data)
            keep = chunk[:room] if room > 0 else b""
            if keep:
                cap.data += keep
                if self.on_output is not None and self.sink_error is None:
                    try:
                        await self.on_output(name, keep)
                    except Exception as exc:
                        self.sink_error = exc
                        self.kill()
            if len(chunk) > len(keep):
                # Keep draining (discarding) so the pipe closes promptly.
                cap.truncated = True
                self.kill("output")

    async def feed(self, data: bytes) -> None:
        writer = self.proc.stdin
        if writer is None:
            return
        # The program may exit or close stdin without reading it all.
        with contextlib.suppress(OSError):
            if data:
                writer.write(data)
                await writer.drain()
            writer.close()
            await writer.wait_closed()

    def cpu_ns(self) -> int:
        """CPU used since the program was handed over."""
        if self.cg is not None and self.cg.has_cpu:
            used = self.cg.cpu_time_ns() or 0
        else:
            used = self.sampler.cpu_ns if self.sampler is not None else 0
        return max(0, used - self.cpu_baseline_ns)

    def sample_memory(self) -> None:
        if self.cg is not None and self.cg.has_memory:
            current = self.cg.memory_current()
            if current is not None:
                self.peak_memory = max(self.peak_memory, current)
        elif self.sampler is not None:
            self.peak_memory = max(self.peak_memory, self.sampler.peak_rss)

    async def monitor(self) -> None:
        """Enforces the run's total CPU time (RLIMIT_CPU is per process)."""
        cpu_limit_ns = int(self.limits.cpu_time_s * 1_000_000_000)
        cap = _MONITOR_INTERVAL_S if self.sampler is None else _SAMPLE_INTERVAL_S
        # Dense at first so short programs still get sampled, then backing off.
        interval = 0.005
        while self.proc.returncode is None:
            if self.sampler is not None:
                self.sampler.sample()
            self.sample_memory()
            if self.cpu_ns() >= cpu_limit_ns:
                self.kill("cpu")
                return
            await asyncio.sleep(interval)
            interval = min(interval * 2, cap)


def _read_available(fd: int) -> bytes:
    """What a pipe holds now, without waiting for more."""
    os.set_blocking(fd, False)
    raw = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            raw += chunk
    return raw


def _read_status(fd: int) -> int | None:
    """The command's exit code from bwrap's JSON status, None if never exec'd."""
    exit_code: int | None = None
    for line in _read_available(fd).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("exit-code"), int):
            exit_code = record["exit-code"]
    return exit_code


async def _cleanup(cg: cgroups.RunCgroup | None, run_uid: int | None) -> None:
    try:
        if cg is not None:
            await cg.destroy()
        elif run_uid is not None:
            _kill_uid(run_uid)
    finally:
        if run_uid is not None:
            _uids_in_use.discard(run_uid)


async def run_in_sandbox(
    argv: Sequence[str],
    files: Mapping[str, bytes],
    stdin: bytes,
    limits: SandboxLimits,
    on_output: OutputSink | None = None,
    *,
    options: SandboxOptions = DEFAULT_OPTIONS,
    cancel: asyncio.Event | None = None,
) -> RunOutcome:
    """Run ``argv`` in a fresh sandbox with ``files`` in its /work directory.

    Never raises because of what the program does; problems on our side come
    back as SYSTEM_ERROR, and files that break the limits (too large, too
    many, bad names) as FAILED without running anything.  Exceptions raised
    by ``on_output`` kill the run and are re-raised once it is cleaned up.
    Setting ``cancel`` kills the run, which then ends CANCELLED.
    """
    bwrap_path = bwrap.find_bwrap()
    if bwrap_path is None:
        return early_outcome(Verdict.SYSTEM_ERROR, "bubblewrap (bwrap) is not installed")
    if not argv:
        return early_outcome(Verdict.SYSTEM_ERROR, "empty command")
    try:
        staged = bwrap.StagedFiles(files, limits, options.executable)
    except ValueError as exc:
        return early_outcome(Verdict.FAILED, f"cannot prepare program files: {exc}")
    except OSError as exc:
        return early_outcome(Verdict.SYSTEM_ERROR, f"cannot stage program files: {exc}")

    with staged:
        cg = cgroups.create_run_cgroup(
            limits.memory_bytes, limits.max_processes + BWRAP_TASKS, limits.cpu_millicores
        )
        run_uid = pick_run_uid()
        try:
            started = await start_sandbox(bwrap_path, argv, staged, limits, options, cg, run_uid)
            if isinstance(started, RunOutcome):
                return started
            try:
                return await supervise(started, stdin, limits, on_output, cancel)
            finally:
                started.close()
        finally:
            await release(cg, run_uid)


async def release(cg: cgroups.RunCgroup | None, run_uid: int | None) -> None:
    """Kill whatever is left of a sandbox and free its cgroup and uid, even if cancelled."""
    task = asyncio.create_task(_cleanup(cg, run_uid))
    _background.add(task)
    task.add_done_callback(_background.discard)
    await asyncio.shield(task)


@dataclass
class Started:
    """A sandbox whose bwrap is up; its command runs, or waits for its program."""

    proc: asyncio.subprocess.Process
    started: float
    cg: cgroups.RunCgroup | None
    run_uid: int | None
    status_r: int
    export_r: int | None
    # Pipes on which init (and a warm sandbox's launcher) say why the program could not
    # be executed; nothing is written when it was.
    report_fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in (self.status_r, self.export_r, *self.report_fds):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.export_r = None
        self.status_r = -1
        self.report_fds = []


def _export_command(argv: Sequence[str], fd: int) -> list[str]:
    # bash, not sh: dash redirects only single-digit fds.
    script = f'"$@" || exit; cd {bwrap.WORK_DIR} && exec /usr/bin/tar -cf - . >&{fd}'
    return ["/bin/bash", "-c", script, "bash", *argv]


async def start_sandbox(
    bwrap_path: str,
    argv: Sequence[str],
    staged: bwrap.StagedFiles,
    limits: SandboxLimits,
    options: SandboxOptions,
    cg: cgroups.RunCgroup | None,
    run_uid: int | None,
    pass_fds: tuple[int, ...] = (),
) -> Started | RunOutcome:
    """Start bwrap with ``argv`` inside; ``pass_fds`` are inherited by the command."""
    status_r, status_w = os.pipe()
    report_r, report_w = os.pipe()
    export_r, export_w = os.pipe() if options.export_work else (None, None)
    filter_fd = seccomp.filter_fd() if seccomp.supported() else None
    to_close = [fd for fd in (status_w, report_w, export_w, filter_fd) if fd is not None]
    try:
        command = list(argv) if export_w is None else _export_command(argv, export_w)
        setup_limits = limits
        if staged.largest > limits.file_size_bytes:
            # bwrap writes the staged files under RLIMIT_FSIZE: a build output (or init)
            # larger than the program's own file-size limit gets room for set-up, and the program's
            # limit is applied right before it starts.
            setup_limits = replace(limits, file_size_bytes=staged.largest)
            fsize = limits.file_size_bytes
            command = ["/usr/bin/prlimit", f"--fsize={fsize}:{fsize}", "--", *command]
        bwrap_argv = bwrap.build_bwrap_argv(
            bwrap_path,
            command,
            limits,
            staged,
            status_w,
            report_w,
            env=options.env,
            ro_binds=options.ro_binds,
            seccomp_fd=filter_fd,
        )
        prefix = _launch_prefix(
            cg.procs_files if cg is not None else [],
            rlimits_for(setup_limits, cg, run_uid),
            run_uid,
        )
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *prefix,
            *bwrap_argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # bwrap's own environ stays readable as /proc/1/environ inside.
            env={},
            start_new_session=True,
            pass_fds=(*to_close, *staged.fds, *pass_fds),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        for fd in (status_r, report_r, export_r):
            if fd is not None:
                os.close(fd)
        if isinstance(exc, OSError) and exc.errno == errno.E2BIG:
            # Only the request's arguments can make the command line too long.
            return early_outcome(
                Verdict.FAILED, f"the program could not be started: {exc.strerror}"
            )
        return early_outcome(Verdict.SYSTEM_ERROR, f"cannot start the sandbox: {exc}")
    finally:
        # The sandbox holds its own copies now; ours would keep the pipes open.
        for fd in to_close:
            os.close(fd)
        staged.close()
    return Started(proc, started, cg, run_uid, status_r, export_r, [report_r])


async def _collect(fd: int, cap: int, run: _Run) -> bytes:
    """Read the exported archive, killing the run if it grows past ``cap``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(fd), "rb", 0)
    )
    data = bytearray()
    try:
        while chunk := await reader.read(_CHUNK):
            data += chunk
            if len(data) > cap:
                run.kill("export")
                return b""
    finally:
        transport.close()
    return bytes(data)


async def supervise(
    st: Started,
    stdin: bytes,
    limits: SandboxLimits,
    on_output: OutputSink | None,
    cancel: asyncio.Event | None = None,
    cpu_baseline_ns: int = 0,
) -> RunOutcome:
    """Feed, watch and judge a started sandbox until it ends, then kill what is left.

    ``cpu_baseline_ns`` is CPU the sandbox used before its program was handed
    over (a warm sandbox's launcher); it counts against no limit.
    """
    proc = st.proc
    cg = st.cg
    run = _Run(proc, limits, cg, st.run_uid, on_output, cpu_baseline_ns)
    assert proc.stdout is not None and proc.stderr is not None
    pumps: list[asyncio.Task[Any]] = [
        asyncio.create_task(run.pump("stdout", proc.stdout, run.stdout)),
        asyncio.create_task(run.pump("stderr", proc.stderr, run.stderr)),
    ]
    export: asyncio.Task[bytes] | None = None
    if st.export_r is not None:
        # The archive may hold everything /work could: each file plus a header.
        export = asyncio.create_task(_collect(st.export_r, 2 * limits.tmp_bytes + (1 << 20), run))
        pumps.append(export)
    helpers = [asyncio.create_task(run.feed(stdin)), asyncio.create_task(run.monitor())]
    cancelled = (
        asyncio.create_task(cancel.wait()) if cancel is not None else asyncio.create_task(_never())
    )
    try:
        exited = asyncio.ensure_future(proc.wait())
        done, _ = await asyncio.wait(
            [exited, cancelled],
            timeout=max(0.0, limits.wall_time_s - (time.monotonic() - st.started)),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if exited not in done:
            run.kill("cancelled" if cancelled in done else "wall")
            await exited
        wall_ms = int((time.monotonic() - st.started) * 1000)
        # Whatever is left (daemons, stragglers) goes now.
        run.kill()
        _, pending = await asyncio.wait(pumps, timeout=_DRAIN_GRACE_S)
        if pending:
            logger.warning("sandbox output still open after exit; killing again")
            run.kill()
            await asyncio.wait(pending, timeout=_DRAIN_GRACE_S)
    finally:
        for task in (*pumps, *helpers, cancelled):
            task.cancel()
        await asyncio.gather(*pumps, *helpers, cancelled, return_exceptions=True)
        if proc.returncode is None:
            run.kill()
    if run.sink_error is not None:
        raise run.sink_error

    if run.sampler is not None:
        run.sampler.sample()
    run.sample_memory()
    stats = cg.stats() if cg is not None else None
    cpu_ns = run.cpu_ns()
    peak = run.peak_memory
    if stats is not None and stats.peak_memory_bytes is not None:
        peak = max(peak, stats.peak_memory_bytes)
    if stats is not None and stats.cpu_time_ns is not None:
        cpu_ns = max(cpu_ns, stats.cpu_time_ns - cpu_baseline_ns)

    command_exit = _read_status(st.status_r)
    not_executed = b"".join(_read_available(fd) for fd in st.report_fds)
    returncode = proc.returncode
    assert returncode is not None
    exit_code: int | None = None
    signum: int | None = None
    if not_executed and command_exit == init.EXEC_FAILED:
        # Never started: nothing of it to report but why.
        command_exit = None
    elif command_exit is not None:
        # bwrap reports a command killed by signal N as 128 + N, like a shell.
        if command_exit > 128 and 0 < command_exit - 128 < signal.NSIG:
            signum = command_exit - 128
        else:
            exit_code = command_exit
    elif returncode < 0:
        signum = -returncode

    if not_executed and command_exit is None and run.kill_reason is None:
        # The user's request (its arguments, say) is what the program could not start
        # with: the program's own failure, never a retry of ours.
        reason = not_executed.decode("utf-8", "replace")
        verdict, detail = Verdict.FAILED, f"the program could not be started: {reason}"
    else:
        verdict, detail = _judge(
            limits, run, stats, command_exit is not None, exit_code, signum, cpu_ns, returncode
        )
    exported = None
    if export is not None and verdict is Verdict.COMPLETED and not export.cancelled():
        exported = export.result() if export.exception() is None else None
    return RunOutcome(
        verdict=verdict,
        exit_code=exit_code,
        signal_name=_signal_name(signum) if signum is not None else None,
        stdout=bytes(run.stdout.data),
        stderr=bytes(run.stderr.data),
        stdout_truncated=run.stdout.truncated,
        stderr_truncated=run.stderr.truncated,
        wall_time_ms=wall_ms,
        cpu_time_ms=cpu_ns // 1_000_000,
        peak_memory_bytes=peak,
        detail=detail,
        exported=exported,
    )


async def _never() -> None:
    await asyncio.Event().wait()


def _judge(
    limits: SandboxLimits,
    run: _Run,
    stats: cgroups.CgroupStats | None,
    executed: bool,
    exit_code: int | None,
    signum: int | None,
    cpu_ns: int,
    returncode: int,
) -> tuple[Verdict, str]:
    wall_msg = f"wall time limit of {_seconds(limits.wall_time_s)} s exceeded"
    cpu_msg = f"cpu time limit of {_seconds(limits.cpu_time_s)} s exceeded"
    mem_msg = f"memory limit of {_mib(limits.memory_bytes)} MiB exceeded"
    if run.kill_reason == "output":
        streams = [n for n, c in (("stdout", run.stdout), ("stderr", run.stderr)) if c.truncated]
        return (
            Verdict.OUTPUT_LIMIT,
            f"output limit of {limits.output_bytes} bytes exceeded on {' and '.join(streams)}",
        )
    if run.kill_reason == "cancelled":
        return Verdict.CANCELLED, "cancelled while running"
    if run.kill_reason == "export":
        return Verdict.FAILED, "build output larger than the work directory limit"
    if run.kill_reason == "wall":
        return Verdict.TIMEOUT, wall_msg
    if run.kill_reason == "cpu":
        return Verdict.TIMEOUT, cpu_msg
    succeeded = executed and exit_code == 0
    memory_killed = stats is not None and (
        stats.oom_killed or (stats.memory_limit_hit and signum == signal.SIGKILL)
    )
    if memory_killed and not succeeded:
        return Verdict.MEMORY_LIMIT, mem_msg
    if not executed:
        message = bytes(run.stderr.data).decode("utf-8", "replace").strip().splitlines()
        if returncode < 0:
            said = f": {message[-1]}" if message else ""
            return (
                Verdict.SYSTEM_ERROR,
                f"sandbox supervisor killed by {_signal_name(-returncode)}{said}",
            )
        reason = message[-1] if message else f"bwrap exited with code {returncode}"
        return Verdict.SYSTEM_ERROR, f"sandbox setup failed: {reason}"
    if signum == signal.SIGXCPU or (
        signum == signal.SIGKILL and cpu_ns >= limits.cpu_rlimit_s * 1_000_000_000
    ):
        return Verdict.TIMEOUT, cpu_msg
    if signum == signal.SIGXFSZ:
        return Verdict.FAILED, f"file size limit of {limits.file_size_bytes} bytes exceeded"
    if signum is not None:
        return Verdict.FAILED, f"killed by {_signal_name(signum)}"
    if exit_code == 0:
        return Verdict.COMPLETED, "exited with code 0"
    return Verdict.FAILED, f"exited with code {exit_code}"


# ------------------------------------------------------------- health check


@functools.cache
def _bwrap_probe_ok() -> bool:
    return _probe_bwrap()


def _probe_bwrap() -> bool:
    path = bwrap.find_bwrap()
    if path is None:
        return False
    limits = SandboxLimits(
        wall_time_s=10,
        cpu_time_s=5,
        memory_bytes=256 << 20,
        max_processes=8,
        output_bytes=4096,
        file_size_bytes=1 << 20,
        tmp_bytes=1 << 20,
    )
    status_r, status_w = os.pipe()
    report_r, report_w = os.pipe()
    filter_fd = seccomp.filter_fd() if seccomp.supported() else None
    run_uid = pick_run_uid()
    try:
        with bwrap.StagedFiles({}, limits) as staged:
            argv = bwrap.build_bwrap_argv(
                path, ["/bin/true"], limits, staged, status_w, report_w, seccomp_fd=filter_fd
            )
            prefix = _launch_prefix([], _rlimits(limits, False, False, run_uid), run_uid)
            result = subprocess.run(
                [*prefix, *argv],
                env={},
                capture_output=True,
                timeout=30,
                start_new_session=True,
                pass_fds=(
                    status_w,
                    report_w,
                    *staged.fds,
                    *([] if filter_fd is None else [filter_fd]),
                ),
            )
        return result.returncode == 0
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("bwrap probe failed: %s", exc)
        return False
    finally:
        for fd in (status_r, status_w, report_r, report_w):
            os.close(fd)
        if filter_fd is not None:
            os.close(filter_fd)
        if run_uid is not None:
            _uids_in_use.discard(run_uid)


def sandbox_layers() -> dict[str, bool]:
    """Which isolation layers are active, for the health check.

    The first call runs bwrap once (blocking, a few ms); a working result is
    cached for the life of the process, a failing one is re-probed.
    """
    ok = _bwrap_probe_ok()
    if not ok:
        _bwrap_probe_ok.cache_clear()
    return {
        "bwrap": ok,
        "seccomp": ok and seccomp.supported(),
        **cgroups.cgroup_layers(),
        "rlimits": True,
        "uid_isolation": os.geteuid() == 0,
    }
