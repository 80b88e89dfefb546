"""What rides in a result message and what is stored out of band, and which faults pass."""

from __future__ import annotations

import asyncio
import time

import nats.errors
import nats.js.errors
import pytest
from google.protobuf.message import DecodeError

from sandmesh.execution.v1 import execution_pb2
from sandmesh.queue.v1 import queue_pb2
from sandmesh_queue import faults, outputs
from sandmesh_runtime.resilience import GaveUp, Permanent, retry_until

MIB = 1024 * 1024


def job_result(stdout: bytes, stderr: bytes = b"") -> queue_pb2.JobResult:
    return queue_pb2.JobResult(
        execution_id="7b0f4a63-2f1c-4d7e-9a43-1d2f3e4a5b6c",
        attempt=2,
        executor_id="host-1234",
        result=execution_pb2.ExecutionResult(
            status=execution_pb2.EXECUTION_STATUS_COMPLETED, stdout=stdout, stderr=stderr
        ),
    )


def test_a_small_result_rides_whole_and_says_its_sizes() -> None:
    wire, stored = outputs.fit_result(job_result(b"hi\n", b"e"), outputs.message_budget(MIB))
    assert not stored
    assert (wire.result.stdout, wire.result.stderr) == (b"hi\n", b"e")
    assert (wire.result.stdout_size, wire.result.stderr_size) == (3, 1)
    assert wire.result.output_ref == ""


@pytest.mark.parametrize("max_payload", [4 * 1024, 64 * 1024, MIB, 8 * MIB])
@pytest.mark.parametrize("size", [0, outputs.INLINE_BYTES, outputs.INLINE_BYTES + 1, 8 * MIB])
def test_a_result_always_fits_the_server_and_keeps_its_first_bytes(
    max_payload: int, size: int
) -> None:
    original = job_result(b"o" * size, b"e" * size)
    wire, stored = outputs.fit_result(original, outputs.message_budget(max_payload))
    assert wire.ByteSize() <= outputs.message_budget(max_payload)
    assert (wire.result.stdout_size, wire.result.stderr_size) == (size, size)
    assert len(wire.result.stdout) <= outputs.INLINE_BYTES
    assert original.result.stdout.startswith(wire.result.stdout)
    assert stored == (wire.result.output_ref == f"{original.execution_id}/2")
    assert stored or wire.result.stdout == original.result.stdout


def test_chunks_leave_room_for_headers_on_any_server() -> None:
    for max_payload in (2 * 1024, 64 * 1024, MIB, 64 * MIB):
        assert 0 < outputs.chunk_bytes(max_payload) < outputs.message_budget(max_payload)
        assert outputs.chunk_bytes(max_payload) <= outputs.MAX_CHUNK_BYTES


@pytest.mark.parametrize(
    "fault",
    [
        nats.errors.MaxPayloadError(),
        DecodeError("garbage"),
        nats.js.errors.BadRequestError(code=400, description="bad"),
        nats.js.errors.APIError(code=413, description="too large"),
    ],
)
def test_faults_that_never_pass(fault: Exception) -> None:
    assert faults.permanent(fault)


@pytest.mark.parametrize(
    "fault",
    [
        nats.errors.TimeoutError(),
        nats.errors.ConnectionClosedError(),
        nats.errors.NoRespondersError(),
        nats.js.errors.ServiceUnavailableError(code=503, description="no leader"),
        ConnectionError("not connected"),
    ],
)
def test_faults_that_may_pass(fault: Exception) -> None:
    assert not faults.permanent(fault)


async def test_retry_until_stops_at_once_on_a_fault_that_never_passes() -> None:
    calls = 0

    async def oversized() -> None:
        nonlocal calls
        calls += 1
        raise nats.errors.MaxPayloadError()

    with pytest.raises(Permanent):
        await retry_until(
            oversized, until=time.monotonic() + 5, permanent=faults.permanent, what="publish"
        )
    assert calls == 1


async def test_retry_until_retries_a_passing_fault_then_gives_up_at_its_bound() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise nats.errors.TimeoutError()
        return "stored"

    ok = await retry_until(
        flaky, until=time.monotonic() + 5, permanent=faults.permanent, what="s", base_s=0.01
    )
    assert (ok, calls) == ("stored", 3)

    async def hangs() -> None:
        await asyncio.sleep(10)

    with pytest.raises(GaveUp):
        await retry_until(hangs, until=time.monotonic() + 0.3, permanent=faults.permanent, what="s")
