"""Program output that is too large to ride in a message, kept out of band.

A NATS message may not exceed the server's `max_payload` (1 MiB by default) and a gRPC
response should stay under 4 MiB (the default receive limit of Go, Node and Java clients),
while a run may keep 8 MiB on each of stdout and stderr. So a result carries at most
INLINE_BYTES of each stream; when a run kept more, both streams are stored whole in a
JetStream Object Store bucket (part of the NATS the mesh already runs), keyed by execution and
attempt, and read back in chunks. Every message the mesh sends is sized from the server's own
`max_payload`, never from an assumed one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectMetaOptions, ObjectStoreConfig, StorageType
from nats.js.errors import BadRequestError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from sandmesh.execution.v1 import execution_pb2
from sandmesh.queue.v1 import queue_pb2
from sandmesh_runtime import errors

BUCKET = "sandmesh-outputs"
_BUCKET_STREAM = f"OBJ_{BUCKET}"
# What a result, a result event or a stored record carries of each stream.
INLINE_BYTES = 64 * 1024
# The largest piece of output in one message: a live chunk, a stored chunk, a read chunk.
MAX_CHUNK_BYTES = 128 * 1024
# Room kept in every message for its headers (message id, trace context) and envelope.
_HEADROOM_BYTES = 8 * 1024

STREAM_NAMES = {
    execution_pb2.OUTPUT_STREAM_STDOUT: "stdout",
    execution_pb2.OUTPUT_STREAM_STDERR: "stderr",
}


class OutputUnavailable(errors.NotFound):
    """The stored output is gone (past its retention) or was never stored."""


def message_budget(max_payload: int) -> int:
    """The most bytes of protobuf payload one message may carry on a server with
    `max_payload`, headers included."""
    return max_payload - min(_HEADROOM_BYTES, max_payload // 4)


def chunk_bytes(max_payload: int) -> int:
    """The largest piece of output one message carries on a server with `max_payload`."""
    return max(1, min(MAX_CHUNK_BYTES, message_budget(max_payload) - 512))


def output_ref(execution_id: str, attempt: int) -> str:
    """The key prefix under which one attempt's output is stored."""
    return f"{execution_id}/{attempt}"


def _object_name(ref: str, stream: str) -> str:
    return f"{ref}/{stream}"


def stream_size(result: execution_pb2.ExecutionResult, stream: str) -> int:
    """Bytes of `stream` the run kept (results stored before sizes were recorded carry
    their whole output inline)."""
    inline = result.stdout if stream == "stdout" else result.stderr
    size = result.stdout_size if stream == "stdout" else result.stderr_size
    return max(size, len(inline))


async def ensure_bucket(js: JetStreamContext, retention_s: float, replicas: int) -> None:
    """Create the outputs bucket, or bring an existing one to `retention_s` and `replicas`."""
    config = ObjectStoreConfig(ttl=retention_s, storage=StorageType.FILE, replicas=replicas)
    try:
        await js.create_object_store(BUCKET, config=config)
    except BadRequestError:
        info = await js.stream_info(_BUCKET_STREAM)
        await js.update_stream(
            dataclasses.replace(info.config, max_age=retention_s, num_replicas=replicas)
        )


async def _bucket(js: JetStreamContext) -> ObjectStore:
    return await js.object_store(BUCKET)


def fit_result(job_result: queue_pb2.JobResult, budget: int) -> tuple[queue_pb2.JobResult, bool]:
    """The JobResult as it goes on the wire, and whether its output must be stored first.

    Each stream keeps at most INLINE_BYTES inline, and less when the message would not fit
    in `budget` bytes; the sizes always say how much the run kept in all.
    """
    wire = queue_pb2.JobResult()
    wire.CopyFrom(job_result)
    result, kept = wire.result, job_result.result
    result.stdout_size, result.stderr_size = len(kept.stdout), len(kept.stderr)
    small = len(kept.stdout) <= INLINE_BYTES and len(kept.stderr) <= INLINE_BYTES
    if small and wire.ByteSize() <= budget:
        return wire, False
    result.stdout, result.stderr = b"", b""
    result.output_ref = output_ref(wire.execution_id, wire.attempt)
    # Field tags and length prefixes of the two streams take a few bytes more.
    room = max(0, (budget - wire.ByteSize() - 32) // 2)
    keep = min(INLINE_BYTES, room)
    result.stdout, result.stderr = kept.stdout[:keep], kept.stderr[:keep]
    return wire, True


async def store(
    js: JetStreamContext, ref: str, stdout: bytes, stderr: bytes, max_payload: int
) -> None:
    """Store both streams of one attempt whole, in chunks the server accepts."""
    bucket = await _bucket(js)
    options = ObjectMetaOptions(max_chunk_size=chunk_bytes(max_payload))
    for stream, data in (("stdout", stdout), ("stderr", stderr)):
        name = _object_name(ref, stream)
        await bucket.put(name, data, meta=ObjectMeta(name=name, options=options))


async def read(
    js: JetStreamContext, ref: str, stream: str, offset: int, limit: int
) -> AsyncIterator[tuple[int, bytes]]:
    """(offset, bytes) pieces of a stored stream from `offset`, `limit` bytes at most
    (0: to the end), each at most MAX_CHUNK_BYTES."""
    bucket = await _bucket(js)
    try:
        info = await bucket.get_info(_object_name(ref, stream))
    except (ObjectNotFoundError, NotFoundError):
        raise OutputUnavailable(f"the {stream} of this execution is no longer stored") from None
    size = info.size or 0
    end = size if not limit else min(size, offset + limit)
    if offset >= end:
        return
    subscription = await js.subscribe(f"$O.{BUCKET}.C.{info.nuid}", ordered_consumer=True)
    position = 0
    try:
        while position < end:
            msg = await subscription.next_msg(timeout=5.0)
            data = msg.data
            start, stop = max(offset - position, 0), min(len(data), end - position)
            if start < stop:
                piece = data[start:stop]
                for at in range(0, len(piece), MAX_CHUNK_BYTES):
                    yield position + start + at, piece[at : at + MAX_CHUNK_BYTES]
            position += len(data)
    finally:
        await subscription.unsubscribe()
