"""Starting a sandbox: its rlimits, its host uid, and the command chain that becomes bwrap.

The sandbox is spawned without a ``preexec_fn``: that forces a real fork() of this
multi-threaded process, and gRPC's at-fork handlers then restart its poller threads in the
child, which can abort it.  Instead the child is a vfork that only execs, and each step of
the set-up is a command exec'ing the next: ``sh`` joins the run's cgroup, ``prlimit`` sets
the rlimits while still root, ``setpriv`` drops to the run's uid, then ``bwrap``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from services.executor.sandbox import bwrap, cgroups, procfs, seccomp
from services.executor.sandbox.limits import SandboxLimits
from services.executor.sandbox.outcome import RunOutcome, Verdict, early_outcome

_NOFILE = 256
# The outer bwrap and the sandbox's pid 1 (our init) are tasks too.
BWRAP_TASKS = 2

# Random host uids for sandboxes started as root: above systemd's container
# ranges and below its "foreign" range and 2**31.


@dataclass(frozen=True)
class SandboxOptions:
    """How the sandbox around one command looks, beyond its limits.

    env: added to the clean environment.
    ro_binds: extra host paths shown read-only (a toolchain's configuration).
    executable: program files staged with the executable bit.
    export_work: when the command exits 0, /work is archived (tar) through an
        inherited pipe and returned in ``RunOutcome.exported``: how a build's
        output reaches the next sandbox without touching the host's disk.
    seccomp: the syscall allow-list. The executor never turns it off; `make bench` does,
        side by side, to show what the filter costs.
    """

    env: Mapping[str, str] = field(default_factory=dict)
    ro_binds: tuple[str, ...] = ()
    executable: frozenset[str] = frozenset()
    export_work: bool = False
    seccomp: bool = True


DEFAULT_OPTIONS = SandboxOptions()


# ------------------------------------------------------------------ host uids


# -------------------------------------------------------------------- rlimits


def rlimits_for(
    limits: SandboxLimits, cg: cgroups.RunCgroup | None, run_uid: int | None
) -> list[tuple[int, int, int]]:
    """The rlimits a run with ``limits`` gets, as (resource, soft, hard)."""
    return rlimits(
        limits,
        memory_in_cgroup=cg is not None and cg.has_memory,
        tasks_in_cgroup=cg is not None and cg.has_pids,
        run_uid=run_uid,
    )


def rlimits(
    limits: SandboxLimits, memory_in_cgroup: bool, tasks_in_cgroup: bool, run_uid: int | None
) -> list[tuple[int, int, int]]:
    """The rlimits for ``limits`` given what the cgroup already bounds, within our own."""
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
        nproc = procfs.uid_task_count(os.getuid()) + limits.max_processes + BWRAP_TASKS
        wanted.append((resource.RLIMIT_NPROC, nproc, nproc))
    result: list[tuple[int, int, int]] = []
    for res, soft, hard in wanted:
        _, cur_hard = resource.getrlimit(res)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        result.append((res, soft, hard))
    return result


# ------------------------------------------------------------- the launch chain


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


def launch_prefix(
    procs_files: list[str], rlimits: list[tuple[int, int, int]], run_uid: int | None
) -> list[str]:
    """Commands that prepare the process bwrap will become, each exec'ing the next.

    The order matters: join the run's cgroup first (no window outside it), set the
    rlimits while still root, then drop to the run's uid.
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
    filter_fd = seccomp.filter_fd() if options.seccomp and seccomp.supported() else None
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
        prefix = launch_prefix(
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
