"""The verdict judge on plain data: every rule without starting a process."""

from __future__ import annotations

import signal
from dataclasses import replace
from typing import Any

import pytest

from services.executor.sandbox.cgroups import CgroupStats
from services.executor.sandbox.limits import SandboxLimits
from services.executor.sandbox.outcome import Ending, KillReason, Verdict, judge

# Wall 2 s, CPU 1.5 s, 64 MiB, 16 tasks, 1000 bytes of output, 4096-byte files, 1 MiB tmpfs.
LIMITS = SandboxLimits(2, 1.5, 64 << 20, 16, 1000, 4096, 1 << 20)
# RLIMIT_CPU has whole seconds: 1.5 s becomes 2.
RLIMIT_CPU_NS = 2 * 1_000_000_000

EXITED_0 = Ending(
    kill_reason=None,
    stdout_truncated=False,
    stderr_truncated=False,
    stats=CgroupStats(
        peak_memory_bytes=1 << 20, cpu_time_ns=1000, oom_killed=False, memory_limit_hit=False
    ),
    executed=True,
    exit_code=0,
    signum=None,
    cpu_ns=1000,
    returncode=0,
)


def killed_by(signum: int, **changes: Any) -> Ending:
    """The command died of ``signum`` (bwrap reported 128 + N)."""
    return replace(EXITED_0, exit_code=None, signum=signum, **changes)


def oom(*, hit_only: bool = False) -> CgroupStats:
    return CgroupStats(
        peak_memory_bytes=64 << 20,
        cpu_time_ns=1000,
        oom_killed=not hit_only,
        memory_limit_hit=True,
    )


@pytest.mark.parametrize(
    ("reason", "verdict", "detail"),
    [
        (KillReason.CANCELLED, Verdict.CANCELLED, "cancelled while running"),
        (
            KillReason.EXPORT,
            Verdict.FAILED,
            "build output larger than the work directory limit",
        ),
        (KillReason.WALL, Verdict.TIMEOUT, "wall time limit of 2.0 s exceeded"),
        (KillReason.CPU, Verdict.TIMEOUT, "cpu time limit of 1.5 s exceeded"),
    ],
)
def test_each_kill_reason_has_its_verdict(
    reason: KillReason, verdict: Verdict, detail: str
) -> None:
    # The kill reason wins over how the command then died, an OOM included.
    ending = killed_by(signal.SIGKILL, kill_reason=reason, stats=oom())
    assert judge(LIMITS, ending) == (verdict, detail)


@pytest.mark.parametrize(
    ("stdout", "stderr", "streams"),
    [(True, False, "stdout"), (False, True, "stderr"), (True, True, "stdout and stderr")],
)
def test_output_limit_names_the_streams_cut(stdout: bool, stderr: bool, streams: str) -> None:
    ending = killed_by(
        signal.SIGKILL,
        kill_reason=KillReason.OUTPUT,
        stdout_truncated=stdout,
        stderr_truncated=stderr,
    )
    assert judge(LIMITS, ending) == (
        Verdict.OUTPUT_LIMIT,
        f"output limit of 1000 bytes exceeded on {streams}",
    )


@pytest.mark.parametrize(
    "ending",
    [
        replace(EXITED_0, exit_code=1, stats=oom()),
        killed_by(signal.SIGKILL, stats=oom()),
        killed_by(signal.SIGKILL, stats=oom(hit_only=True)),
        # An OOM before the command was exec'd is still the memory limit's.
        replace(EXITED_0, executed=False, exit_code=None, returncode=1, stats=oom()),
    ],
)
def test_memory_killed_is_memory_limit(ending: Ending) -> None:
    assert judge(LIMITS, ending) == (Verdict.MEMORY_LIMIT, "memory limit of 64 MiB exceeded")


def test_a_program_that_succeeded_despite_an_oom_completed() -> None:
    # A child of it was OOM-killed, but the program itself exited 0.
    assert judge(LIMITS, replace(EXITED_0, stats=oom())) == (
        Verdict.COMPLETED,
        "exited with code 0",
    )


def test_memory_limit_hit_without_sigkill_is_not_an_oom() -> None:
    ending = killed_by(signal.SIGSEGV, stats=oom(hit_only=True))
    assert judge(LIMITS, ending) == (Verdict.FAILED, "killed by SIGSEGV")


