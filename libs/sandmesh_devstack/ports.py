"""Local TCP port helpers."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Collection

__all__ = ["free_port", "free_ports"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free at the time of the call.

    The kernel picks the port; there is an unavoidable race until the caller binds it, so
    starters that accept ``port=0`` retry with a fresh port if the bind then fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int, avoid: Collection[int] = (), host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports, none of them in `avoid` (ports already handed out but not
    yet bound). All are held open until every one is picked, so none repeats."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
            if port not in avoid:
                ports.append(port)
        return ports
