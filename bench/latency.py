"""Bench 1: latency of one Python hello world, through the mesh vs `python3 -c` vs the sandbox
(with and without its syscall allow-list and CPU share).

The three are interleaved run by run (mesh, raw, sandbox, mesh, ...), so a burst of load
on the machine lands on all of them rather than on whichever series ran at that moment.
The mesh runs twice: warm pool off (SANDMESH_WARM_POOL_SIZE=0) and on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc

from bench.common import (
    Ratio,
    Result,
    Size,
    Stack,
    cores,
    ratio,
    run_hello,
    summarize_ms,
    warm_pool_detail,
)
from bench.sandbox import run_raw, run_sandboxed, run_unhardened

NAME = "latency"
RUNS = {Size.FULL: 200, Size.TINY: 2}
# Per mesh phase; a run this slow means something is broken, not slow.
BUDGET_S = {Size.FULL: 900.0, Size.TINY: 60.0}


async def _interleaved(
    target: str, runs: int, budget_s: float
) -> tuple[dict[str, list[float]], int]:
    series: dict[str, Callable[[], Awaitable[None]]] = {
        "mesh": lambda: run_hello(channel),
        "raw": run_raw,
        "sandbox": run_sandboxed,
        "unhardened": run_unhardened,
    }
    samples: dict[str, list[float]] = {key: [] for key in series}
    errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        # One untimed run each: connection set-up and first-import costs are not latency.
        for body in series.values():
            await body()
        stop_at = time.monotonic() + budget_s
        for _ in range(runs):
            if time.monotonic() > stop_at:
                break
            for key, body in series.items():
                started = time.perf_counter()
                try:
                    await body()
                except (grpc.RpcError, RuntimeError, TimeoutError):
                    errors += 1
                    continue
                samples[key].append(time.perf_counter() - started)
    return samples, errors


def run(stack: Stack, size: Size) -> Result:
    runs = RUNS[size]
    # Off, then one warm sandbox per executor slot (the bench runs one slot per core).
    pools = (0, cores())
    result = Result(
        name=NAME,
        title="latency of one Python hello world (submit to final result), ms",
        config={"runs_per_series": runs, "warm_pool_sizes": list(pools)},
        columns=["series", "runs", "p50", "p95", "p99", "mean", "max"],
    )
    raw: list[float] = []
    sandbox: list[float] = []
    unhardened: list[float] = []
    mesh: dict[int, dict[str, float | int]] = {}
    for pool in pools:
        with stack.mesh(f"latency-pool{pool}", {"SANDMESH_WARM_POOL_SIZE": str(pool)}) as m:
            samples, errors = asyncio.run(
                _interleaved(m.services["gateway"].target, runs, BUDGET_S[size])
            )
            detail = warm_pool_detail(m)
        result.errors += errors
        raw += samples["raw"]
        sandbox += samples["sandbox"]
        unhardened += samples["unhardened"]
        mesh[pool] = summarize_ms(samples["mesh"])
        result.notes.append(f"warm pool {pool}: executor reports '{detail}'")
    summaries = {
        "python3 -c (raw)": summarize_ms(raw),
        "bare sandbox (cold)": summarize_ms(sandbox),
        "bare sandbox, no allow-list or CPU share": summarize_ms(unhardened),
        **{f"mesh, warm pool {pool}": s for pool, s in mesh.items()},
    }
    for label, s in summaries.items():
        figures = [s.get(key) for key in ("p50", "p95", "p99", "mean", "max")]
        result.rows.append([label, s["count"], *figures])
    raw_p50 = float(summaries["python3 -c (raw)"].get("p50", 0))
    box_p50 = float(summaries["bare sandbox (cold)"].get("p50", 0))
    for pool, s in mesh.items():
        p50 = float(s.get("p50", 0))
        result.ratios += [
            Ratio(
                f"mesh(pool {pool})/raw p50", ratio(p50, raw_p50), "lower is better; 1 = no cost"
            ),
            Ratio(f"mesh(pool {pool})/sandbox p50", ratio(p50, box_p50), "the mesh's own overhead"),
        ]
    plain_p50 = float(summaries["bare sandbox, no allow-list or CPU share"].get("p50", 0))
    result.ratios.append(
        Ratio(
            "sandbox/no allow-list or CPU share p50",
            ratio(box_p50, plain_p50),
            "what the syscall allow-list and cpu.max cost a hello world",
        )
    )
    off, on = (float(mesh[p].get("p50", 0)) for p in pools)
    result.ratios.append(
        Ratio("mesh warm/cold p50", ratio(on, off), "below 1: the warm pool saves time")
    )
    result.notes.append(
        "the bare sandbox is always cold (a fresh bwrap per run); the mesh's warm pool "
        "pre-starts sandboxes, so mesh/sandbox can go below 1 with the pool on"
    )
    result.data = {"summaries_ms": summaries}
    return result
