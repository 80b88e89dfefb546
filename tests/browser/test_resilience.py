"""Crashes, hangs and overload against the real pool process and real Chromium."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

import grpc
import pytest

from sandmesh.browser.v1 import browser_pb2, browser_pb2_grpc
from sandmesh_runtime import errors
from tests.browser.conftest import (
    MAX_BROWSERS,
    PAGES_PER_BROWSER,
    QUEUE_SIZE,
    PageServer,
    PoolProcess,
    mentioning,
    page,
    wait_until,
    zombies_of,
)

if TYPE_CHECKING:
    Stub: TypeAlias = browser_pb2_grpc.BrowserPoolServiceAsyncStub

SLOTS = MAX_BROWSERS * PAGES_PER_BROWSER
Stats: TypeAlias = browser_pb2.GetPoolStatsResponse


async def _stats(pool: Stub) -> Stats:
    return await pool.GetPoolStats(browser_pb2.GetPoolStatsRequest(), timeout=5)


async def _until(pool: Stub, check: Callable[[Stats], bool], timeout: float = 20.0) -> Stats:
    deadline = time.monotonic() + timeout
    while True:
        stats = await _stats(pool)
        if check(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"pool stats never got there: {stats}")
        await asyncio.sleep(0.1)


def _slow(
    pool: Stub, pages: PageServer, seconds: float, timeout: float = 30.0
) -> asyncio.Task[browser_pb2.GetContentResponse]:
    request = browser_pb2.GetContentRequest(page=page(pages.url(f"/slow?s={seconds}")))
    return asyncio.ensure_future(pool.GetContent(request, timeout=timeout))


async def _idle(pool: Stub) -> None:
    await _until(pool, lambda s: s.pages_in_use == 0 and s.queue_length == 0, timeout=30)


async def _works(pool: Stub, pages: PageServer) -> None:
    response = await pool.GetContent(
        browser_pb2.GetContentRequest(page=page(pages.url("/"))), timeout=30
    )
    assert "Hello, pool" in response.text


def _gone_without_trace(pool_process: PoolProcess, dirs: list[str]) -> bool:
    return (
        all(not mentioning(d) and not os.path.exists(d) for d in dirs)
        and zombies_of(pool_process.pid) == []
    )


async def test_killed_chromium_fails_its_job_and_is_replaced(
    pool: Stub, pool_process: PoolProcess, pages: PageServer
) -> None:
    await _idle(pool)
    before = await _stats(pool)
    job = _slow(pool, pages, 5)
    await _until(pool, lambda s: s.pages_in_use >= 1)
    victims = pool_process.browsers()
    assert victims
    for pid, _ in victims:
        os.kill(pid, signal.SIGKILL)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await job
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "crashed" in (raised.value.details() or "")
    assert any(type(d).__name__ == "RetryInfo" for d in errors.details_of(raised.value))

    after = await _until(
        pool, lambda s: s.crashes >= before.crashes + len(victims) and s.browsers >= 1
    )
    assert after.crashes >= before.crashes + 1
    await _works(pool, pages)
    dirs = [private_dir for _, private_dir in victims]
    wait_until(
        lambda: _gone_without_trace(pool_process, dirs),
        15,
        "killed browsers' processes, zombies and dirs gone",
    )
    assert {pid for pid, _ in pool_process.browsers()}.isdisjoint(pid for pid, _ in victims)


async def test_a_crashed_playwright_driver_is_replaced(
    pool: Stub, pool_process: PoolProcess, pages: PageServer
) -> None:
    await _works(pool, pages)
    (driver,) = pool_process.drivers()
    os.kill(driver, signal.SIGKILL)
    # Calls may fail UNAVAILABLE while the pool notices; then it serves again.
    deadline = time.monotonic() + 30
    while True:
        try:
            await _works(pool, pages)
            break
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert time.monotonic() < deadline, "the pool never recovered from the driver crash"
            await asyncio.sleep(0.5)
    (replacement,) = pool_process.drivers()
    assert replacement != driver
    await _until(pool, lambda s: s.browsers >= 1)


async def test_hung_chromium_is_detected_and_replaced(
    pool: Stub, pool_process: PoolProcess, pages: PageServer
) -> None:
    await _works(pool, pages)
    before = await _stats(pool)
    victims = pool_process.browsers()
    for pid, _ in victims:
        os.kill(pid, signal.SIGSTOP)  # alive but deaf: only the health ping can tell
    await _until(pool, lambda s: s.crashes >= before.crashes + len(victims), timeout=15)
    await _works(pool, pages)
    wait_until(
        lambda: _gone_without_trace(pool_process, [d for _, d in victims]),
        15,
        "hung browsers' processes, zombies and dirs gone",
    )


async def test_full_queue_is_refused_at_once(pool: Stub, pages: PageServer) -> None:
    await _idle(pool)
    # Fill every page first (the second browser starts on demand), then the queue.
    running = [_slow(pool, pages, 3) for _ in range(SLOTS)]
    await _until(pool, lambda s: s.pages_in_use == SLOTS and s.browsers == MAX_BROWSERS)
    running += [_slow(pool, pages, 3) for _ in range(QUEUE_SIZE)]
    await _until(pool, lambda s: s.pages_in_use == SLOTS and s.queue_length == QUEUE_SIZE)

    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await pool.GetContent(browser_pb2.GetContentRequest(page=page(pages.url("/"))), timeout=30)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - started < 1.0
    assert any(type(d).__name__ == "RetryInfo" for d in errors.details_of(raised.value))

    # Everything admitted still completes: the queued jobs got the pages as they freed.
    for response in await asyncio.gather(*running):
        assert "Hello, pool" in response.text


async def test_wait_never_outlives_the_callers_deadline(pool: Stub, pages: PageServer) -> None:
    await _idle(pool)
    running = [_slow(pool, pages, 3) for _ in range(SLOTS)]
    await _until(pool, lambda s: s.pages_in_use == SLOTS)

    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await pool.GetContent(browser_pb2.GetContentRequest(page=page(pages.url("/"))), timeout=1.0)
    elapsed = time.monotonic() - started
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 1.5
    # The server gave the waiting slot up too: nothing is left queued behind the caller.
    stats = await _stats(pool)
    assert stats.queue_length == 0
    await asyncio.gather(*running)
