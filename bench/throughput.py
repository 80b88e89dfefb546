"""Bench 2: executions per second held for a fixed window, mesh vs raw sandboxed runs.

Both sides run `concurrency` programs at once (the executor's SANDMESH_EXECUTOR_CONCURRENCY,
and as many parallel bare-sandbox loops). The mesh side keeps twice as many executions in
flight from its clients, so the executor always has the next job queued instead of
waiting on the client's round trip; what runs at once is the same on both sides.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc

from bench.common import Ratio, Result, Size, Stack, cores, ratio, run_hello
from bench.sandbox import run_sandboxed

NAME = "throughput"
WINDOW_S = {Size.FULL: 60.0, Size.TINY: 2.0}


async def _hold(
    window_s: float, loops: int, body: Callable[[], Awaitable[None]]
) -> tuple[int, int]:
    """Run `loops` loops of `body` for `window_s`; (completed inside the window, errors)."""
    done = errors = 0
    stop_at = time.monotonic() + window_s

    async def loop() -> None:
        nonlocal done, errors
        while time.monotonic() < stop_at:
            try:
                await body()
            except (grpc.RpcError, RuntimeError, TimeoutError):
                errors += 1
                continue
            # A run finishing after the window does not count: the rate is held, not padded.
            if time.monotonic() <= stop_at:
                done += 1

    await asyncio.gather(*(loop() for _ in range(loops)))
    return done, errors


async def _through_mesh(target: str, window_s: float, loops: int) -> tuple[int, int]:
    async with grpc.aio.insecure_channel(target) as channel:
        await run_hello(channel)
        return await _hold(window_s, loops, lambda: run_hello(channel))


def run(stack: Stack, size: Size) -> Result:
    window = WINDOW_S[size]
    concurrency = cores()
    result = Result(
        name=NAME,
        title=f"executions per second held for {window:.0f} s, {concurrency} at once",
        config={"window_s": window, "concurrency": concurrency, "mesh_in_flight": 2 * concurrency},
        columns=["series", "completed", "errors", "per second"],
    )
    with stack.mesh("throughput") as mesh:
        mesh_done, mesh_errors = asyncio.run(
            _through_mesh(mesh.services["gateway"].target, window, 2 * concurrency)
        )
    # The baseline runs after the mesh is stopped, so the mesh's idle services cost it nothing.
    raw_done, raw_errors = asyncio.run(_hold(window, concurrency, run_sandboxed))
    mesh_rate, raw_rate = mesh_done / window, raw_done / window
    result.rows = [
        ["mesh (warm pool on)", mesh_done, mesh_errors, round(mesh_rate, 2)],
        ["bare sandbox in parallel", raw_done, raw_errors, round(raw_rate, 2)],
    ]
    result.errors = mesh_errors + raw_errors
    result.ratios = [
        Ratio("mesh/sandbox per second", ratio(mesh_rate, raw_rate), "higher is better; 1 = par")
    ]
    result.data = {"per_second": {"mesh": mesh_rate, "sandbox": raw_rate}}
    return result
