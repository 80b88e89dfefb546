"""Admission under pressure: the cgroup numbers, and the rule that turns them into refusals."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeAlias

from sandmesh.browser.v1 import browser_pb2, browser_pb2_grpc
from services.browser_pool import procs
from services.browser_pool.pool import Pressure
from services.browser_pool.settings import BrowserPoolSettings

if TYPE_CHECKING:
    Stub: TypeAlias = browser_pb2_grpc.BrowserPoolServiceAsyncStub

SETTINGS = BrowserPoolSettings(max_memory_percent=90.0, max_cpu_percent=95.0)


def test_memory_near_the_cgroup_limit_refuses() -> None:
    assert Pressure(950 << 20, 1000 << 20, None).refusal(SETTINGS) == (
        "memory at 95% of the cgroup limit"
    )
    assert Pressure(500 << 20, 1000 << 20, None).refusal(SETTINGS) is None


def test_cpu_at_the_quota_refuses_and_no_limit_never_does() -> None:
    assert Pressure(0, None, 0.97).refusal(SETTINGS) == "CPU at 97% of the cgroup quota"
    assert Pressure(0, None, 0.5).refusal(SETTINGS) is None
    # No memory limit and no CPU quota: counts alone decide.
    assert Pressure(64 << 30, None, None).refusal(SETTINGS) is None


def test_memory_is_read_from_the_cgroup_or_the_process_tree() -> None:
    reading = procs.Cgroup().read()
    assert reading.memory_bytes is None or reading.memory_bytes > 0
    assert procs.tree_memory_bytes(os.getpid()) > 0


async def test_stats_report_real_numbers(pool: Stub) -> None:
    stats = await pool.GetPoolStats(browser_pb2.GetPoolStatsRequest(), timeout=5)
    assert stats.browsers >= 1
    assert stats.memory_bytes > 50 << 20  # at least one Chromium and the pool itself
