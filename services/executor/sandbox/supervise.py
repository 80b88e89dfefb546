"""Watching a started sandbox: feed stdin, capture output, enforce limits, judge, clean up.

CPU time and peak memory come from the cgroup.  Without one they are sampled from /proc
over bwrap's process tree (densely at first, then every 100 ms), which gives lower bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from typing import Any

from sandmesh_runtime import uids
from services.executor.sandbox import cgroups, init, procfs
from services.executor.sandbox.launch import Started
from services.executor.sandbox.limits import SandboxLimits
from services.executor.sandbox.outcome import (
    Ending,
    KillReason,
    OutputSink,
    RunOutcome,
    Verdict,
    judge,
    signal_name,
)

logger = logging.getLogger(__name__)

_CHUNK = 64 * 1024
# How long readers may take to see EOF once the sandbox is gone.
_DRAIN_GRACE_S = 2.0
_MONITOR_INTERVAL_S = 0.05
_SAMPLE_INTERVAL_S = 0.1

# Keeps cleanup tasks alive when the run itself was cancelled.
_background: set[asyncio.Task[None]] = set()


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
        self.kill_reason: KillReason | None = None
        self.sink_error: Exception | None = None
        self.stdout = _Capture()
        self.stderr = _Capture()
        needs_sampler = cg is None or not (cg.has_cpu and cg.has_memory)
        self.sampler = procfs.TreeSampler(proc.pid) if needs_sampler else None
        self.peak_memory = 0

    def kill(self, reason: KillReason | None = None) -> None:
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
            procfs.kill_uid(self.run_uid)

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
                self.kill(KillReason.OUTPUT)

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
                self.kill(KillReason.CPU)
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
                run.kill(KillReason.EXPORT)
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
            run.kill(KillReason.CANCELLED if cancelled in done else KillReason.WALL)
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

    verdict, detail = judge(
        limits,
        Ending(
            kill_reason=run.kill_reason,
            stdout_truncated=run.stdout.truncated,
            stderr_truncated=run.stderr.truncated,
            stats=stats,
            executed=command_exit is not None,
            exit_code=exit_code,
            signum=signum,
            cpu_ns=cpu_ns,
            returncode=returncode,
            stderr=bytes(run.stderr.data),
            exec_error=not_executed.decode("utf-8", "replace"),
        ),
    )
    exported = None
    if export is not None and verdict is Verdict.COMPLETED and not export.cancelled():
        exported = export.result() if export.exception() is None else None
    return RunOutcome(
        verdict=verdict,
        exit_code=exit_code,
        signal_name=signal_name(signum) if signum is not None else None,
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


async def _cleanup(cg: cgroups.RunCgroup | None, run_uid: int | None) -> None:
    try:
        if cg is not None:
            await cg.destroy()
        elif run_uid is not None:
            procfs.kill_uid(run_uid)
    finally:
        uids.release(run_uid)


async def release(cg: cgroups.RunCgroup | None, run_uid: int | None) -> None:
    """Kill whatever is left of a sandbox and free its cgroup and uid, even if cancelled."""
    task = asyncio.create_task(_cleanup(cg, run_uid))
    _background.add(task)
    task.add_done_callback(_background.discard)
    await asyncio.shield(task)
