"""The executor as the bootstrap runs it: language registry, sandbox self-test, workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from sandmesh.executor.v1 import executor_pb2, executor_pb2_grpc
from sandmesh_queue import subjects
from sandmesh_queue.connection import Queue
from sandmesh_queue.streams import QueueSettings
from sandmesh_runtime import metrics
from sandmesh_runtime.health import Check
from sandmesh_runtime.settings import load
from sandmesh_runtime.tasks import TaskGroup
from services.executor import languages, selftest
from services.executor.cancels import Cancellations
from services.executor.sandbox import WarmPools
from services.executor.server import ExecutorServicer
from services.executor.settings import ExecutorSettings
from services.executor.worker import ACK_S, Ledger, Worker

# Jobs running at SIGTERM get this long to finish; the rest are handed back to the queue.
DRAIN_WAIT_S = 20.0
# Beyond the longest run and its reporting: a slot busy longer than that is wedged.
WEDGED_MARGIN_S = 30.0

log = logging.getLogger("sandmesh.executor")


class Executor:
    name = "executor"

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings
        self.executor_id = settings.executor_id or f"{socket.gethostname()}-{os.getpid()}"
        self.registry = (
            languages.load(Path(settings.languages_file))
            if settings.languages_file
            else languages.load()
        )
        self.versions: dict[str, str] = {}
        self.queue = Queue(f"sandmesh-executor-{self.executor_id}", load(QueueSettings))
        self.cancels = Cancellations()
        self.pools = WarmPools(self.registry, settings.warm_pool_size)
        ledger = Ledger()
        self.workers = [
            Worker(
                self.queue,
                self.registry,
                self.executor_id,
                self.cancels,
                self.pools,
                ledger,
                settings.report_timeout_s,
            )
            for _ in range(max(1, settings.concurrency))
        ]
        self.tasks = TaskGroup()
        # The cancel listener never ends by itself, so it must not hold up the workers' drain.
        self.listeners = TaskGroup()
        self.layers: list[selftest.Layer] = []
        self._self_test: str | None = "sandbox self-test has not run yet"
        longest_run_s = (
            max(
                (spec.compile_limits.wall_time_ms if spec.compiled else 0)
                + spec.max_limits.wall_time_ms
                for spec in self.registry.values()
            )
            / 1000
        )
        reporting_s = 2 * settings.report_timeout_s + ACK_S
        self.wedged_after_s = longest_run_s + reporting_s + WEDGED_MARGIN_S

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        executor_pb2_grpc.add_ExecutorServiceServicer_to_server(
            ExecutorServicer(
                self.registry,
                self.versions,
                self.executor_id,
                len(self.workers),
                lambda: sum(w.running for w in self.workers),
                self._layers,
            ),
            server,
        )
        return [executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name]

    def _layers(self) -> list[selftest.Layer]:
        idle = self.pools.idle()
        pool = selftest.Layer(
            "warm_pool",
            bool(idle),
            f"idle {idle}; served warm {self.pools.served_warm}, cold {self.pools.served_cold}",
        )
        return [*self.layers, pool]

    def checks(self) -> Sequence[Check]:
        return [
            Check("nats", self.queue.ping),
            Check("sandbox", self._sandbox_ok),
            Check("slots", self._slots_ok),
        ]

    def wedged_slots(self) -> int:
        """Slots busy for longer than any job may take, reporting included."""
        now = time.monotonic()
        return sum(
            1
            for worker in self.workers
            if worker.busy_since is not None and now - worker.busy_since > self.wedged_after_s
        )

    async def _slots_ok(self) -> None:
        wedged = self.wedged_slots()
        metrics.SLOTS_WEDGED.set(wedged)
        if wedged == len(self.workers):
            raise RuntimeError(
                f"all {wedged} slots busy for over {self.wedged_after_s:.0f} s: none can take a job"
            )

    async def _sandbox_ok(self) -> None:
        if self._self_test is not None:
            raise RuntimeError(self._self_test)

    async def start(self) -> None:
        versions = await asyncio.gather(
            *(languages.detect_version(s) for s in self.registry.values())
        )
        self.versions.update(zip(self.registry, versions, strict=True))
        # Readiness waits for the self-test: it runs a real program and checks every layer.
        self.layers, self._self_test = await selftest.run()
        log.info(
            "sandbox self-test",
            extra={
                "passed": self._self_test is None,
                "layers": {layer.name: layer.active for layer in self.layers},
            },
        )
        self.pools.start()
        self.listeners.supervise("cancel-listener", lambda: self.cancels.listen(self.queue))
        self.listeners.supervise("heartbeat", self._announce)
        for index, worker in enumerate(self.workers):
            self.tasks.supervise(f"worker-{index}", worker.run, forever=False)

    async def _announce(self) -> None:
        """Tell the scheduler this executor is alive, and how busy, every few seconds."""
        await self.queue.ready()
        while True:
            beat = executor_pb2.ExecutorHeartbeat(
                executor_id=self.executor_id,
                capacity=len(self.workers),
                running=sum(w.running for w in self.workers),
            )
            for language, idle in self.pools.idle().items():
                metrics.WARM_POOL_IDLE.labels(language).set(idle)
            with contextlib.suppress(Exception):  # a missed beat is what the registry watches
                await self.queue.nc.publish(subjects.HEARTBEAT_SUBJECT, beat.SerializeToString())
            await asyncio.sleep(self.settings.heartbeat_interval_s)

    async def stop(self) -> None:
        for worker in self.workers:
            worker.drain()
        busy = any(worker.running for worker in self.workers)
        await self.tasks.stop(grace=DRAIN_WAIT_S if busy else 0.0)
        await self.listeners.stop()
        await self.pools.stop()
        await self.queue.close()
