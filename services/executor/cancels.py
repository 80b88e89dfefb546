"""Cancellation: kill a running sandbox on request, and refuse a cancelled job pulled later."""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.msg import Msg

from sandmesh_queue import subjects
from sandmesh_queue.connection import Queue

log = logging.getLogger("sandmesh.executor")

# A cancelled job may still be in the queue (or be redelivered) for a while.
REMEMBER_S = 300.0


class Cancellations:
    """Runs in progress by execution id, and ids recently cancelled."""

    def __init__(self, remember_s: float = REMEMBER_S) -> None:
        self._remember_s = remember_s
        self._running: dict[str, asyncio.Event] = {}
        self._cancelled: dict[str, float] = {}

    def cancelled(self, execution_id: str) -> bool:
        self._forget_old()
        return execution_id in self._cancelled

    def start(self, execution_id: str) -> asyncio.Event:
        """The event that, once set, kills this execution's sandbox (set at once if cancelled)."""
        event = asyncio.Event()
        if self.cancelled(execution_id):
            event.set()
        self._running[execution_id] = event
        return event

    def finish(self, execution_id: str) -> None:
        self._running.pop(execution_id, None)

    def cancel(self, execution_id: str) -> None:
        self._forget_old()
        self._cancelled[execution_id] = time.monotonic() + self._remember_s
        event = self._running.get(execution_id)
        if event is not None:
            log.info("cancelling a running execution", extra={"execution_id": execution_id})
            event.set()

    def _forget_old(self) -> None:
        now = time.monotonic()
        for execution_id in [k for k, until in self._cancelled.items() if until < now]:
            del self._cancelled[execution_id]

    async def listen(self, queue: Queue) -> None:
        """Follow the core-NATS cancel subject for as long as the service runs."""
        await queue.ready()

        async def on_cancel(msg: Msg) -> None:
            self.cancel(msg.data.decode("utf-8", "replace").strip())

        subscription = await queue.nc.subscribe(subjects.CANCEL_SUBJECT, cb=on_cancel)
        try:
            await asyncio.Event().wait()
        finally:
            await subscription.unsubscribe()
