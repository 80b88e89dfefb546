"""The JetStream side of bench 4's worker, in its own process as an executor (and Celery's
worker) is: pull loops that take exactly one no-op job each, reply, and only then ack.

Run as `python -m bench.jetstream_worker NATS_URL LOOPS`; stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import replace

import nats
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, StreamConfig

from sandmesh.execution.v1 import execution_pb2
from sandmesh.queue.v1 import queue_pb2
from sandmesh_queue import messages, streams, subjects

STREAM = "BENCH_JOBS"
JOB_SUBJECT = "bench.jobs.default"
RESULTS_STREAM = "BENCH_RESULTS"
RESULTS_SUBJECT = "bench.results"
CONSUMER = "bench-workers"
FETCH_WAIT_S = 1.0


def _stream(name: str) -> StreamConfig:
    return next(
        config for config in streams.stream_configs(streams.QueueSettings()) if config.name == name
    )


def _consumer(stream: str) -> ConsumerConfig:
    return next(
        config
        for name, config in streams.consumer_configs(streams.QueueSettings())
        if name == stream
    )


# Sandmesh's own JOBS/RESULTS settings (retention, storage, dedupe window, ack policy,
# ack_wait, max_deliver) on private names, so nothing here touches a real queue.
JOBS_CONFIG = replace(_stream(subjects.JOBS_STREAM), name=STREAM, subjects=["bench.jobs.>"])
RESULTS_CONFIG = replace(
    _stream(subjects.RESULTS_STREAM), name=RESULTS_STREAM, subjects=[RESULTS_SUBJECT]
)
CONSUMER_CONFIG = replace(
    _consumer(subjects.JOBS_STREAM), durable_name=CONSUMER, filter_subject="bench.jobs.>"
)


async def declare(js: JetStreamContext) -> None:
    await js.add_stream(JOBS_CONFIG)
    await js.add_stream(RESULTS_CONFIG)
    await js.add_consumer(STREAM, CONSUMER_CONFIG)


async def _pull_loop(js: JetStreamContext, stop: asyncio.Event) -> None:
    subscription = await js.pull_subscribe_bind(durable=CONSUMER, stream=STREAM)
    while not stop.is_set():
        try:
            # As the executor does: one job per free slot.
            batch = await subscription.fetch(1, timeout=FETCH_WAIT_S)
        except nats.errors.TimeoutError:
            continue
        for msg in batch:
            job = queue_pb2.Job.FromString(msg.data)
            deadline = messages.job_deadline(msg.headers)
            status = (
                execution_pb2.EXECUTION_STATUS_EXPIRED
                if deadline is not None and deadline < time.time()
                else execution_pb2.EXECUTION_STATUS_COMPLETED
            )
            reply = queue_pb2.JobResult(
                execution_id=job.execution_id,
                attempt=msg.metadata.num_delivered or 1,
                result=execution_pb2.ExecutionResult(status=status),
            )
            await js.publish(
                RESULTS_SUBJECT,
                reply.SerializeToString(),
                headers={subjects.MSG_ID_HEADER: f"{reply.execution_id}:{reply.attempt}"},
            )
            await msg.ack_sync()


async def serve(url: str, loops: int) -> None:
    nc = await nats.connect(url, name="bench-jetstream-worker")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        js = nc.jetstream()
        await declare(js)
        await asyncio.gather(*(_pull_loop(js, stop) for _ in range(loops)))
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
