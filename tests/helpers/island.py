"""A scheduler on a NATS server of its own, with executors and gateways a test starts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from sandmesh_devstack.mesh import ServiceProcess, health_status
from sandmesh_devstack.nats import LocalNats
from sandmesh_devstack.ports import free_port

ACK_WAIT_S = 1.0
MAX_DELIVER = 2
MAX_QUEUED_PER_TENANT = 8


@dataclass
class Island:
    """A scheduler and, on demand, executors, sharing one private NATS server."""

    nats: LocalNats
    scheduler: ServiceProcess
    env: dict[str, str]
    log_dir: Path
    api_key: str  # of tenant "default" in the island's own database
    executors: list[ServiceProcess] = field(default_factory=list)
    gateways: list[ServiceProcess] = field(default_factory=list)

    def start_executor(self, ready: bool = True, **overrides: str) -> ServiceProcess:
        port = free_port()
        env = {
            **self.env,
            "SANDMESH_EXECUTOR_PORT": str(port),
            "SANDMESH_EXECUTOR_CONCURRENCY": "1",
            **overrides,
        }
        executor = ServiceProcess(
            "executor", port, env, self.log_dir / f"executor-{len(self.executors)}.log"
        )
        executor.start()
        self.executors.append(executor)
        if ready:
            wait_ready(executor)
        return executor

    def start_gateway(self) -> ServiceProcess:
        port = free_port()
        env = {
            **self.env,
            "SANDMESH_GATEWAY_PORT": str(port),
            "SANDMESH_SCHEDULER_TARGET": self.scheduler.target,
        }
        gateway = ServiceProcess("gateway", port, env, self.log_dir / "gateway.log")
        gateway.start()
        self.gateways.append(gateway)
        wait_ready(gateway)
        return gateway


def wait_ready(service: ServiceProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health_status(service.target, "readiness") == "SERVING":
            return
        if service.exit_code() is not None:
            raise RuntimeError(f"{service.name} exited; see {service.log_path}")
        time.sleep(0.1)
    raise TimeoutError(f"{service.name} not ready; see {service.log_path}")
