"""What /proc tells about processes, for runs without a usable cgroup.

CPU time and peak memory are sampled over bwrap's process tree (lower bounds: rusage cannot
be used because asyncio reaps bwrap itself without reading it, so the program's usage never
reaches any rusage of this run alone), and a run's private uid finds its stragglers.
"""

from __future__ import annotations

import contextlib
import os
import signal


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


class TreeSampler:
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


def uid_task_count(uid: int) -> int:
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


def kill_uid(uid: int) -> None:
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
