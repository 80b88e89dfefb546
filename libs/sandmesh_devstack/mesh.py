"""The four services as OS processes: started, health-checked and restarted as in Kubernetes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandmesh_devstack.ports import free_ports

# Start order: the gateway needs the scheduler, nothing needs the gateway.
SERVICES = ("scheduler", "executor", "browser-pool", "gateway")
DEFAULT_PORTS = {"gateway": 50051, "scheduler": 50052, "executor": 50053, "browser-pool": 50054}
_PORT_VARIABLE = {
    "gateway": "SANDMESH_GATEWAY_PORT",
    "scheduler": "SANDMESH_SCHEDULER_PORT",
    "executor": "SANDMESH_EXECUTOR_PORT",
    "browser-pool": "SANDMESH_BROWSER_POOL_PORT",
}


def command(service: str) -> list[str]:
    """The service's own command (`sandmesh-<service>`) from this virtualenv."""
    script = Path(sys.executable).parent / f"sandmesh-{service}"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", f"services.{service.replace('-', '_')}"]


def health_status(target: str, service: str = "", timeout: float = 1.0) -> str:
    """`SERVING`, `NOT_SERVING`, or the gRPC error code name when the check fails."""
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            return str(error.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


@dataclass
class ServiceProcess:
    """One service process with its log file."""

    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    metrics_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command(self.name),
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self, timeout: float = 35.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        if self.process is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            code = self.process.wait()
        if self._log is not None:
            self._log.close()
        return code


class Mesh:
    """The four services configured only by environment variables, as in production."""

    def __init__(
        self,
        log_dir: Path,
        nats_url: str,
        database_url: str,
        ports: dict[str, int] | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        from_env = {
            name: int(os.environ[variable])
            for name, variable in _PORT_VARIABLE.items()
            if os.environ.get(variable)
        }
        self.ports = {**DEFAULT_PORTS, **from_env, **(ports or {})}
        log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            NATS_URL=nats_url,
            DATABASE_URL=database_url,
            SANDMESH_HOST="127.0.0.1",
            SANDMESH_SCHEDULER_TARGET=f"127.0.0.1:{self.ports['scheduler']}",
            SANDMESH_EXECUTOR_TARGET=f"127.0.0.1:{self.ports['executor']}",
            SANDMESH_BROWSER_POOL_TARGET=f"127.0.0.1:{self.ports['browser-pool']}",
            PYTHONUNBUFFERED="1",
        )
        env.update({_PORT_VARIABLE[name]: str(port) for name, port in self.ports.items()})
        env.update(extra_env or {})
        self.services = {}
        metrics_ports = free_ports(len(SERVICES), avoid=set(self.ports.values()))
        for name, metrics_port in zip(SERVICES, metrics_ports, strict=True):
            self.services[name] = ServiceProcess(
                name,
                self.ports[name],
                {**env, "SANDMESH_METRICS_PORT": str(metrics_port)},
                log_dir / f"{name}.log",
                metrics_port=metrics_port,
            )

    def start(self) -> None:
        for service in self.services.values():
            service.start()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until every service reports readiness SERVING; raise with the laggards."""
        deadline = time.monotonic() + timeout
        waiting = dict(self.services)
        while waiting and time.monotonic() < deadline:
            for name, service in list(waiting.items()):
                code = service.exit_code()
                if code is not None:
                    raise RuntimeError(
                        f"{name} exited with code {code} while starting; see {service.log_path}"
                    )
                if health_status(service.target, "readiness") == "SERVING":
                    del waiting[name]
            time.sleep(0.2)
        if waiting:
            raise TimeoutError(f"not ready after {timeout:.0f} s: {', '.join(waiting)}")

    def restart_dead(self) -> list[tuple[str, int]]:
        """Restart every service that exited; returns (name, exit code) of each."""
        restarted = []
        for name, service in self.services.items():
            code = service.exit_code()
            if code is not None:
                service.restarts += 1
                service.start()
                restarted.append((name, code))
        return restarted

    def stop(self) -> dict[str, int | None]:
        """Stop the services in reverse start order; returns their exit codes."""
        return {name: self.services[name].stop() for name in reversed(SERVICES)}
