"""Resource limits applied to a single sandboxed run."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits; every field must be positive.

    wall_time_s: wall clock, enforced by killing the whole sandbox.
    cpu_time_s: total CPU of the run (cgroup when available) and RLIMIT_CPU
        (rounded up) per process.
    memory_bytes: cgroup memory limit when a memory cgroup is writable,
        otherwise RLIMIT_AS.
    max_processes: tasks (processes and threads) the program may have at once.
    output_bytes: cap on stdout and on stderr, each.
    file_size_bytes: RLIMIT_FSIZE.
    tmp_bytes: size of each private tmpfs (/work, /tmp, /dev/shm).
    cpu_millicores: CPU share in thousandths of a core (cgroup CPU bandwidth).
    """

    wall_time_s: float
    cpu_time_s: float
    memory_bytes: int
    max_processes: int
    output_bytes: int
    file_size_bytes: int
    tmp_bytes: int
    cpu_millicores: int = 1000

    def __post_init__(self) -> None:
        for name in ("wall_time_s", "cpu_time_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name in (
            "memory_bytes",
            "max_processes",
            "output_bytes",
            "file_size_bytes",
            "tmp_bytes",
            "cpu_millicores",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def cpu_rlimit_s(self) -> int:
        """Whole seconds for RLIMIT_CPU, which only has 1 s granularity."""
        return max(1, math.ceil(self.cpu_time_s))
