"""Bench 4: a no-op job through JetStream as Sandmesh uses it vs Celery on a local Redis.

Both sides: a worker in its own process with `concurrency` slots, each taking one job at a
time and acknowledging it after the reply; the bench process submits and waits for replies.
Latency is one job at a time (submit to reply seen); throughput is `count` jobs submitted
back to back, from the first submit to the last reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import redis
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bench import celery_app, jetstream_worker
from bench.common import Ratio, Result, Size, Stack, cores, ratio, summarize_ms
from sandmesh.queue.v1 import queue_pb2
from sandmesh_devstack.nats import LocalNats
from sandmesh_devstack.ports import free_port
from sandmesh_queue import subjects
from sandmesh_runtime import deadlines

NAME = "queue"
LATENCY_COUNT = {Size.FULL: 500, Size.TINY: 5}
THROUGHPUT_COUNT = {Size.FULL: 5000, Size.TINY: 20}
REPLY_TIMEOUT_S = 30.0
JOB_TTL_S = 600.0
START_TIMEOUT_S = 60.0


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def _process(argv: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield process
    finally:
        _stop(process)


# --------------------------------------------------------------------------- JetStream


class _Submitter:
    """Publishes jobs as the scheduler does and resolves each when its reply arrives."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.waiting: dict[str, asyncio.Future[None]] = {}

    async def on_reply(self, msg: Msg) -> None:
        reply = queue_pb2.JobResult.FromString(msg.data)
        future = self.waiting.pop(reply.execution_id, None)
        if future is not None and not future.done():
            future.set_result(None)

    async def submit(self) -> asyncio.Future[None]:
        job = queue_pb2.Job(execution_id=str(uuid.uuid4()), tenant="bench")
        deadline = time.time() + JOB_TTL_S
        job.deadline.FromMilliseconds(int(deadline * 1000))
        future = asyncio.get_running_loop().create_future()
        self.waiting[job.execution_id] = future
        await self.js.publish(
            jetstream_worker.JOB_SUBJECT,
            job.SerializeToString(),
            headers={
                subjects.MSG_ID_HEADER: job.execution_id,
                subjects.TENANT_HEADER: job.tenant,
                deadlines.DEADLINE_HEADER: deadlines.to_header(deadline),
            },
        )
        return future


async def _jetstream(url: str, latency_count: int, count: int) -> tuple[list[float], float]:
    nc = await nats.connect(url, name="bench-submitter")
    try:
        submitter = _Submitter(nc)
        await jetstream_worker.declare(submitter.js)
        await nc.subscribe(jetstream_worker.RESULTS_SUBJECT, cb=submitter.on_reply)
        # Until the worker process has bound its consumer, this first job just waits.
        await asyncio.wait_for(await submitter.submit(), START_TIMEOUT_S)
        samples: list[float] = []
        for _ in range(latency_count):
            started = time.perf_counter()
            await asyncio.wait_for(await submitter.submit(), REPLY_TIMEOUT_S)
            samples.append(time.perf_counter() - started)
        started = time.perf_counter()
        futures = [await submitter.submit() for _ in range(count)]
        await asyncio.wait_for(asyncio.gather(*futures), REPLY_TIMEOUT_S + count / 10)
        return samples, time.perf_counter() - started
    finally:
        await nc.close()


def _run_jetstream(stack: Stack, latency_count: int, count: int) -> tuple[list[float], float]:
    server = LocalNats.start(stack.base / "nats-queue")
    try:
        argv = [sys.executable, "-m", "bench.jetstream_worker", server.url, str(cores())]
        with _process(argv, stack.base / "jetstream-worker.log", dict(os.environ)):
            return asyncio.run(_jetstream(server.url, latency_count, count))
    finally:
        server.stop()


# ------------------------------------------------------------------------------ Celery


@contextlib.contextmanager
def _redis(stack: Stack) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server not found; on Debian: apt-get install redis-server")
    port = free_port()
    work = stack.base / "redis"
    work.mkdir(exist_ok=True)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(work)]
    with _process(argv, work / "redis.log", dict(os.environ)):
        client = redis.Redis(host="127.0.0.1", port=port)
        stop_at = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > stop_at:
                    raise
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"


def _run_celery(stack: Stack, latency_count: int, count: int) -> tuple[list[float], float]:
    from celery.result import ResultSet  # type: ignore[import-untyped]

    with _redis(stack) as url:
        app = celery_app.app
        app.conf.update(broker_url=url, result_backend=url)
        env = {**os.environ, celery_app.REDIS_URL_VARIABLE: url}
        argv = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker"]
        argv += [f"--concurrency={cores()}", "--pool=prefork", "--loglevel=WARNING"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        with _process(argv, stack.base / "celery-worker.log", env):
            # Until the worker is up, this first task just waits in Redis.
            celery_app.noop.delay().get(timeout=START_TIMEOUT_S)
            samples: list[float] = []
            for _ in range(latency_count):
                started = time.perf_counter()
                celery_app.noop.delay().get(timeout=REPLY_TIMEOUT_S)
                samples.append(time.perf_counter() - started)
            started = time.perf_counter()
            pending = ResultSet([celery_app.noop.delay() for _ in range(count)])
            pending.get(timeout=REPLY_TIMEOUT_S + count / 10)
            elapsed = time.perf_counter() - started
        app.close()
        return samples, elapsed


def run(stack: Stack, size: Size) -> Result:
    latency_count, count = LATENCY_COUNT[size], THROUGHPUT_COUNT[size]
    result = Result(
        name=NAME,
        title=f"no-op job round trip (ms) and throughput, {cores()} worker slots",
        config={"latency_jobs": latency_count, "throughput_jobs": count, "slots": cores()},
        columns=["queue", "jobs", "p50", "p95", "p99", "jobs/s"],
    )
    figures = {
        "JetStream (Sandmesh's way)": _run_jetstream(stack, latency_count, count),
        "Celery + Redis": _run_celery(stack, latency_count, count),
    }
    summaries = {}
    rates = {}
    for label, (samples, elapsed) in figures.items():
        s = summaries[label] = summarize_ms(samples)
        rates[label] = count / elapsed
        result.rows.append(
            [label, s["count"], s.get("p50"), s.get("p95"), s.get("p99"), round(rates[label], 1)]
        )
    js_label, celery_label = figures
    result.ratios = [
        Ratio(
            "JetStream/Celery p50",
            ratio(float(summaries[js_label]["p50"]), float(summaries[celery_label]["p50"])),
            "lower is better",
        ),
        Ratio(
            "JetStream/Celery jobs/s",
            ratio(rates[js_label], rates[celery_label]),
            "higher is better",
        ),
    ]
    result.notes.append(
        "JetStream jobs carry Nats-Msg-Id and Sandmesh-Deadline, are stored on a work-queue "
        "stream with Sandmesh's JOBS settings, pulled with fetch(1) and acked (ack_sync) after "
        "the reply's publish is acknowledged; Celery runs prefetch 1 with acks_late"
    )
    result.data = {"latency_ms": summaries, "jobs_per_second": rates}
    return result
