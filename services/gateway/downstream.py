"""The services behind the gateway: each call gets the time left of ours and goes through
the downstream's circuit breaker; a downstream's refusal reaches our caller unchanged (the
runtime's error hook relays it, google.rpc details included)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from sandmesh.gateway.v1 import gateway_pb2
from sandmesh_runtime import deadlines, errors
from sandmesh_runtime.resilience import CircuitBreaker

T = TypeVar("T")
# Codes that say the downstream itself is in trouble; they count against its breaker.
FAULTS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


class Downstream:
    """One service behind the gateway, guarded by its own breaker."""

    def __init__(self, name: str, cooldown_s: float, timeout_s: float) -> None:
        self.breaker = CircuitBreaker(name, failures=5, cooldown_s=cooldown_s)
        self._timeout_s = timeout_s

    async def call(self, call: Callable[[float], Awaitable[T]]) -> T:
        """`call(timeout)` with the time left on ours; while the breaker is open it is
        refused at once (UNAVAILABLE with the time until the next trial), not tried."""
        if not self.breaker.allow():
            raise errors.Unavailable(
                f"the {self.breaker.name} is unavailable", self.breaker.retry_after()
            )
        try:
            result = await call(deadlines.timeout(self._timeout_s))
        except grpc.aio.AioRpcError as error:
            (self.breaker.failed if error.code() in FAULTS else self.breaker.succeeded)()
            raise
        self.breaker.succeeded()
        return result

    async def item(self, call: Callable[[float], Awaitable[Any]]) -> gateway_pb2.BatchItemResult:
        """One batch item: its execution, or its own error; it never sinks the batch."""
        try:
            response = await self.call(call)
        except (grpc.aio.AioRpcError, errors.SandmeshError) as exc:
            refusal = errors.translate(exc)
            assert refusal is not None
            return item_error(refusal)
        return gateway_pb2.BatchItemResult(execution=response.execution)


def item_error(refusal: errors.SandmeshError) -> gateway_pb2.BatchItemResult:
    return gateway_pb2.BatchItemResult(
        error_code=refusal.code.value[0], error_message=refusal.message
    )
