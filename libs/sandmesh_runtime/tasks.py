"""Supervised background tasks: a crash is logged and the task restarted, never lost silently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("sandmesh.tasks")
# How long a cancelled task may take to unwind before a stop goes on without it.
CANCEL_WAIT_S = 5.0


class TaskGroup:
    """Long-running tasks of a service, restarted with backoff when they fail."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def supervise(
        self,
        name: str,
        factory: Callable[[], Awaitable[None]],
        *,
        forever: bool = True,
        max_backoff: float = 10.0,
    ) -> None:
        """Run `factory()` until the group stops, restarting it whenever it raises.

        A `forever` task is also restarted when it returns; otherwise returning ends it.
        """

        async def loop() -> None:
            backoff = 0.1
            while True:
                try:
                    await factory()
                    if not forever:
                        return
                    log.warning("background task returned; restarting", extra={"task": name})
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("background task crashed; restarting", extra={"task": name})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, max_backoff)

        task = asyncio.create_task(loop(), name=name)
        self._tasks.add(task)

    async def stop(self, grace: float = 0.0) -> None:
        """Give the tasks `grace` seconds to end by themselves, then cancel what is left.

        A cancelled task gets CANCEL_WAIT_S to unwind; one still running then (stuck in a
        call that ignores cancellation) is logged and left, so a stop never hangs.
        """
        if grace > 0 and self._tasks:
            await asyncio.wait(self._tasks, timeout=grace)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=CANCEL_WAIT_S)
            for task in stuck:
                log.error("background task did not stop", extra={"task": task.get_name()})
        self._tasks.clear()
