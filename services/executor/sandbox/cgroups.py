"""Per-run cgroups: memory, task and CPU-share limits, CPU accounting, OOM detection.

One child cgroup is created per run under the executor's own cgroup (cgroup
v2 when the unified hierarchy has the memory controller, else the v1
memory, pids, cpu and cpuacct hierarchies).  The CPU share is a bandwidth
limit (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``): a run's threads together get
at most their cores' worth of time per period, whatever else is idle, so a
neighbour's latency does not depend on how many threads a program starts.  The sandbox joins it
before bwrap is exec'd (no ``preexec_fn``: the first command of its launch chain, a ``sh``
writing ``cgroup.procs``, see ``launch``), so no process of the run can escape it, and
everything in it is killed before it is removed.  When nothing is writable,
``create_run_cgroup`` returns None and the sandbox falls back to rlimits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import secrets
import signal
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

RUN_PREFIX = "sandmesh-run-"
# Leaf the executor moves itself into when cgroup v2 forbids enabling
# controllers in a cgroup that still has processes ("no internal processes").
EXECUTOR_LEAF = "sandmesh-executor"

_PROC_SELF_CGROUP = "/proc/self/cgroup"
_PROC_SELF_MOUNTINFO = "/proc/self/mountinfo"
_V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
# The CFS period: 100 ms, the kernel's default; quotas are thousandths of a core of it.
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupStats:
    """Accounting read back after a run; None where the kernel has no counter."""

    peak_memory_bytes: int | None
    cpu_time_ns: int | None
    oom_killed: bool
    # An OOM is likely but not certain; only trusted with a SIGKILL death.
    memory_limit_hit: bool


@dataclass(frozen=True)
class _Mount:
    root: str
    mountpoint: str
    fstype: str
    superopts: frozenset[str]


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _read_mounts() -> list[_Mount]:
    mounts: list[_Mount] = []
    with open(_PROC_SELF_MOUNTINFO, encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            try:
                sep = fields.index("-")
                mounts.append(
                    _Mount(
                        root=_unescape(fields[3]),
                        mountpoint=_unescape(fields[4]),
                        fstype=fields[sep + 1],
                        superopts=frozenset(fields[sep + 3].split(",")),
                    )
                )
            except (ValueError, IndexError):
                continue
    return mounts


def _read_self_cgroups() -> tuple[str | None, dict[str, str]]:
    """(v2 path, {v1 controller: path}) of the current process."""
    v2: str | None = None
    v1: dict[str, str] = {}
    with open(_PROC_SELF_CGROUP, encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) != 3:
                continue
            hier_id, controllers, path = parts
            if hier_id == "0" and controllers == "":
                v2 = path
            else:
                for ctrl in controllers.split(","):
                    if ctrl:
                        v1[ctrl] = path
    return v2, v1


def _host_dir(mount: _Mount, cg_path: str) -> Path | None:
    """Where cgroup ``cg_path`` of this hierarchy appears under ``mount``."""
    if ".." in cg_path.split("/"):
        return None
    root = mount.root.rstrip("/")
    if root and cg_path != root and not cg_path.startswith(root + "/"):
        return None
    rel = cg_path[len(root) :].strip("/")
    return Path(mount.mountpoint, rel) if rel else Path(mount.mountpoint)


def _read(path: Path) -> str:
    # Host-side file work never follows a symlink.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    with open(fd, encoding="ascii") as fh:
        return fh.read()


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.write(fd, value.encode("ascii"))
    finally:
        os.close(fd)


def _read_int(path: Path) -> int | None:
    try:
        return int(_read(path).strip())
    except (OSError, ValueError):
        return None


def _read_keyed(path: Path) -> dict[str, int]:
    result: dict[str, int] = {}
    try:
        text = _read(path)
    except OSError:
        return result
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            result[key] = int(value)
    return result


def _read_pids(procs_file: Path) -> set[int]:
    try:
        return {int(tok) for tok in _read(procs_file).split()}
    except (OSError, ValueError):
        return set()


def _kill_listed(procs_files: list[Path]) -> int:
    """SIGKILL every process listed; returns how many were listed.

    A pidfd is taken first and the pid re-checked in the cgroup afterwards,
    so a pid that was recycled by an unrelated process is never signalled.
    """
    listed: set[int] = set()
    for procs in procs_files:
        listed |= _read_pids(procs)
    if not listed:
        return 0
    pidfds: dict[int, int] = {}
    try:
        for pid in listed:
            try:
                pidfds[pid] = os.pidfd_open(pid)
            except OSError:
                continue
        still: set[int] = set()
        for procs in procs_files:
            still |= _read_pids(procs)
        for pid, pidfd in pidfds.items():
            if pid in still:
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)
    return len(listed)


class RunCgroup:
    """The cgroup(s) of one run.  Create with ``create_run_cgroup``."""

    def __init__(
        self,
        version: int,
        dirs: list[Path],
        memory_dir: Path | None,
        pids_dir: Path | None,
        cpu_dir: Path | None,
        cpu_max_dir: Path | None,
    ) -> None:
        self.version = version
        self._dirs = dirs
        self._memory_dir = memory_dir
        self._pids_dir = pids_dir
        self._cpu_dir = cpu_dir
        self._cpu_max_dir = cpu_max_dir

    @property
    def has_memory(self) -> bool:
        return self._memory_dir is not None

    @property
    def has_pids(self) -> bool:
        return self._pids_dir is not None

    @property
    def has_cpu(self) -> bool:
        return self._cpu_dir is not None

    @property
    def has_cpu_max(self) -> bool:
        return self._cpu_max_dir is not None

    @property
    def procs_files(self) -> list[str]:
        """``cgroup.procs`` files a process writes "0" to in order to join."""
        return [str(d / "cgroup.procs") for d in self._dirs]

    def lower_limits(self, memory_bytes: int, max_tasks: int, cpu_millicores: int) -> None:
        """Tighten the limits of a cgroup made with larger ones (a warm sandbox's)."""
        if self.version == 2:
            if self._memory_dir is not None:
                _write(self._memory_dir / "memory.max", str(memory_bytes))
            if self._pids_dir is not None:
                _write(self._pids_dir / "pids.max", str(max_tasks))
            if self._cpu_max_dir is not None:
                _write(self._cpu_max_dir / "cpu.max", _cpu_max(cpu_millicores))
            return
        for ctrl, d in (
            ("memory", self._memory_dir),
            ("pids", self._pids_dir),
            ("cpu", self._cpu_max_dir),
        ):
            if d is not None:
                _configure_v1(ctrl, d, memory_bytes, max_tasks, cpu_millicores)

    def cpu_time_ns(self) -> int | None:
        if self._cpu_dir is None:
            return None
        if self.version == 2:
            usec = _read_keyed(self._cpu_dir / "cpu.stat").get("usage_usec")
            return None if usec is None else usec * 1000
        return _read_int(self._cpu_dir / "cpuacct.usage")

    def memory_current(self) -> int | None:
        if self._memory_dir is None:
            return None
        name = "memory.current" if self.version == 2 else "memory.usage_in_bytes"
        return _read_int(self._memory_dir / name)

    def stats(self) -> CgroupStats:
        peak: int | None = None
        oom = False
        hit = False
        mem = self._memory_dir
        if mem is not None and self.version == 2:
            peak = _read_int(mem / "memory.peak")
            events = _read_keyed(mem / "memory.events")
            oom = events.get("oom_kill", 0) > 0
            hit = oom or events.get("oom", 0) > 0
        elif mem is not None:
            peak = _read_int(mem / "memory.max_usage_in_bytes")
            control = _read_keyed(mem / "memory.oom_control")
            oom = control.get("oom_kill", 0) > 0 or control.get("under_oom", 0) > 0
            # Kernels before 4.13 have no oom_kill counter; failcnt also counts
            # limit hits that reclaim resolved, hence only a hint.
            hit = oom or (
                "oom_kill" not in control and (_read_int(mem / "memory.failcnt") or 0) > 0
            )
        return CgroupStats(
            peak_memory_bytes=peak,
            cpu_time_ns=self.cpu_time_ns(),
            oom_killed=oom,
            memory_limit_hit=hit,
        )

    def kill_all(self) -> None:
        """Send SIGKILL to every process in the run's cgroup(s)."""
        if self.version == 2:
            kill_file = self._dirs[0] / "cgroup.kill"
            try:
                _write(kill_file, "1")
                return
            except OSError:
                pass  # before Linux 5.14
        _kill_listed([Path(p) for p in self.procs_files])

    def is_empty(self) -> bool:
        return not any(_read_pids(Path(p)) for p in self.procs_files)

    async def destroy(self, timeout_s: float = 5.0) -> bool:
        """Kill everything left in the cgroup(s) and remove them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        delay = 0.005
        remaining = list(self._dirs)
        while True:
            self.kill_all()
            left: list[Path] = []
            for d in remaining:
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        logger.warning("cannot remove cgroup %s: %s", d, exc)
                        continue
                    left.append(d)
            remaining = left
            if not remaining:
                return True
            if loop.time() >= deadline:
                logger.warning("cgroups still busy after run: %s", remaining)
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    def remove_now(self) -> None:
        """Synchronous best-effort removal (no waiting)."""
        self.kill_all()
        for d in self._dirs:
            with contextlib.suppress(OSError):
                os.rmdir(d)


# ---------------------------------------------------------------- discovery


@dataclass(frozen=True)
class _Layout:
    v2_dir: Path | None
    v1_dirs: dict[str, Path]


def _discover() -> _Layout:
    try:
        mounts = _read_mounts()
        v2_path, v1_paths = _read_self_cgroups()
    except OSError:
        return _Layout(None, {})
    v2_dir: Path | None = None
    if v2_path is not None:
        # After _v2_prepare moved us into our leaf, runs still go beside it.
        head, _, tail = v2_path.rpartition("/")
        if tail == EXECUTOR_LEAF:
            v2_path = head or "/"
        for m in mounts:
            if m.fstype == "cgroup2":
                d = _host_dir(m, v2_path)
                if d is not None and (d / "cgroup.controllers").exists():
                    v2_dir = d
                    break
    v1_dirs: dict[str, Path] = {}
    for ctrl in _V1_CONTROLLERS:
        path = v1_paths.get(ctrl)
        if path is None:
            continue
        for m in mounts:
            if m.fstype == "cgroup" and ctrl in m.superopts:
                d = _host_dir(m, path)
                if d is not None and d.is_dir():
                    v1_dirs[ctrl] = d
                    break
    return _Layout(v2_dir, v1_dirs)


_v2_state: dict[Path, bool] = {}


def _v2_prepare(parent: Path) -> bool:
    """Make memory (and pids and cpu if present) available to children of ``parent``."""
    cached = _v2_state.get(parent)
    if cached is not None:
        return cached
    ok = False
    try:
        available = set(_read(parent / "cgroup.controllers").split())
        if "memory" in available:
            wanted = {"memory", "pids", "cpu"} & available
            try:
                _v2_enable(parent, wanted)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                # The executor itself sits in ``parent``: move it to a leaf.
                leaf = parent / EXECUTOR_LEAF
                leaf.mkdir(exist_ok=True)
                _write(leaf / "cgroup.procs", "0")
                _v2_enable(parent, wanted)
            ok = True
    except OSError as exc:
        logger.info("cgroup v2 not usable at %s: %s", parent, exc)
    _v2_state[parent] = ok
    return ok


def _v2_enable(parent: Path, wanted: set[str]) -> None:
    enabled = set(_read(parent / "cgroup.subtree_control").split())
    for ctrl in sorted(wanted - enabled):
        _write(parent / "cgroup.subtree_control", f"+{ctrl}")


def _cpu_max(cpu_millicores: int) -> str:
    return f"{cpu_millicores * CPU_PERIOD_US // 1000} {CPU_PERIOD_US}"


def _create_v2(
    parent: Path, name: str, memory_bytes: int, max_tasks: int, cpu_millicores: int
) -> RunCgroup | None:
    if not _v2_prepare(parent):
        return None
    d = parent / name
    try:
        d.mkdir(mode=0o755)
    except OSError as exc:
        logger.info("cannot create cgroup %s: %s", d, exc)
        return None
    try:
        _write(d / "memory.max", str(memory_bytes))
        if (d / "memory.swap.max").exists():
            _write(d / "memory.swap.max", "0")
        if (d / "memory.oom.group").exists():
            # An OOM kills the whole run rather than one random process.
            _write(d / "memory.oom.group", "1")
        has_pids = (d / "pids.max").exists()
        if has_pids:
            _write(d / "pids.max", str(max_tasks))
        has_cpu_max = (d / "cpu.max").exists()
        if has_cpu_max:
            _write(d / "cpu.max", _cpu_max(cpu_millicores))
    except OSError as exc:
        logger.warning("cannot configure cgroup %s: %s", d, exc)
        with contextlib.suppress(OSError):
            d.rmdir()
        return None
    return RunCgroup(
        version=2,
        dirs=[d],
        memory_dir=d,
        pids_dir=d if has_pids else None,
        cpu_dir=d if (d / "cpu.stat").exists() else None,
        cpu_max_dir=d if has_cpu_max else None,
    )


def _configure_v1(
    ctrl: str, d: Path, memory_bytes: int, max_tasks: int, cpu_millicores: int
) -> None:
    if ctrl == "memory":
        _write(d / "memory.limit_in_bytes", str(memory_bytes))
        # memsw must be set after the memory limit (it may not be lower).
        if (d / "memory.memsw.limit_in_bytes").exists():
            _write(d / "memory.memsw.limit_in_bytes", str(memory_bytes))
        with contextlib.suppress(OSError):
            _write(d / "memory.swappiness", "0")
    elif ctrl == "pids":
        _write(d / "pids.max", str(max_tasks))
    elif ctrl == "cpu":
        _write(d / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(d / "cpu.cfs_quota_us", str(cpu_millicores * CPU_PERIOD_US // 1000))


def _create_v1(
    dirs: dict[str, Path], name: str, memory_bytes: int, max_tasks: int, cpu_millicores: int
) -> RunCgroup | None:
    made: dict[str, Path] = {}
    for ctrl, parent in dirs.items():
        d = parent / name
        # Co-mounted controllers (cpu,cpuacct) share one hierarchy and so one directory.
        shared = d in made.values()
        try:
            if not shared:
                d.mkdir(mode=0o755)
        except OSError as exc:
            logger.info("cannot create %s cgroup %s: %s", ctrl, d, exc)
            continue
        try:
            _configure_v1(ctrl, d, memory_bytes, max_tasks, cpu_millicores)
        except OSError as exc:
            logger.warning("cannot configure %s cgroup %s: %s", ctrl, d, exc)
            if not shared:
                with contextlib.suppress(OSError):
                    d.rmdir()
            continue
        made[ctrl] = d
    if not made:
        return None
    return RunCgroup(
        version=1,
        dirs=list(dict.fromkeys(made.values())),
        memory_dir=made.get("memory"),
        pids_dir=made.get("pids"),
        cpu_dir=made.get("cpuacct"),
        cpu_max_dir=made.get("cpu"),
    )


def create_run_cgroup(memory_bytes: int, max_tasks: int, cpu_millicores: int) -> RunCgroup | None:
    """Create and configure a fresh cgroup for one run, or None if impossible."""
    layout = _discover()
    name = RUN_PREFIX + secrets.token_hex(8)
    if layout.v2_dir is not None:
        cg = _create_v2(layout.v2_dir, name, memory_bytes, max_tasks, cpu_millicores)
        if cg is not None:
            return cg
    if layout.v1_dirs:
        return _create_v1(layout.v1_dirs, name, memory_bytes, max_tasks, cpu_millicores)
    return None


def cgroup_layers() -> dict[str, bool]:
    """Which cgroup features a run would get right now (creates a probe cgroup)."""
    cg = create_run_cgroup(64 * 1024 * 1024, 64, 1000)
    if cg is None:
        return {
            "cgroup_memory": False,
            "cgroup_pids": False,
            "cgroup_cpu": False,
            "cgroup_cpu_max": False,
        }
    try:
        return {
            "cgroup_memory": cg.has_memory,
            "cgroup_pids": cg.has_pids,
            "cgroup_cpu": cg.has_cpu,
            # Without it a run's threads may use every core: the status says so.
            "cgroup_cpu_max": cg.has_cpu_max,
        }
    finally:
        cg.remove_now()
