"""A JetStream context on the session's NATS server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import nats.js
import pytest

from tests.helpers.servers import Servers


@pytest.fixture
async def js(servers: Servers) -> AsyncIterator[nats.js.JetStreamContext]:
    nc = await nats.connect(servers.nats.url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()
