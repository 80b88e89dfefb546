"""Bench 3: `SubmitExecution` latency with many concurrent clients, and its error count.

Each client has its own channel (its own HTTP/2 connection, as separate callers would),
connected before the clock starts; then all submit at once, `rounds` times each. The
executions they queue run meanwhile, which is the load the submit path is measured under.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import grpc

from bench.common import Ratio, Result, Size, Stack, hello_request, ratio, summarize_ms
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc

NAME = "submit"
CLIENTS = {Size.FULL: 200, Size.TINY: 20}
ROUNDS = {Size.FULL: 3, Size.TINY: 1}
CALL_TIMEOUT_S = 30.0


async def _submit_all(
    target: str, clients: int, rounds: int
) -> tuple[list[float], Counter[str], float]:
    samples: list[float] = []
    errors: Counter[str] = Counter()
    channels = [grpc.aio.insecure_channel(target) for _ in range(clients)]
    try:
        await asyncio.gather(
            *(asyncio.wait_for(c.channel_ready(), CALL_TIMEOUT_S) for c in channels)
        )
        start = asyncio.Event()

        async def client(channel: grpc.aio.Channel) -> None:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            await start.wait()
            for _ in range(rounds):
                started = time.perf_counter()
                try:
                    await stub.SubmitExecution(
                        gateway_pb2.SubmitExecutionRequest(request=hello_request()),
                        timeout=CALL_TIMEOUT_S,
                    )
                except grpc.aio.AioRpcError as error:
                    errors[error.code().name] += 1
                    continue
                samples.append(time.perf_counter() - started)

        tasks = [asyncio.create_task(client(c)) for c in channels]
        began = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return samples, errors, elapsed


def run(stack: Stack, size: Size) -> Result:
    clients, rounds = CLIENTS[size], ROUNDS[size]
    result = Result(
        name=NAME,
        title=f"SubmitExecution latency, {clients} concurrent clients x {rounds} calls, ms",
        config={"clients": clients, "rounds": rounds, "call_timeout_s": CALL_TIMEOUT_S},
        columns=["series", "calls", "errors", "p50", "p99", "max", "calls/s"],
    )
    with stack.mesh("submit") as mesh:
        samples, errors, elapsed = asyncio.run(
            _submit_all(mesh.services["gateway"].target, clients, rounds)
        )
    s = summarize_ms(samples)
    result.errors = sum(errors.values())
    calls = clients * rounds
    result.rows = [
        [
            "SubmitExecution",
            calls,
            result.errors,
            s.get("p50"),
            s.get("p99"),
            s.get("max"),
            round(len(samples) / elapsed, 1),
        ]
    ]
    result.ratios = [
        Ratio("p99/p50", ratio(float(s.get("p99", 0)), float(s.get("p50", 0))), "tail spread")
    ]
    if errors:
        result.notes.append("errors by code: " + ", ".join(f"{k} {v}" for k, v in errors.items()))
    result.data = {"latency_ms": s, "errors_by_code": dict(errors), "elapsed_s": elapsed}
    return result
