"""Which isolation layers work on this machine, for the health check."""

from __future__ import annotations

import functools
import logging
import os
import subprocess

from sandmesh_runtime import uids
from services.executor.sandbox import bwrap, cgroups, seccomp
from services.executor.sandbox.launch import launch_prefix, rlimits
from services.executor.sandbox.limits import SandboxLimits

logger = logging.getLogger(__name__)


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
    run_uid = uids.pick()
    try:
        with bwrap.StagedFiles({}, limits) as staged:
            argv = bwrap.build_bwrap_argv(
                path, ["/bin/true"], limits, staged, status_w, report_w, seccomp_fd=filter_fd
            )
            prefix = launch_prefix([], rlimits(limits, False, False, run_uid), run_uid)
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
        uids.release(run_uid)


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
