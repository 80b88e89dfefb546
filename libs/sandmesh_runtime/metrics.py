"""Prometheus metrics: one registry per process, one scrape endpoint per service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Under the names and labels of go-grpc-prometheus, which dashboards and alerts know.
RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code",
    ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
)
RPC_HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Time the server took to complete an RPC",
    ["grpc_service", "grpc_method", "grpc_type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EXECUTIONS = Counter(
    "sandmesh_executions_finished_total", "Executions closed, by final status", ["status"]
)
QUEUE_DEPTH = Gauge("sandmesh_queue_depth", "Jobs waiting in a lane", ["lane"])
QUEUE_OLDEST_AGE = Gauge(
    "sandmesh_queue_oldest_age_seconds", "Age of the oldest queued execution", ["lane"]
)
SANDBOX_RUN = Histogram(
    "sandmesh_sandbox_run_seconds",
    "Wall time of one sandboxed run",
    ["language", "warm"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
WARM_POOL_IDLE = Gauge(
    "sandmesh_warm_pool_idle", "Started sandboxes waiting for a run", ["language"]
)
SLOTS_WEDGED = Gauge(
    "sandmesh_executor_slots_wedged",
    "Executor slots busy for longer than the longest allowed run plus a margin",
)
BROWSER_POOL = Gauge("sandmesh_browser_pool", "Browser pool occupancy", ["what"])
BREAKER_OPEN = Gauge(
    "sandmesh_breaker_open", "1 while a downstream's breaker is open", ["downstream"]
)


def serve(port: int) -> None:
    """Expose this process's metrics on `port` (0: not at all); Prometheus labels them with
    the pod they came from. Process memory and CPU come with the default process collector.
    """
    if port:
        start_http_server(port, addr="0.0.0.0")
