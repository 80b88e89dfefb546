"""How a sandboxed run ended: the verdict, the outcome, and the judge that decides between them.

The judge is a pure function of plain data (an ``Ending``), so every rule it applies can be
tested without starting a process.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from services.executor.sandbox.cgroups import CgroupStats
from services.executor.sandbox.limits import SandboxLimits

OutputSink = Callable[[str, bytes], Awaitable[None]]


class Verdict(StrEnum):
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    MEMORY_LIMIT = "MEMORY_LIMIT"
    OUTPUT_LIMIT = "OUTPUT_LIMIT"
    SYSTEM_ERROR = "SYSTEM_ERROR"
    CANCELLED = "CANCELLED"


class KillReason(StrEnum):
    """Why the supervisor killed a run; the first reason given is the one judged."""

    OUTPUT = "output"  # a stream went past the output limit
    CANCELLED = "cancelled"  # a cancel event
    EXPORT = "export"  # the exported /work archive went past its cap
    WALL = "wall"  # the wall-clock limit
    CPU = "cpu"  # the run's total CPU time, summed over its processes


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


@dataclass(frozen=True)
class Ending:
    """What is known once a sandbox is gone: everything the verdict depends on.

    executed: the command was exec'd (bwrap reported its exit status).
    exit_code / signum: how the command ended (a signal as 128 + N in bwrap's status).
    returncode: bwrap's own (negative for a signal).
    exec_error: why init or a warm launcher could not exec the program ("" when it did).
    """

    kill_reason: KillReason | None
    stdout_truncated: bool
    stderr_truncated: bool
    stats: CgroupStats | None
    executed: bool
    exit_code: int | None
    signum: int | None
    cpu_ns: int
    returncode: int
    stderr: bytes = b""
    exec_error: str = ""


def judge(limits: SandboxLimits, ending: Ending) -> tuple[Verdict, str]:
    """The verdict of a run that ended as ``ending`` under ``limits``, with its detail."""
    if ending.exec_error and not ending.executed and ending.kill_reason is None:
        if os.strerror(errno.E2BIG) in ending.exec_error:
            # The user's request (its arguments) is what the program could not start
            # with: the program's own failure, never a retry of ours.
            return Verdict.FAILED, f"the program could not be started: {ending.exec_error}"
        # The run command is the language's, not the user's: a toolchain that cannot be
        # executed (missing, not executable) is our failure, retried and then dead-lettered.
        return Verdict.SYSTEM_ERROR, f"the toolchain could not be started: {ending.exec_error}"
    wall_msg = f"wall time limit of {_seconds(limits.wall_time_s)} s exceeded"
    cpu_msg = f"cpu time limit of {_seconds(limits.cpu_time_s)} s exceeded"
    mem_msg = f"memory limit of {_mib(limits.memory_bytes)} MiB exceeded"
    match ending.kill_reason:
        case KillReason.OUTPUT:
            streams = [
                name
                for name, truncated in (
                    ("stdout", ending.stdout_truncated),
                    ("stderr", ending.stderr_truncated),
                )
                if truncated
            ]
            return (
                Verdict.OUTPUT_LIMIT,
                f"output limit of {limits.output_bytes} bytes exceeded on {' and '.join(streams)}",
            )
        case KillReason.CANCELLED:
            return Verdict.CANCELLED, "cancelled while running"
        case KillReason.EXPORT:
            return Verdict.FAILED, "build output larger than the work directory limit"
        case KillReason.WALL:
            return Verdict.TIMEOUT, wall_msg
        case KillReason.CPU:
            return Verdict.TIMEOUT, cpu_msg
    signum = ending.signum
    stats = ending.stats
    succeeded = ending.executed and ending.exit_code == 0
    memory_killed = stats is not None and (
        stats.oom_killed or (stats.memory_limit_hit and signum == signal.SIGKILL)
    )
    if memory_killed and not succeeded:
        return Verdict.MEMORY_LIMIT, mem_msg
    if not ending.executed:
        message = ending.stderr.decode("utf-8", "replace").strip().splitlines()
        if ending.returncode < 0:
            said = f": {message[-1]}" if message else ""
            return (
                Verdict.SYSTEM_ERROR,
                f"sandbox supervisor killed by {signal_name(-ending.returncode)}{said}",
            )
        reason = message[-1] if message else f"bwrap exited with code {ending.returncode}"
        return Verdict.SYSTEM_ERROR, f"sandbox setup failed: {reason}"
    if signum == signal.SIGXCPU or (
        signum == signal.SIGKILL and ending.cpu_ns >= limits.cpu_rlimit_s * 1_000_000_000
    ):
        return Verdict.TIMEOUT, cpu_msg
    if signum == signal.SIGXFSZ:
        return Verdict.FAILED, f"file size limit of {limits.file_size_bytes} bytes exceeded"
    if signum is not None:
        return Verdict.FAILED, f"killed by {signal_name(signum)}"
    if ending.exit_code == 0:
        return Verdict.COMPLETED, "exited with code 0"
    return Verdict.FAILED, f"exited with code {ending.exit_code}"


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


def signal_name(signum: int) -> str:
    """``SIGKILL`` for 9; ``SIG<n>`` for a number with no name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def _seconds(value: float) -> str:
    return f"{value:.1f}" if round(value, 1) == value else f"{value:g}"


def _mib(value: int) -> str:
    mib = value / (1024 * 1024)
    return f"{mib:.0f}" if mib == int(mib) else f"{mib:.1f}"
