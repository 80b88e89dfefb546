"""An executor whose every slot is wedged stops being ready, and the wedged ones are counted.

Every step of a job is bounded, so a slot wedges only through a fault no test can bring
about on cue (a hung kernel call, a bug); the test sets the slots' start times itself.
"""

from __future__ import annotations

import time

import pytest

from sandmesh_runtime import metrics
from services.executor.service import Executor
from services.executor.settings import ExecutorSettings


def wedge(executor: Executor, count: int) -> None:
    for worker in executor.workers[:count]:
        worker.busy_since = time.monotonic() - executor.wedged_after_s - 1


async def test_readiness_fails_only_when_every_slot_is_wedged() -> None:
    executor = Executor(ExecutorSettings(concurrency=2, warm_pool_size=0))
    # Longer than any run may take, its compile step and its reporting included.
    assert executor.wedged_after_s > 60 + 30 + 2 * executor.settings.report_timeout_s

    wedge(executor, 1)
    await executor._slots_ok()
    assert metrics.SLOTS_WEDGED._value.get() == 1

    wedge(executor, 2)
    with pytest.raises(RuntimeError, match="all 2 slots busy"):
        await executor._slots_ok()
    assert metrics.SLOTS_WEDGED._value.get() == 2

    for worker in executor.workers:
        worker.busy_since = time.monotonic()
    await executor._slots_ok()
    assert metrics.SLOTS_WEDGED._value.get() == 0
