"""The one way a Sandmesh service runs: gRPC server, health, reflection, hooks, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sandmesh_runtime import deadlines, errors, interceptors, metrics, settings, telemetry
from sandmesh_runtime.health import Check, Health
from sandmesh_runtime.logs import setup_logging
from sandmesh_runtime.settings import env

log = logging.getLogger("sandmesh.bootstrap")

# The default bound on one gRPC message (SANDMESH_MAX_MESSAGE_BYTES overrides it).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class RuntimeSettings:
    """Settings every service shares."""

    host: str = env("SANDMESH_HOST", "0.0.0.0", "address the gRPC server binds")
    grace_s: float = env("SANDMESH_GRACE_S", 30.0, "how long in-flight calls may finish on stop")
    health_interval_s: float = env("SANDMESH_HEALTH_INTERVAL_S", 1.0, "readiness re-check period")
    log_level: str = env("SANDMESH_LOG_LEVEL", "INFO", "root log level")
    metrics_port: int = env("SANDMESH_METRICS_PORT", 0, "Prometheus scrape port; 0 turns it off")
    otlp_endpoint: str = env(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "", "OTLP/gRPC collector for traces; empty keeps them in"
    )
    max_message_bytes: int = env(
        "SANDMESH_MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES, "largest gRPC message in or out"
    )


@runtime_checkable
class HasHooks(Protocol):
    """A service with call hooks of its own (auth, say), run after tracing, deadline,
    logging and the error boundary, so what they raise is answered like a handler's."""

    def hooks(self) -> Sequence[interceptors.CallHook]: ...


class Service(Protocol):
    """What a service gives the bootstrap."""

    name: str

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        """Add the servicers to `server`; return their full service names."""

    def checks(self) -> Sequence[Check]:
        """The dependency probes that decide readiness."""

    async def start(self) -> None:
        """Start background work. Must not wait for dependencies to be up."""

    async def stop(self) -> None:
        """Release dependencies after the server has drained."""


async def serve(service: Service, port: int, runtime: RuntimeSettings) -> None:
    """Serve `service` on `port` until SIGTERM or SIGINT, then drain and return."""
    server = grpc.aio.server(
        interceptors=[
            interceptors.HookInterceptor(
                [
                    telemetry.tracing_hook,
                    deadlines.deadline_hook,
                    interceptors.logging_hook,
                    errors.error_hook,
                    *(service.hooks() if isinstance(service, HasHooks) else ()),
                ]
            )
        ],
        options=[
            ("grpc.max_receive_message_length", runtime.max_message_bytes),
            ("grpc.max_send_message_length", runtime.max_message_bytes),
        ],
    )
    names = list(service.register(server))
    health = Health(names, service.checks(), runtime.health_interval_s)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    address = f"{runtime.host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio raises where older versions returned 0
        raise OSError(f"cannot listen on {address}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot listen on {address}")

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    metrics.serve(runtime.metrics_port)
    await health.start()
    await server.start()
    await service.start()
    checker = asyncio.create_task(health.run(), name="readiness")
    log.info("serving", extra={"address": address, "services": names})

    await stopping.wait()
    log.info("stopping: readiness is NOT_SERVING, draining", extra={"grace_s": runtime.grace_s})
    checker.cancel()
    await health.drain()
    await server.stop(runtime.grace_s)
    await service.stop()
    log.info("stopped")


def run(name: str, build: Callable[[], tuple[Service, int]]) -> None:
    """Entry point of a service process: serve until stopped, then exit 0.

    Any start-up or serving failure exits 1 with the reason on stderr, logged first.
    """
    try:
        runtime = settings.load(RuntimeSettings)
        setup_logging(name, runtime.log_level)
        telemetry.setup_tracing(name, runtime.otlp_endpoint)
        service, port = build()
        asyncio.run(serve(service, port, runtime))
    except Exception as exc:
        log.critical("exiting: %s", exc, exc_info=True)
        print(f"sandmesh-{name}: fatal: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        telemetry.shutdown()


class _Configured(Protocol):
    @property
    def port(self) -> int: ...


C = TypeVar("C", bound=_Configured)


def entry_point(name: str, service: Callable[[C], Service], config: type[C]) -> Callable[[], None]:
    """The `sandmesh-<name>` command: its settings from the environment, then `run`."""

    def main() -> None:
        def build() -> tuple[Service, int]:
            loaded = settings.load(config)
            return service(loaded), loaded.port

        run(name, build)

    return main
