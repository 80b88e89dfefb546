"""JetStream's sharp edges that Sandmesh's queue design relies on, shown on a real server.

Each test pins one behaviour the design takes for granted; if a nats-server upgrade changes
it, the test says which assumption broke.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import nats
import nats.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig


async def fresh_stream(js: nats.js.JetStreamContext) -> tuple[str, str]:
    name = f"EDGE_{uuid.uuid4().hex[:8].upper()}"
    subject = f"edge.{name.lower()}"
    await js.add_stream(
        StreamConfig(name=name, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE)
    )
    return name, subject


async def test_plain_nak_redelivers_at_once_ignoring_backoff(js: nats.js.JetStreamContext) -> None:
    stream, subject = await fresh_stream(js)
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name="c",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=5,
            backoff=[5.0, 10.0],
            max_deliver=3,
        ),
    )
    await js.publish(subject, b"job")
    sub = await js.pull_subscribe_bind(durable="c", stream=stream)
    (first,) = await sub.fetch(1, timeout=2)
    started = time.monotonic()
    await first.nak()
    (second,) = await sub.fetch(1, timeout=3)
    # Redelivered long before the 5 s first backoff step: nak() without a delay skips backoff.
    assert time.monotonic() - started < 1.0
    assert second.metadata.num_delivered == 2
    await second.ack()


async def test_with_backoff_the_first_step_replaces_ack_wait(js: nats.js.JetStreamContext) -> None:
    stream, subject = await fresh_stream(js)
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name="c",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30,
            backoff=[1.0, 30.0],
            max_deliver=3,
        ),
    )
    await js.publish(subject, b"job")
    sub = await js.pull_subscribe_bind(durable="c", stream=stream)
    (first,) = await sub.fetch(1, timeout=2)
    started = time.monotonic()
    # Not acked: redelivered after backoff[0] (1 s), not after ack_wait (30 s). A worker that
    # heartbeats every ack_wait/3 would be too slow here: in_progress() must beat backoff[0].
    (second,) = await sub.fetch(1, timeout=5)
    assert 0.8 < time.monotonic() - started < 4.0
    assert second.metadata.num_delivered == 2
    await second.ack()
    del first


async def test_in_progress_holds_a_job_past_ack_wait(js: nats.js.JetStreamContext) -> None:
    stream, subject = await fresh_stream(js)
    await js.add_consumer(
        stream, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, ack_wait=1)
    )
    await js.publish(subject, b"job")
    sub = await js.pull_subscribe_bind(durable="c", stream=stream)
    (msg,) = await sub.fetch(1, timeout=2)
    for _ in range(6):  # 3 s of work, heartbeating every 0.5 s under a 1 s ack_wait
        await asyncio.sleep(0.5)
        await msg.in_progress()
    with pytest.raises(nats.errors.TimeoutError):
        await sub.fetch(1, timeout=0.5)
    await msg.ack()


async def test_add_consumer_on_an_existing_durable_silently_updates_it(
    js: nats.js.JetStreamContext,
) -> None:
    stream, _ = await fresh_stream(js)
    await js.add_consumer(
        stream, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, max_deliver=5)
    )
    await js.add_consumer(
        stream, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT, max_deliver=7)
    )
    assert (await js.consumer_info(stream, "c")).config.max_deliver == 7


async def test_max_deliveries_advisory_is_lost_without_a_listener_and_kept_by_a_stream(
    js: nats.js.JetStreamContext,
) -> None:
    stream, subject = await fresh_stream(js)
    advisory = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.>"
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name="c", ack_policy=AckPolicy.EXPLICIT, ack_wait=0.5, max_deliver=1
        ),
    )
    sub = await js.pull_subscribe_bind(durable="c", stream=stream)

    async def exhaust_one() -> None:
        await js.publish(subject, b"job")
        await sub.fetch(1, timeout=2)  # delivered once, never acked
        await asyncio.sleep(0.8)
        # The advisory is sent when the consumer is next asked for work.
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=0.5)

    await exhaust_one()  # nobody listens: this advisory is gone for good
    keeper = f"ADV_{stream}"
    await js.add_stream(StreamConfig(name=keeper, subjects=[advisory]))
    await exhaust_one()
    await asyncio.sleep(0.2)
    info = await js.stream_info(keeper)
    assert info.state.messages == 1
    kept = await js.get_msg(keeper, info.state.first_seq)
    notice = json.loads(kept.data or b"{}")
    assert notice["type"] == "io.nats.jetstream.advisory.v1.max_deliver"
    assert notice["stream"] == stream and notice["deliveries"] == 1
