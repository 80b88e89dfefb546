"""Outgoing gRPC channels, configured one way for every service."""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc

from sandmesh_runtime import settings, telemetry
from sandmesh_runtime.bootstrap import RuntimeSettings


def retry_config(service: str, methods: Sequence[str]) -> str:
    """A gRPC service config retrying `methods` on UNAVAILABLE with backoff and jitter.

    Only for idempotent methods: a retried call may have run once already.
    """
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": service, "method": method} for method in methods],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def channel(target: str, service_config: str | None = None) -> grpc.aio.Channel:
    """An insecure channel to another Sandmesh service inside the mesh; its calls carry the
    caller's trace."""
    largest = settings.load(RuntimeSettings).max_message_bytes
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", largest),
        ("grpc.max_send_message_length", largest),
        ("grpc.keepalive_time_ms", 30_000),
    ]
    if service_config:
        options += [("grpc.service_config", service_config), ("grpc.enable_retries", 1)]
    return grpc.aio.insecure_channel(
        target, options=options, interceptors=telemetry.client_interceptors()
    )