def test_without_a_cgroup_there_is_no_memory_verdict() -> None:
    assert judge(LIMITS, killed_by(signal.SIGKILL, stats=None)) == (
        Verdict.FAILED,
        "killed by SIGKILL",
    )


@pytest.mark.parametrize(
    ("returncode", "stderr", "detail"),
    [
        (-signal.SIGTERM, b"", "sandbox supervisor killed by SIGTERM"),
        (
            -signal.SIGTERM,
            b"bwrap: up\nbwrap: lost\n",
            "sandbox supervisor killed by SIGTERM: bwrap: lost",
        ),
        (1, b"", "sandbox setup failed: bwrap exited with code 1"),
        (1, b"bwrap: Can't mount tmpfs\n", "sandbox setup failed: bwrap: Can't mount tmpfs"),
    ],
)
def test_a_command_never_executed_is_a_system_error(
    returncode: int, stderr: bytes, detail: str
) -> None:
    # bwrap died before exec'ing the command: killed by a signal (named), or its set-up
    # failed; its last line on stderr says why.
    ending = replace(EXITED_0, executed=False, exit_code=None, returncode=returncode, stderr=stderr)
    assert judge(LIMITS, ending) == (Verdict.SYSTEM_ERROR, detail)


def test_a_program_that_could_not_be_exec_d_failed_by_itself() -> None:
    ending = replace(
        EXITED_0,
        executed=False,
        exit_code=None,
        returncode=1,
        exec_error="/usr/bin/python3: Argument list too long",
    )
    assert judge(LIMITS, ending) == (
        Verdict.FAILED,
        "the program could not be started: /usr/bin/python3: Argument list too long",
    )
    # A kill the supervisor gave a reason for is judged by that reason.
    assert judge(LIMITS, replace(ending, kill_reason=KillReason.WALL))[0] is Verdict.TIMEOUT


def test_a_toolchain_that_could_not_be_exec_d_is_our_failure() -> None:
    ending = replace(
        EXITED_0,
        executed=False,
        exit_code=None,
        returncode=1,
        exec_error="/nonexistent/python3: No such file or directory",
    )
    assert judge(LIMITS, ending) == (
        Verdict.SYSTEM_ERROR,
        "the toolchain could not be started: /nonexistent/python3: No such file or directory",
    )


def test_sigxcpu_is_a_cpu_timeout() -> None:
    assert judge(LIMITS, killed_by(signal.SIGXCPU)) == (
        Verdict.TIMEOUT,
        "cpu time limit of 1.5 s exceeded",
    )


def test_sigkill_past_the_cpu_rlimit_is_a_cpu_timeout() -> None:
    # RLIMIT_CPU's hard limit sends SIGKILL to a program that caught SIGXCPU.
    assert judge(LIMITS, killed_by(signal.SIGKILL, cpu_ns=RLIMIT_CPU_NS))[0] is Verdict.TIMEOUT
    assert judge(LIMITS, killed_by(signal.SIGKILL, cpu_ns=RLIMIT_CPU_NS - 1)) == (
        Verdict.FAILED,
        "killed by SIGKILL",
    )


def test_sigxfsz_is_the_file_size_limit() -> None:
    assert judge(LIMITS, killed_by(signal.SIGXFSZ)) == (
        Verdict.FAILED,
        "file size limit of 4096 bytes exceeded",
    )


def test_an_unnamed_signal_is_numbered() -> None:
    assert judge(LIMITS, killed_by(signal.SIGRTMIN + 1)) == (
        Verdict.FAILED,
        f"killed by SIG{signal.SIGRTMIN + 1}",
    )


@pytest.mark.parametrize(
    ("exit_code", "verdict", "detail"),
    [
        (0, Verdict.COMPLETED, "exited with code 0"),
        (1, Verdict.FAILED, "exited with code 1"),
        (127, Verdict.FAILED, "exited with code 127"),
    ],
)
def test_an_exit_code_is_completed_or_failed(exit_code: int, verdict: Verdict, detail: str) -> None:
    assert judge(LIMITS, replace(EXITED_0, exit_code=exit_code)) == (verdict, detail)
