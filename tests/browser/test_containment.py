"""What a hostile page can do to the machine: CPU and memory after its job has ended."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import grpc
import pytest

from sandmesh.browser.v1 import browser_pb2, browser_pb2_grpc
from tests.browser.conftest import (
    MAX_PAGE_MEMORY_MB,
    PageServer,
    PoolProcess,
    cmdline,
    page,
    tree,
)

if TYPE_CHECKING:
    Stub: TypeAlias = browser_pb2_grpc.BrowserPoolServiceAsyncStub

TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _renderer_cpu(pool_process: PoolProcess) -> dict[int, float]:
    """CPU seconds used so far by each live renderer process of the pool."""
    found = {}
    for pid in tree(pool_process.pid):
        if "--type=renderer" not in " ".join(cmdline(pid)):
            continue
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        found[pid] = (int(fields[11]) + int(fields[12])) * TICK_S
    return found


async def test_an_endless_evaluate_frees_its_renderer_after_the_deadline(
    pool: Stub, pool_process: PoolProcess, pages: PageServer
) -> None:
    deadline_s = 3.0
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await pool.Evaluate(
            browser_pb2.EvaluateRequest(
                page=page(pages.url("/")), function="() => { while (true) {} }"
            ),
            timeout=deadline_s,
        )
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Sample from one second after the deadline: by then no renderer may still spin.
    await asyncio.sleep(max(0.0, started + deadline_s + 1.0 - time.monotonic()))
    before = _renderer_cpu(pool_process)
    await asyncio.sleep(1.0)
    after = _renderer_cpu(pool_process)
    burning = {pid: after[pid] - used for pid, used in before.items() if pid in after}
    assert all(seconds < 0.3 for seconds in burning.values()), burning
    response = await pool.Evaluate(
        browser_pb2.EvaluateRequest(page=page(pages.url("/")), function="() => 6 * 7"),
        timeout=30,
    )
    assert response.result_json == "42"


async def test_a_page_over_its_memory_share_is_killed_and_its_browser_stays(
    pool: Stub, pool_process: PoolProcess, pages: PageServer
) -> None:
    # 2 GiB of ArrayBuffers, touched so they are really held, 64 MiB at a time.
    hog = """async () => {
        const kept = [];
        for (let i = 0; i < 32; i++) {
            kept.push(new Uint8Array(64 << 20).fill(1));
            await new Promise((done) => setTimeout(done, 50));
        }
        return kept.length;
    }"""
    stats = await pool.GetPoolStats(browser_pb2.GetPoolStatsRequest(), timeout=5)
    browsers = {pid for pid, _ in pool_process.browsers()}
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await pool.Evaluate(
            browser_pb2.EvaluateRequest(page=page(pages.url("/")), function=hog), timeout=30
        )
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"{MAX_PAGE_MEMORY_MB} MB" in (raised.value.details() or "")
    (killed,) = pool_process.log_entries("renderer over its memory share killed")[-1:]
    assert isinstance(killed["memory"], int) and killed["memory"] < 2 << 30
    # Only the page went: the browsers that were serving still serve, none crashed.
    assert browsers <= {pid for pid, _ in pool_process.browsers()}
    after = await pool.GetPoolStats(browser_pb2.GetPoolStatsRequest(), timeout=5)
    assert after.crashes == stats.crashes
    response = await pool.Evaluate(
        browser_pb2.EvaluateRequest(page=page(pages.url("/")), function="() => 6 * 7"),
        timeout=30,
    )
    assert response.result_json == "42"
