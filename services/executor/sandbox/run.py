"""One program, one fresh sandbox: stage its files, start bwrap, supervise it, clean up."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from sandmesh_runtime import uids
from services.executor.sandbox import bwrap, cgroups
from services.executor.sandbox.launch import (
    BWRAP_TASKS,
    DEFAULT_OPTIONS,
    SandboxOptions,
    start_sandbox,
)
from services.executor.sandbox.limits import SandboxLimits
from services.executor.sandbox.outcome import OutputSink, RunOutcome, Verdict, early_outcome
from services.executor.sandbox.supervise import release, supervise


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
        run_uid = uids.pick()
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
