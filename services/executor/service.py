"""The executor as the bootstrap runs it: language registry, sandbox self-test, workers."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence

import grpc

from sandmesh.executor.v1 import executor_pb2, executor_pb2_grpc
from sandmesh_queue.connection import Queue
from sandmesh_runtime.health import Check
from sandmesh_runtime.tasks import TaskGroup
from services.executor import languages
from services.executor.sandbox.limits import SandboxLimits
from services.executor.sandbox.runner import Verdict, run_in_sandbox
from services.executor.server import ExecutorServicer
from services.executor.settings import ExecutorSettings
from services.executor.worker import Worker

# Jobs running at SIGTERM get this long to finish; the rest are handed back to the queue.
DRAIN_WAIT_S = 20.0

SELF_TEST_LIMITS = SandboxLimits(
    wall_time_s=10,
    cpu_time_s=5,
    memory_bytes=256 << 20,
    max_processes=16,
    output_bytes=4096,
    file_size_bytes=4096,
    tmp_bytes=1 << 20,
)


class Executor:
    name = "executor"

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings
        self.executor_id = settings.executor_id or f"{socket.gethostname()}-{os.getpid()}"
        self.registry = languages.load()
        self.versions: dict[str, str] = {}
        self.queue = Queue(settings.nats_url, f"sandmesh-executor-{self.executor_id}")
        self.workers = [
            Worker(self.queue, self.registry, self.executor_id)
            for _ in range(max(1, settings.concurrency))
        ]
        self.tasks = TaskGroup()
        self._self_test: str | None = "sandbox self-test has not run yet"

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        executor_pb2_grpc.add_ExecutorServiceServicer_to_server(
            ExecutorServicer(
                self.registry,
                self.versions,
                self.executor_id,
                len(self.workers),
                lambda: sum(w.running for w in self.workers),
            ),
            server,
        )
        return [executor_pb2.DESCRIPTOR.services_by_name["ExecutorService"].full_name]

    def checks(self) -> Sequence[Check]:
        return [Check("nats", self.queue.ping), Check("sandbox", self._sandbox_ok)]

    async def _sandbox_ok(self) -> None:
        if self._self_test is not None:
            raise RuntimeError(self._self_test)

    async def _run_self_test(self) -> None:
        """Run a real program in the sandbox once: readiness waits for it to pass."""
        spec = self.registry["python3"]
        outcome = await run_in_sandbox(
            spec.run, {spec.file_name: b"print('ok')\n"}, b"", SELF_TEST_LIMITS
        )
        if outcome.verdict is Verdict.COMPLETED and outcome.stdout == b"ok\n":
            self._self_test = None
        else:
            self._self_test = f"sandbox self-test failed: {outcome.verdict.value} {outcome.detail}"

    async def start(self) -> None:
        versions = await asyncio.gather(
            *(languages.detect_version(s) for s in self.registry.values())
        )
        self.versions.update(zip(self.registry, versions, strict=True))
        await self._run_self_test()
        for index, worker in enumerate(self.workers):
            self.tasks.supervise(f"worker-{index}", worker.run, forever=False)

    async def stop(self) -> None:
        for worker in self.workers:
            worker.drain()
        busy = any(worker.running for worker in self.workers)
        await self.tasks.stop(grace=DRAIN_WAIT_S if busy else 0.0)
        await self.queue.close()
