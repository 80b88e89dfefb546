"""The baselines below the mesh: `python3 -c` directly, and the same program in the bare sandbox."""

from __future__ import annotations

import asyncio
import dataclasses
import os

from bench.common import HELLO_SOURCE, SYSTEM_PYTHON
from services.executor.sandbox import SandboxLimits, SandboxOptions, Verdict, run_in_sandbox

# The python3 language's defaults ([limits.default] in services/executor/languages.toml), so
# the bare sandbox gets exactly the limits a mesh execution of the same program gets.
HELLO_LIMITS = SandboxLimits(
    wall_time_s=10.0,
    cpu_time_s=5.0,
    memory_bytes=256 << 20,
    max_processes=32,
    output_bytes=1 << 20,
    file_size_bytes=1 << 20,
    tmp_bytes=64 << 20,
)
# The same sandbox without the two layers issue 13 added: no syscall allow-list, and a CPU
# share of every core (so cpu.max never throttles), to show what those layers cost.
UNHARDENED_LIMITS = dataclasses.replace(HELLO_LIMITS, cpu_millicores=1000 * (os.cpu_count() or 1))


async def run_raw() -> None:
    """`python3 -I -c` with the program, no isolation at all."""
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON,
        "-I",
        "-c",
        HELLO_SOURCE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    if proc.returncode != 0 or not stdout.startswith(b"Hello"):
        raise RuntimeError(f"python3 -c failed ({proc.returncode}): {stderr[-200:]!r}")


async def run_sandboxed(
    limits: SandboxLimits = HELLO_LIMITS, options: SandboxOptions | None = None
) -> None:
    """The program as the executor lays it out (main.py in its work dir), in a cold sandbox."""
    outcome = await run_in_sandbox(
        [SYSTEM_PYTHON, "-I", "main.py"],
        {"main.py": HELLO_SOURCE.encode()},
        b"",
        limits,
        options=options or SandboxOptions(),
    )
    if outcome.verdict is not Verdict.COMPLETED:
        raise RuntimeError(f"sandboxed run ended {outcome.verdict}: {outcome.detail}")


async def run_unhardened() -> None:
    """`run_sandboxed` without the allow-list and the CPU share."""
    await run_sandboxed(UNHARDENED_LIMITS, SandboxOptions(seccomp=False))
