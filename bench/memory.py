"""Bench 6: resident memory of each service at start and after many executions.

RSS is VmRSS from /proc/<pid>/status: of the service process itself, and of its whole
process tree (the executor's warm sandboxes, the browser pool's Chromium). Trees are
summed RSS, so pages shared between processes count once per process: an upper bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import grpc

from bench.common import Ratio, Result, Size, Stack, cores, ratio, run_hello
from sandmesh_devstack.mesh import Mesh

NAME = "memory"
EXECUTIONS = {Size.FULL: 10_000, Size.TINY: 20}
BUDGET_S = {Size.FULL: 3600.0, Size.TINY: 120.0}
# Lets start-up work and the last runs' clean-up finish before memory is read.
SETTLE_S = 3.0
MIB = 1024 * 1024


def _rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0  # gone, or a kernel thread without memory


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = Path(f"/proc/{name}/stat").read_bytes()
            ppid = int(raw[raw.rfind(b")") + 2 :].split()[1])
            tree.setdefault(ppid, []).append(int(name))
    return tree


def _tree_rss(pid: int, children: dict[int, list[int]]) -> int:
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += _rss_bytes(current)
        todo.extend(children.get(current, ()))
    return total


def snapshot(mesh: Mesh) -> dict[str, dict[str, int]]:
    """{service: {"process": bytes, "tree": bytes}} for every running service."""
    children = _children()
    figures = {}
    for name, service in mesh.services.items():
        if service.process is None:
            continue
        pid = service.process.pid
        figures[name] = {"process": _rss_bytes(pid), "tree": _tree_rss(pid, children)}
    return figures


async def _execute(target: str, count: int, loops: int, budget_s: float) -> tuple[int, int]:
    started = done = errors = 0
    stop_at = time.monotonic() + budget_s
    async with grpc.aio.insecure_channel(target) as channel:

        async def loop() -> None:
            nonlocal started, done, errors
            while started < count and time.monotonic() < stop_at:
                started += 1  # claimed before the await, so the loops stop at exactly count
                try:
                    await run_hello(channel)
                    done += 1
                except (grpc.RpcError, RuntimeError, TimeoutError):
                    errors += 1

        await asyncio.gather(*(loop() for _ in range(loops)))
    return done, errors


def run(stack: Stack, size: Size, executions: int | None = None) -> Result:
    count = executions or EXECUTIONS[size]
    loops = 2 * cores()
    result = Result(
        name=NAME,
        title=f"resident memory (MiB) at start and after {count:,} executions",
        config={"executions": count, "in_flight": loops, "settle_s": SETTLE_S},
        columns=[
            "service",
            "start",
            "end",
            "end/start",
            "tree start",
            "tree end",
            "tree end/start",
        ],
    )
    with stack.mesh("memory") as mesh:
        time.sleep(SETTLE_S)
        start = snapshot(mesh)
        began = time.monotonic()
        done, errors = asyncio.run(
            _execute(mesh.services["gateway"].target, count, loops, BUDGET_S[size])
        )
        elapsed = time.monotonic() - began
        time.sleep(SETTLE_S)
        end = snapshot(mesh)
    result.errors = errors
    for name in start:
        s, e = start[name], end.get(name, {"process": 0, "tree": 0})
        result.rows.append(
            [
                name,
                round(s["process"] / MIB, 1),
                round(e["process"] / MIB, 1),
                ratio(e["process"], s["process"]),
                round(s["tree"] / MIB, 1),
                round(e["tree"] / MIB, 1),
                ratio(e["tree"], s["tree"]),
            ]
        )
        result.ratios.append(
            Ratio(f"{name} tree end/start", ratio(e["tree"], s["tree"]), "near 1: no growth")
        )
    result.notes.append(
        f"{done:,} executions completed ({errors} errors) in {elapsed:.0f} s"
        + ("" if done + errors >= count else f"; stopped by the {BUDGET_S[size]:.0f} s budget")
    )
    result.data = {
        "rss_bytes": {"start": start, "end": end},
        "executions": done,
        "elapsed_s": elapsed,
    }
    return result
