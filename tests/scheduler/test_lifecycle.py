"""Every accepted execution reaches exactly one final state, whatever happens to it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path
from typing import TypeAlias

import grpc
import nats
import nats.errors
import psycopg
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2

from sandmesh.execution.v1 import execution_pb2
from sandmesh.queue.v1 import queue_pb2
from sandmesh.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from sandmesh_queue import messages, subjects
from sandmesh_runtime.errors import details_of
from services.executor import languages
from tests.helpers.cli import sandmesh
from tests.helpers.island import ACK_WAIT_S, MAX_QUEUED_PER_TENANT, Island, wait_ready

Stub: TypeAlias = "scheduler_pb2_grpc.SchedulerServiceAsyncStub"


def program(source: str, **limits: int) -> execution_pb2.ExecutionRequest:
    return execution_pb2.ExecutionRequest(
        language="python3", source=source, limits=execution_pb2.Limits(**limits)
    )


def in_seconds(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int((time.time() + seconds) * 1e9))
    return stamp


async def enqueue(
    stub: Stub, tenant: str, source: str = "print(1)", **fields: object
) -> execution_pb2.Execution:
    response = await stub.Enqueue(
        scheduler_pb2.EnqueueRequest(tenant=tenant, request=program(source), **fields),  # type: ignore[arg-type]
        timeout=5,
    )
    return response.execution


async def get(stub: Stub, tenant: str, execution_id: str) -> execution_pb2.Execution:
    response = await stub.GetExecution(
        scheduler_pb2.GetExecutionRequest(tenant=tenant, execution_id=execution_id), timeout=5
    )
    return response.execution


async def wait_status(
    stub: Stub, tenant: str, execution_id: str, wanted: set[int], timeout: float = 30
) -> execution_pb2.Execution:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        execution = await get(stub, tenant, execution_id)
        if execution.status in wanted:
            return execution
        await asyncio.sleep(0.05)
    raise AssertionError(f"{execution_id} still {execution.status}, wanted {wanted}")


async def jobs_in_stream(island: Island) -> int:
    nc = await nats.connect(island.nats.url)
    try:
        return int((await nc.jetstream().stream_info(subjects.JOBS_STREAM)).state.messages)
    finally:
        await nc.close()


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def test_same_key_and_request_returns_the_same_execution(
    scheduler: Stub, island: Island
) -> None:
    who = tenant()
    first = await enqueue(scheduler, who, idempotency_key="order-1")
    again = await enqueue(scheduler, who, idempotency_key="order-1")
    assert again.id == first.id
    assert await jobs_in_stream(island) == 1
    # The key belongs to the tenant: another tenant's same key is a new execution.
    other = await enqueue(scheduler, tenant(), idempotency_key="order-1")
    assert other.id != first.id


async def test_same_key_with_another_request_is_already_exists_naming_the_key(
    scheduler: Stub,
) -> None:
    who = tenant()
    await enqueue(scheduler, who, idempotency_key="order-2")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await enqueue(scheduler, who, source="print(2)", idempotency_key="order-2")
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "'order-2'" in (caught.value.details() or "")


async def test_concurrent_submissions_with_one_key_make_one_execution(
    scheduler: Stub, island: Island
) -> None:
    who = tenant()
    executions = await asyncio.gather(
        *(enqueue(scheduler, who, idempotency_key="burst") for _ in range(10))
    )
    assert len({e.id for e in executions}) == 1
    assert await jobs_in_stream(island) == 1


async def test_queue_position_counts_the_jobs_ahead(scheduler: Stub) -> None:
    who = tenant()
    first = await enqueue(scheduler, who)
    second = await enqueue(scheduler, who)
    assert second.queue_position == first.queue_position + 1
    assert (await get(scheduler, who, second.id)).queue_position == second.queue_position


async def test_cancel_while_queued_removes_the_job_so_it_never_runs(
    scheduler: Stub, island: Island
) -> None:
    who = tenant()
    execution = await enqueue(scheduler, who, source="print('must not run')")
    assert await jobs_in_stream(island) == 1
    cancelled = await scheduler.CancelExecution(
        scheduler_pb2.CancelExecutionRequest(tenant=who, execution_id=execution.id), timeout=5
    )
    assert cancelled.execution.status == execution_pb2.EXECUTION_STATUS_CANCELLED
    assert await jobs_in_stream(island) == 0
    # An executor arriving later finds nothing to run.
    island.start_executor()
    await asyncio.sleep(1.5)
    final = await get(scheduler, who, execution.id)
    assert final.status == execution_pb2.EXECUTION_STATUS_CANCELLED
    assert final.result.stdout == b"" and not final.HasField("started_at")
    # Cancelling again changes nothing; another tenant cannot see it at all.
    again = await scheduler.CancelExecution(
        scheduler_pb2.CancelExecutionRequest(tenant=who, execution_id=execution.id), timeout=5
    )
    assert again.execution.finished_at == final.finished_at
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scheduler.CancelExecution(
            scheduler_pb2.CancelExecutionRequest(tenant=tenant(), execution_id=execution.id),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_queued_past_its_deadline_expires_and_never_runs(
    scheduler: Stub, island: Island
) -> None:
    who = tenant()
    execution = await enqueue(scheduler, who, deadline=in_seconds(0.5))
    expired = await wait_status(
        scheduler, who, execution.id, {execution_pb2.EXECUTION_STATUS_EXPIRED}, timeout=5
    )
    assert expired.result.error_code == "E004"
    # The sweep records EXPIRED, then deletes the job from the stream: a moment apart.
    for _ in range(50):
        if await jobs_in_stream(island) == 0:
            break
        await asyncio.sleep(0.05)
    assert await jobs_in_stream(island) == 0


async def test_full_tenant_queue_is_resource_exhausted_with_retry_info(scheduler: Stub) -> None:
    who = tenant()
    for _ in range(MAX_QUEUED_PER_TENANT):
        await enqueue(scheduler, who)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await enqueue(scheduler, who)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    kinds = {type(d) for d in details_of(caught.value)}
    assert {error_details_pb2.RetryInfo, error_details_pb2.QuotaFailure} <= kinds
    # Other tenants are not held back by this one.
    await enqueue(scheduler, tenant())


async def test_executor_killed_mid_job_the_job_completes_on_another(
    scheduler: Stub, island: Island
) -> None:
    first = island.start_executor()
    who = tenant()
    execution = await enqueue(scheduler, who, source="import time\ntime.sleep(1.5)\nprint('done')")
    await wait_status(scheduler, who, execution.id, {execution_pb2.EXECUTION_STATUS_RUNNING})
    assert first.process is not None
    first.process.kill()
    island.start_executor()
    final = await wait_status(
        scheduler, who, execution.id, {execution_pb2.EXECUTION_STATUS_COMPLETED}, timeout=30
    )
    assert final.result.stdout == b"done\n"
    assert final.attempt == 2


async def test_job_whose_executor_dies_every_time_is_dead_lettered_and_replays(
    scheduler: Stub, island: Island
) -> None:
    who = "default"  # the gateway's tenant, so the admin CLI below sees this dead letter
    execution = await enqueue(scheduler, who, source="import time\ntime.sleep(2)\nprint('finally')")
    for attempt in (1, 2):
        executor = island.start_executor()
        running = await wait_status(
            scheduler, who, execution.id, {execution_pb2.EXECUTION_STATUS_RUNNING}
        )
        assert running.attempt == attempt
        assert executor.process is not None
        executor.process.kill()
    # JetStream announces the exhausted job when a consumer next asks for work, so the
    # advisory comes once an executor pulls again (as a live cluster always does).
    island.start_executor()
    final = await wait_status(
        scheduler, who, execution.id, {execution_pb2.EXECUTION_STATUS_SYSTEM_ERROR}, timeout=15
    )
    assert "dead-letter" in final.result.detail

    listed = await scheduler.ListDeadLetters(
        scheduler_pb2.ListDeadLettersRequest(tenant=who), timeout=5
    )
    (letter,) = [d for d in listed.dead_letters if d.execution_id == execution.id]
    assert letter.deliveries == 2
    assert "each attempt ended without a result" in letter.reason
    assert letter.request.source == execution.request.source
    hidden = await scheduler.ListDeadLetters(
        scheduler_pb2.ListDeadLettersRequest(tenant=tenant()), timeout=5
    )
    assert list(hidden.dead_letters) == []

    gateway = ("--gateway", island.start_gateway().target, "--api-key", island.api_key)
    shown = sandmesh("admin", "dlq", "list", *gateway)
    listing = shown.stdout.decode()
    assert shown.returncode == 0 and letter.id in listing and execution.id in listing
    replayed = sandmesh("admin", "dlq", "replay", letter.id, *gateway)
    assert replayed.returncode == 0, replayed.stderr
    replay_id = replayed.stdout.decode().split()[-1]
    assert replay_id != execution.id
    done = await wait_status(scheduler, who, replay_id, {execution_pb2.EXECUTION_STATUS_COMPLETED})
    assert done.result.stdout == b"finally\n"
    twice = sandmesh("admin", "dlq", "replay", letter.id, *gateway)
    assert twice.returncode == 2 and b"NOT_FOUND" in twice.stderr


async def test_a_result_delivered_twice_is_stored_once_with_one_final_event(
    scheduler: Stub, island: Island
) -> None:
    who = tenant()
    execution = await enqueue(scheduler, who)
    nc = await nats.connect(island.nats.url)
    try:
        js = nc.jetstream()
        finals = await js.subscribe(
            subjects.event_subject(execution.id, "result"), ordered_consumer=True
        )
        # Two attempts report (as after a redelivery): different message ids, both stored.
        for attempt, text in ((1, b"first\n"), (2, b"second\n")):
            result = queue_pb2.JobResult(
                execution_id=execution.id,
                attempt=attempt,
                result=execution_pb2.ExecutionResult(
                    status=execution_pb2.EXECUTION_STATUS_COMPLETED, stdout=text, exit_code=0
                ),
            )
            await messages.publish_result(js, result)
        stored = await wait_status(
            scheduler, who, execution.id, {execution_pb2.EXECUTION_STATUS_COMPLETED}
        )
        await asyncio.sleep(0.5)
        assert stored.result.stdout == b"first\n"
        assert (await get(scheduler, who, execution.id)).result.stdout == b"first\n"
        await finals.next_msg(timeout=2)
        with pytest.raises(nats.errors.TimeoutError):
            await finals.next_msg(timeout=0.5)
    finally:
        await nc.close()


async def test_a_redelivered_job_whose_result_awaits_the_scheduler_is_not_run_again(
    scheduler: Stub, island: Island
) -> None:
    # The window between two executors: one published the result and died before its ack,
    # and the scheduler has not taken the result yet (here: it is stopped), so no result
    # event exists when the job is delivered again.
    who = tenant()
    execution = await enqueue(scheduler, who, source="print('second run')")
    island.scheduler.stop(10)
    nc = await nats.connect(island.nats.url)
    try:
        js = nc.jetstream()
        # The first executor: takes the job, reports, and dies before its ack.
        first = await js.pull_subscribe_bind(
            durable=subjects.executor_consumer(subjects.LANES[0]), stream=subjects.JOBS_STREAM
        )
        (taken,) = await first.fetch(1, timeout=5)
        assert queue_pb2.Job.FromString(taken.data).execution_id == execution.id
        first_run = queue_pb2.JobResult(
            execution_id=execution.id,
            attempt=1,
            result=execution_pb2.ExecutionResult(
                status=execution_pb2.EXECUTION_STATUS_COMPLETED, stdout=b"first run\n"
            ),
        )
        await messages.publish_result(js, first_run)
        executor = island.start_executor()
        for _ in range(200):
            if await jobs_in_stream(island) == 0:
                break
            await asyncio.sleep(0.1)
        assert await jobs_in_stream(island) == 0, "the executor never took the job"
        log = executor.log_path.read_text()
        assert "job skipped: already run" in log
        assert execution.id not in "".join(
            line for line in log.splitlines() if '"job done"' in line
        )
        try:
            last = await js.get_msg(
                subjects.EVENTS_STREAM, subject=subjects.event_subject(execution.id, "status")
            )
        except nats.js.errors.NotFoundError:
            last_status = None
        else:
            last_status = execution_pb2.ExecutionEvent.FromString(last.data or b"").status.status
        assert last_status != execution_pb2.EXECUTION_STATUS_RUNNING
    finally:
        await nc.close()
    island.scheduler.start()
    wait_ready(island.scheduler)
    stored = await wait_status(
        scheduler, who, execution.id, {execution_pb2.EXECUTION_STATUS_COMPLETED}
    )
    assert stored.result.stdout == b"first run\n"


async def test_interactive_goes_first_and_batch_is_never_starved(
    scheduler: Stub, island: Island
) -> None:
    who = tenant()
    source = "import time\nprint(time.time())"

    async def queue(priority: int, count: int) -> list[str]:
        ids = []
        for _ in range(count):
            response = await scheduler.Enqueue(
                scheduler_pb2.EnqueueRequest(
                    tenant=who,
                    request=execution_pb2.ExecutionRequest(
                        language="python3",
                        source=source,
                        priority=priority,  # type: ignore[arg-type]
                    ),
                ),
                timeout=5,
            )
            ids.append(response.execution.id)
        return ids

    # Batch first, so arrival order alone would run it first.
    batch = await queue(execution_pb2.PRIORITY_BATCH, 2)
    interactive = await queue(execution_pb2.PRIORITY_INTERACTIVE, 6)
    island.start_executor()  # one slot: runs are strictly one after another
    started = {}
    for execution_id in [*batch, *interactive]:
        done = await wait_status(
            scheduler, who, execution_id, {execution_pb2.EXECUTION_STATUS_COMPLETED}
        )
        started[execution_id] = float(done.result.stdout)
    order = ["B" if i in batch else "I" for i in sorted(started, key=started.__getitem__)]
    assert order[:3] == ["I", "I", "I"], order
    # Three interactive turns in four: the first batch job runs before the last interactive.
    assert order.index("B") < max(i for i, lane in enumerate(order) if lane == "I"), order


async def test_registry_marks_a_silent_executor_dead_and_requeues_its_run(
    scheduler: Stub, island: Island
) -> None:
    first = island.start_executor()

    async def executors() -> list[scheduler_pb2.ExecutorStatus]:
        stats = await scheduler.GetQueueStats(scheduler_pb2.GetQueueStatsRequest(), timeout=5)
        return list(stats.executors)

    deadline = time.monotonic() + 10
    while not [e for e in await executors() if e.alive]:
        assert time.monotonic() < deadline, "the executor never announced itself"
        await asyncio.sleep(0.2)
    (announced,) = await executors()
    assert announced.capacity == 1

    who = tenant()
    execution = await enqueue(scheduler, who, source="import time\ntime.sleep(2)\nprint('ok')")
    await wait_status(scheduler, who, execution.id, {execution_pb2.EXECUTION_STATUS_RUNNING})
    assert first.process is not None
    first.process.kill()
    # Silent for longer than SANDMESH_EXECUTOR_SILENCE_S: dead, and its run waits again.
    await wait_status(scheduler, who, execution.id, {execution_pb2.EXECUTION_STATUS_QUEUED}, 10)
    assert [e.alive for e in await executors()] == [False]
    island.start_executor()
    done = await wait_status(
        scheduler, who, execution.id, {execution_pb2.EXECUTION_STATUS_COMPLETED}
    )
    assert done.result.stdout == b"ok\n" and done.attempt == 2


async def test_infrastructure_failures_are_retried_with_backoff_then_dead_lettered(
    scheduler: Stub, island: Island, tmp_path: Path
) -> None:
    # A real executor whose python3 toolchain is missing: every sandbox start fails, which
    # is our failure, never the program's, so it is retried and never reported as a result.
    registry = await asyncio.to_thread(Path(languages.REGISTRY_FILE).read_text)
    broken = tmp_path / "languages.toml"
    await asyncio.to_thread(
        broken.write_text,
        registry.replace('run = ["/usr/bin/python3"', 'run = ["/nonexistent/python3"'),
    )
    island.start_executor(
        ready=False, SANDMESH_LANGUAGES_FILE=str(broken), SANDMESH_WARM_POOL_SIZE="0"
    )
    who = tenant()
    execution = await enqueue(scheduler, who)
    final = await wait_status(
        scheduler, who, execution.id, {execution_pb2.EXECUTION_STATUS_SYSTEM_ERROR}, timeout=30
    )
    assert "dead-letter" in final.result.detail
    assert final.attempt == 2
    listed = await scheduler.ListDeadLetters(
        scheduler_pb2.ListDeadLettersRequest(tenant=who), timeout=5
    )
    (letter,) = listed.dead_letters
    assert "nonexistent" in letter.last_error or "setup failed" in letter.last_error, letter


async def test_a_result_that_cannot_go_out_frees_its_slot_and_the_job_is_handed_back(
    scheduler: Stub, island: Island
) -> None:
    executor = island.start_executor(SANDMESH_REPORT_TIMEOUT_S="2")
    who = tenant()
    execution = await enqueue(scheduler, who, source="import time\ntime.sleep(1.5)\nprint('done')")
    await wait_status(scheduler, who, execution.id, {execution_pb2.EXECUTION_STATUS_RUNNING})
    # NATS stops answering (SIGSTOP: the connection stays up, nothing is acknowledged) while
    # the program ends, so its result cannot be published within the report bound.
    os.kill(island.nats.pid, signal.SIGSTOP)
    try:
        handed_back = "result not delivered; job handed back"
        deadline = time.monotonic() + 15
        while handed_back not in executor.log_path.read_text():
            assert time.monotonic() < deadline, "the executor never gave the job up"
            await asyncio.sleep(0.2)
    finally:
        os.kill(island.nats.pid, signal.SIGCONT)
    final = await wait_status(
        scheduler, who, execution.id, {execution_pb2.EXECUTION_STATUS_COMPLETED}, timeout=30
    )
    assert final.result.stdout == b"done\n"
    assert executor.exit_code() is None
    served = await enqueue(scheduler, who, source="print('next')")
    after = await wait_status(
        scheduler, who, served.id, {execution_pb2.EXECUTION_STATUS_COMPLETED}, timeout=30
    )
    assert after.result.stdout == b"next\n"


async def test_a_job_that_does_not_parse_is_closed_at_once_and_never_retried(
    scheduler: Stub, island: Island
) -> None:
    who = tenant()
    execution_id = str(uuid.uuid4())
    # A row as the scheduler would store it, with a job no executor can read: a fault a
    # well-behaved scheduler cannot make, so the test writes the bytes itself.
    async with await psycopg.AsyncConnection.connect(island.env["DATABASE_URL"]) as conn:
        await conn.execute(
            "INSERT INTO executions (id, tenant, request, language, priority, status, deadline)"
            " VALUES (%s, %s, %s, 'python3', 'interactive', 'QUEUED', now() + interval '1 hour')",
            (uuid.UUID(execution_id), who, program("print(1)").SerializeToString()),
        )
        await conn.commit()
    nc = await nats.connect(island.nats.url)
    try:
        await nc.jetstream().publish(
            subjects.job_subject("interactive"),
            b"\xff\xff\xff not a protobuf",
            headers={subjects.MSG_ID_HEADER: execution_id},
        )
    finally:
        await nc.close()
    executor = island.start_executor()
    final = await wait_status(
        scheduler, who, execution_id, {execution_pb2.EXECUTION_STATUS_SYSTEM_ERROR}, timeout=15
    )
    assert "could not be read" in final.result.detail
    assert await jobs_in_stream(island) == 0
    await asyncio.sleep(2 * ACK_WAIT_S)  # a redelivery would come within ack_wait
    assert executor.log_path.read_text().count("unreadable job dropped") == 1
