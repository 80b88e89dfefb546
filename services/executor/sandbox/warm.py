"""Warm pools: sandboxes started ahead of time, each waiting for exactly one program.

A warm sandbox is bwrap with a tiny launcher (the system Python, code passed with `-c`, so
nothing of it sits in /work) blocked on an inherited pipe. It was started under the
language's hard bounds; when a run claims it, the host lowers its cgroup to the run's
limits and sends one message: the rlimits to set, the files to write into /work and the
argv. The launcher writes the files (no-follow, exclusive create), closes the pipe, lowers
its rlimits and execs the program, always: a fresh interpreter shows nothing of the launcher
(modules, globals, argv), so a warm run looks exactly like a cold one from inside. An exec
that fails is reported on a pipe of its own, like init's. The sandbox serves that one run and
is destroyed; a fresh one is started in the background.

Only requests whose tmp size equals the pool's (the language default) are served warm: the
tmpfs size is fixed when bwrap mounts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

# A module, not its names: verdicts imports this package in turn.
from sandmesh_runtime import uids
from services.executor import verdicts
from services.executor.languages import LanguageSpec
from services.executor.sandbox import bwrap, cgroups
from services.executor.sandbox.launch import (
    BWRAP_TASKS,
    SandboxOptions,
    Started,
    rlimits_for,
    start_sandbox,
)
from services.executor.sandbox.limits import SandboxLimits
from services.executor.sandbox.outcome import OutputSink, RunOutcome, Verdict, early_outcome
from services.executor.sandbox.supervise import release, supervise

log = logging.getLogger("sandmesh.executor")

LAUNCHER_PYTHON = "/usr/bin/python3"
_LAUNCHER = r"""
import fcntl, json, os, resource, struct, sys
fd, report = int(sys.argv[1]), int(sys.argv[2])
fcntl.fcntl(report, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
chunks = []
while True:
    chunk = os.read(fd, 1 << 20)
    if not chunk:
        break
    chunks.append(chunk)
os.close(fd)
if not chunks:
    os._exit(125)
data = b"".join(chunks)
(size,) = struct.unpack("!I", data[:4])
header = json.loads(data[4:4 + size])
offset = 4 + size
for name, length in header["files"]:
    parent = os.path.dirname(name)
    if parent:
        os.makedirs(parent, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.open(name, flags, 0o644)
    os.write(out, data[offset:offset + length])
    os.close(out)
    offset += length
del data, chunks
for res, soft, hard in header["rlimits"]:
    resource.setrlimit(res, (soft, hard))
argv = header["argv"]
try:
    os.execv(argv[0], argv)
except OSError as exc:
    os.write(report, f"{argv[0]}: {exc.strerror}".encode())
    os._exit(127)
"""


def _message(
    argv: Sequence[str],
    files: Mapping[str, bytes],
    rlimits: list[tuple[int, int, int]],
) -> bytes:
    names = sorted(files)
    header = json.dumps(
        {
            "argv": list(argv),
            "files": [[name, len(files[name])] for name in names],
            "rlimits": rlimits,
        }
    ).encode()
    return b"".join([struct.pack("!I", len(header)), header, *(files[n] for n in names)])


# A pipe holds 64 KiB: a smaller message to a launcher waiting on an empty pipe never blocks.
_PIPE_CAPACITY = 65536


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@dataclass
class WarmSandbox:
    """One pre-started sandbox; `run` may be called once."""

    language: str
    started: Started
    control_w: int
    tmp_bytes: int
    # Called once the sandbox is gone: the pool starts its replacement then, off the
    # critical path of the run it served (spawning bwrap forks on the event loop).
    on_done: Callable[[], None] = field(default=lambda: None)
    _used: bool = field(default=False)

    @property
    def alive(self) -> bool:
        return self.started.proc.returncode is None

    async def run(
        self,
        argv: Sequence[str],
        files: Mapping[str, bytes],
        stdin: bytes,
        limits: SandboxLimits,
        on_output: OutputSink | None,
        cancel: asyncio.Event,
    ) -> RunOutcome | None:
        """The run's outcome, or None when this sandbox cannot take it (run it cold)."""
        assert not self._used, "a warm sandbox serves exactly one run"
        self._used = True
        st = self.started
        try:
            try:
                # The same checks a cold sandbox's staging makes.
                for name, data in files.items():
                    bwrap.validate_file_name(name)
                    if len(data) > limits.file_size_bytes:
                        raise ValueError(f"{name!r} is larger than the file size limit")
            except ValueError as exc:
                return early_outcome(Verdict.FAILED, f"cannot prepare program files: {exc}")
            cg = st.cg
            if cg is not None:
                try:
                    cg.lower_limits(
                        limits.memory_bytes,
                        limits.max_processes + BWRAP_TASKS,
                        limits.cpu_millicores,
                    )
                except OSError as exc:
                    log.warning("cannot tighten a warm sandbox", extra={"error": str(exc)})
                    return None
            rlimits = rlimits_for(limits, cg, st.run_uid)
            baseline = (cg.cpu_time_ns() or 0) if cg is not None and cg.has_cpu else 0
            message = _message(argv, files, rlimits)
            st.started = time.monotonic()
            try:
                if len(message) <= _PIPE_CAPACITY:
                    _write_all(self.control_w, message)
                else:
                    await asyncio.to_thread(_write_all, self.control_w, message)
            except OSError as exc:
                log.warning("warm sandbox did not take its program", extra={"error": str(exc)})
            finally:
                os.close(self.control_w)
            return await supervise(st, stdin, limits, on_output, cancel, baseline)
        finally:
            st.close()
            await release(st.cg, st.run_uid)
            self.on_done()

    async def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.control_w)
        self.started.close()
        await release(self.started.cg, self.started.run_uid)
        with contextlib.suppress(ProcessLookupError):
            await self.started.proc.wait()


async def start_warm(spec: LanguageSpec) -> WarmSandbox | None:
    """A sandbox for `spec` under its hard bounds, waiting for its program."""
    bwrap_path = bwrap.find_bwrap()
    if bwrap_path is None:
        return None
    bounds = verdicts.sandbox_limits(spec.max_limits)
    tmp_bytes = spec.default_limits.tmp_mb * 1024 * 1024
    # The bounds any run may ask for; the run's own are set at hand-over (waiting costs no
    # CPU, and the wall clock starts then).
    limits = replace(bounds, tmp_bytes=tmp_bytes)
    try:
        staged = bwrap.StagedFiles({}, limits)
    except OSError as exc:
        log.warning("warm sandbox failed to start", extra={"detail": str(exc)})
        return None
    control_r, control_w = os.pipe()
    report_r, report_w = os.pipe()
    cg = cgroups.create_run_cgroup(
        limits.memory_bytes, limits.max_processes + BWRAP_TASKS, limits.cpu_millicores
    )
    run_uid = uids.pick()
    try:
        with staged:
            started = await start_sandbox(
                bwrap_path,
                [LAUNCHER_PYTHON, "-I", "-c", _LAUNCHER, str(control_r), str(report_w)],
                staged,
                limits,
                SandboxOptions(env=spec.env, ro_binds=spec.ro_binds),
                cg,
                run_uid,
                pass_fds=(control_r, report_w),
            )
    finally:
        os.close(control_r)
        os.close(report_w)
    if isinstance(started, RunOutcome):
        os.close(control_w)
        os.close(report_r)
        await release(cg, run_uid)
        log.warning("warm sandbox failed to start", extra={"detail": started.detail})
        return None
    started.report_fds.append(report_r)
    return WarmSandbox(spec.id, started, control_w, tmp_bytes)


class WarmPools:
    """Per-language pools of `size` warm sandboxes, refilled in the background."""

    def __init__(self, registry: Mapping[str, LanguageSpec], size: int) -> None:
        self._specs = {k: s for k, s in registry.items() if not s.compiled and size > 0}
        self._size = size
        self._idle: dict[str, list[WarmSandbox]] = {k: [] for k in self._specs}
        self._filling: set[asyncio.Task[None]] = set()
        self._stopped = False
        self.served_warm = 0
        self.served_cold = 0

    def idle(self) -> dict[str, int]:
        return {k: len(v) for k, v in self._idle.items()}

    def start(self) -> None:
        for language in self._specs:
            for _ in range(self._size):
                self._refill(language)

    def _refill(self, language: str) -> None:
        if self._stopped:
            return

        async def fill() -> None:
            sandbox = await start_warm(self._specs[language])
            if sandbox is None:
                return
            if self._stopped:
                await sandbox.discard()
                return
            self._idle[language].append(sandbox)

        task = asyncio.create_task(fill())
        self._filling.add(task)
        task.add_done_callback(self._filling.discard)

    def claim(self, language: str, limits: SandboxLimits) -> WarmSandbox | None:
        """A warm sandbox fit for `limits`, taken out of the pool, or None (run cold)."""
        idle = self._idle.get(language)
        while idle and idle[-1].tmp_bytes == limits.tmp_bytes:
            sandbox = idle.pop()
            if sandbox.alive:
                self.served_warm += 1
                sandbox.on_done = lambda: self._refill(language)
                return sandbox
            self._refill(language)
            self._discard_later(sandbox)
        self.served_cold += 1
        return None

    def _discard_later(self, sandbox: WarmSandbox) -> None:
        task = asyncio.create_task(sandbox.discard())
        self._filling.add(task)
        task.add_done_callback(self._filling.discard)

    async def stop(self) -> None:
        self._stopped = True
        await asyncio.gather(*self._filling, return_exceptions=True)
        for pool in self._idle.values():
            while pool:
                await pool.pop().discard()
