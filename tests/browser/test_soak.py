"""500 jobs in a row: memory stays bounded, browsers recycle, processes return to baseline."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, TypeAlias

import pytest

from sandmesh.browser.v1 import browser_pb2, browser_pb2_grpc
from tests.browser.conftest import (
    MAX_BROWSER_MEMORY_MB,
    MAX_BROWSERS,
    PAGES_PER_BROWSER,
    RECYCLE_AFTER_JOBS,
    PageServer,
    PoolProcess,
    page,
    pss_bytes,
    tree,
)

if TYPE_CHECKING:
    Stub: TypeAlias = browser_pb2_grpc.BrowserPoolServiceAsyncStub

JOBS = 500
CLIENTS = MAX_BROWSERS * PAGES_PER_BROWSER
# The pool process itself and Playwright's driver, on top of the browsers' own bound.
OVERHEAD_MB = 400
BOUND = (MAX_BROWSERS * MAX_BROWSER_MEMORY_MB + OVERHEAD_MB) << 20


async def _settled(pool: Stub, pool_process: PoolProcess, baseline: int) -> int:
    """Process count once the pool is idle again (recycled browsers take a moment to go)."""
    deadline = time.monotonic() + 30
    count = len(tree(pool_process.pid))
    while time.monotonic() < deadline:
        stats = await pool.GetPoolStats(browser_pb2.GetPoolStatsRequest(), timeout=5)
        count = len(tree(pool_process.pid))
        # One browser is the pool's resting state (MIN_BROWSERS); extra ones retire when idle.
        if stats.pages_in_use == 0 and stats.browsers == 1 and count <= baseline:
            return count
        await asyncio.sleep(0.25)
    return count


@pytest.mark.timeout(600)  # about a minute alone; more when the machine is shared
async def test_500_jobs_in_a_row_stay_bounded(
    pool: Stub, pool_process: PoolProcess, pages: PageServer
) -> None:
    url = pages.url("/")
    content = browser_pb2.GetContentRequest(page=page(url))
    evaluate = browser_pb2.EvaluateRequest(page=page(url), function="() => document.title")

    async def one(index: int) -> None:
        if index % 2:
            got = await pool.Evaluate(evaluate, timeout=30)
            assert json.loads(got.result_json) == "Pool test"
        else:
            text = (await pool.GetContent(content, timeout=30)).text
            assert "Hello, pool" in text

    for index in range(10):  # warm up: first-use allocations are not growth
        await one(index)
    stats = await pool.GetPoolStats(browser_pb2.GetPoolStatsRequest(), timeout=5)
    baseline = await _settled(pool, pool_process, 10_000)
    memory_before = pss_bytes(tree(pool_process.pid))

    peak = memory_before
    jobs = iter(range(JOBS))

    async def client() -> None:
        nonlocal peak
        for index in jobs:
            await one(index)
            if index % 50 == 0:
                peak = max(peak, pss_bytes(tree(pool_process.pid)))

    started = time.monotonic()
    # Back to back, as many at once as the pool has pages: every page stays busy, nothing
    # queues, and the 2-core test machine gets through them in about a minute.
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    elapsed = time.monotonic() - started

    after = await pool.GetPoolStats(browser_pb2.GetPoolStatsRequest(), timeout=5)
    count = await _settled(pool, pool_process, baseline)
    memory_after = pss_bytes(tree(pool_process.pid))
    print(
        f"\n{JOBS} jobs in {elapsed:.1f} s ({1000 * elapsed / JOBS:.0f} ms/job); "
        f"pool tree PSS before {memory_before >> 20} MB, peak {peak >> 20} MB, "
        f"after {memory_after >> 20} MB (bound {BOUND >> 20} MB); "
        f"processes {baseline} -> {count}; recycles {stats.recycles} -> {after.recycles}; "
        f"stats memory {after.memory_bytes >> 20} MB"
    )
    assert peak < BOUND and memory_after < BOUND
    assert after.recycles - stats.recycles >= JOBS // RECYCLE_AFTER_JOBS - 1
    assert count <= baseline
    assert after.crashes == stats.crashes
