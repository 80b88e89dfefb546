"""Processes and cgroups as Linux shows them in /proc and /sys/fs/cgroup."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 60


def become_subreaper() -> bool:
    """Adopt orphaned descendants, as PID 1 would.

    Chromium's helpers outlive a killed browser and are re-parented; without this they
    become zombies of whatever init the container has (which may never reap them).
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    state: str
    comm: str


def read_proc(pid: int) -> Proc | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may hold spaces or parentheses itself.
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return Proc(pid, int(fields[1]), int(fields[2]), fields[0], comm)


def all_procs() -> list[Proc]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (proc := read_proc(int(name))) is not None:
            found.append(proc)
    return found


def cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def pids_mentioning(marker: str) -> list[int]:
    """Live processes whose command line contains `marker` (a browser's private dir)."""
    return [p.pid for p in all_procs() if p.state != "Z" and marker in cmdline(p.pid)]


def group_members(pgid: int, marker: str) -> list[int]:
    """Live processes of process group `pgid` whose command line contains `marker`."""
    return [
        p.pid for p in all_procs() if p.pgid == pgid and p.state != "Z" and marker in cmdline(p.pid)
    ]


def children(pid: int) -> list[int]:
    """Children forked by `pid`'s main thread: all of them for a single-threaded forker."""
    try:
        return [
            int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
    except (OSError, ValueError):
        return []


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_group(pgid: int, signum: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def reap_orphans(keep: set[int]) -> int:
    """Reap zombie children of this process other than `keep` (children asyncio waits for)."""
    me = os.getpid()
    reaped = 0
    for proc in all_procs():
        if proc.ppid == me and proc.state == "Z" and proc.pid not in keep:
            try:
                os.waitpid(proc.pid, os.WNOHANG)
                reaped += 1
            except ChildProcessError:
                pass
    return reaped


def memory_bytes(pid: int) -> int:
    """Proportional set size (shared pages split between sharers), else RSS."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def rss_bytes(pid: int) -> int:
    """Resident set size: cheap to read, unlike PSS."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def group_memory_bytes(pgid: int) -> int:
    return sum(memory_bytes(p.pid) for p in all_procs() if p.pgid == pgid and p.state != "Z")


def tree_memory_bytes(root: int) -> int:
    """Memory of `root` and all its descendants."""
    procs = all_procs()
    children: dict[int, list[int]] = {}
    for proc in procs:
        children.setdefault(proc.ppid, []).append(proc.pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += memory_bytes(pid)
        stack.extend(children.get(pid, []))
    return total


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


@dataclass(frozen=True)
class CgroupReading:
    memory_bytes: int | None  # working set: usage minus reclaimable file cache
    memory_limit: int | None
    cpu_usage_s: float | None
    cpu_limit: float | None  # cores the quota allows, None when unlimited


class Cgroup:
    """This process's own cgroup (v2, else v1), where readable."""

    def __init__(self) -> None:
        self._v2: Path | None = None
        self._memory: Path | None = None
        self._cpu: Path | None = None
        self._cpuacct: Path | None = None
        try:
            lines = Path("/proc/self/cgroup").read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            _, controllers, path = line.split(":", 2)
            relative = path.lstrip("/")
            names = controllers.split(",")
            if controllers == "":
                self._v2 = _first_with(
                    [CGROUP_ROOT / relative, CGROUP_ROOT], "memory.current"
                ) or _first_with([CGROUP_ROOT / relative, CGROUP_ROOT], "cpu.stat")
            if "memory" in names:
                self._memory = _first_with(
                    [CGROUP_ROOT / "memory" / relative, CGROUP_ROOT / "memory"],
                    "memory.usage_in_bytes",
                )
            if "cpu" in names:
                self._cpu = _first_with(
                    [CGROUP_ROOT / controllers / relative, CGROUP_ROOT / controllers],
                    "cpu.cfs_quota_us",
                )
            if "cpuacct" in names:
                self._cpuacct = _first_with(
                    [CGROUP_ROOT / controllers / relative, CGROUP_ROOT / controllers],
                    "cpuacct.usage",
                )

    def read(self) -> CgroupReading:
        memory = limit = None
        cpu_usage = cpu_limit = None
        if self._v2 is not None and (self._v2 / "memory.current").exists():
            usage = _read_int(self._v2 / "memory.current")
            if usage is not None:
                memory = usage - _stat_value(self._v2 / "memory.stat", "inactive_file")
            limit = _read_int(self._v2 / "memory.max")
        elif self._memory is not None:
            usage = _read_int(self._memory / "memory.usage_in_bytes")
            if usage is not None:
                inactive = _stat_value(self._memory / "memory.stat", "total_inactive_file")
                memory = usage - inactive
            limit = _read_int(self._memory / "memory.limit_in_bytes")
        if self._v2 is not None and (self._v2 / "cpu.stat").exists():
            usec = _stat_value(self._v2 / "cpu.stat", "usage_usec")
            cpu_usage = usec / 1e6 if usec else None
            try:
                quota, period = (self._v2 / "cpu.max").read_text().split()
                if quota != "max":
                    cpu_limit = int(quota) / int(period)
            except (OSError, ValueError):
                pass
        else:
            if self._cpuacct is not None:
                nanos = _read_int(self._cpuacct / "cpuacct.usage")
                cpu_usage = None if nanos is None else nanos / 1e9
            if self._cpu is not None:
                quota_us = _read_int(self._cpu / "cpu.cfs_quota_us")
                period_us = _read_int(self._cpu / "cpu.cfs_period_us")
                if quota_us and period_us and quota_us > 0:
                    cpu_limit = quota_us / period_us
        if limit is not None and limit >= UNLIMITED // 2:
            limit = None
        return CgroupReading(memory, limit, cpu_usage, cpu_limit)


def _first_with(candidates: list[Path], filename: str) -> Path | None:
    return next((c for c in candidates if (c / filename).exists()), None)


@dataclass
class CpuMeter:
    """CPU use of the cgroup as a fraction of its quota, between two readings."""

    last: tuple[float, float] | None = None

    def sample(self, reading: CgroupReading) -> float | None:
        if reading.cpu_usage_s is None or reading.cpu_limit is None:
            return None
        now = time.monotonic()
        previous, self.last = self.last, (now, reading.cpu_usage_s)
        if previous is None or now <= previous[0]:
            return None
        return (reading.cpu_usage_s - previous[1]) / (now - previous[0]) / reading.cpu_limit
