"""Outgoing gRPC channels, configured one way for every service."""

from __future__ import annotations

import grpc

from sandmesh_runtime.bootstrap import MAX_MESSAGE_BYTES


def channel(target: str) -> grpc.aio.Channel:
    """An insecure channel to another Sandmesh service inside the mesh."""
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
        ],
    )
