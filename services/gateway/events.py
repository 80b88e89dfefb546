"""Following an execution's event log: its history in order, then live events, ending
with its result, with no gap and no duplicate."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from sandmesh.execution.v1 import execution_pb2
from sandmesh_queue import subjects
from sandmesh_queue.connection import Queue
from sandmesh_runtime import errors, telemetry

# A watcher that hears nothing for this long re-reads the state, in case an event was lost.
RECHECK_S = 2.0


async def follow(
    queue: Queue,
    execution_id: str,
    after_sequence: int,
    read: Callable[[], Awaitable[execution_pb2.Execution]],
) -> AsyncIterator[execution_pb2.ExecutionEvent]:
    """The execution's events after `after_sequence`, ending with its result; `read` gives
    the stored record, the way to end when the final event expired or was never sent."""
    try:
        js = queue.js
    except ConnectionError as exc:
        raise errors.Unavailable("the event stream is unavailable") from exc
    config = (
        ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_sequence + 1
        )
        if after_sequence
        else None
    )
    subscription = await js.subscribe(
        subjects.execution_events(execution_id), ordered_consumer=True, config=config
    )
    try:
        while True:
            try:
                msg = await subscription.next_msg(timeout=RECHECK_S)
            except nats.errors.TimeoutError:
                current = await read()
                if current.HasField("result") and current.result.status:
                    yield execution_pb2.ExecutionEvent(
                        execution_id=current.id, result=current.result
                    )
                    return
                continue
            event = execution_pb2.ExecutionEvent.FromString(msg.data)
            event.sequence = msg.metadata.sequence.stream
            if event.HasField("result"):
                telemetry.link_to_publisher(msg.headers)
                yield event
                return
            yield event
    finally:
        await subscription.unsubscribe()
