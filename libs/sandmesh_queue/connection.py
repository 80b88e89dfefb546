"""One NATS connection per service, retried until the server answers."""

from __future__ import annotations

import asyncio
import logging

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from sandmesh_queue.streams import QueueSettings, ensure_streams

log = logging.getLogger("sandmesh.queue")


class Queue:
    """A NATS connection with JetStream, which services may hold before it exists."""

    def __init__(self, name: str, settings: QueueSettings) -> None:
        self.url = settings.url
        self.name = name
        self.settings = settings
        self._nc: Client | None = None
        self._lock = asyncio.Lock()

    @property
    def nc(self) -> Client:
        if self._nc is None or not self._nc.is_connected:
            raise ConnectionError(f"not connected to NATS at {self.url}")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream()

    @property
    def max_payload(self) -> int:
        """The largest message the server accepts, as its INFO last said: known while the
        connection is down too, so work in hand can size its messages and retry them."""
        if self._nc is None:
            raise ConnectionError(f"not connected to NATS at {self.url}")
        return self._nc.max_payload

    async def ready(self) -> JetStreamContext:
        """Connect once (retrying until the server answers) and declare the streams.

        Every caller waits for the same first connection; later drops reconnect by themselves.
        """
        async with self._lock:
            if self._nc is None:
                await self._connect()
                await ensure_streams(self.js, self.settings)
        return self.js

    async def _connect(self, retry_every: float = 1.0) -> None:

        async def on_error(exc: Exception) -> None:
            log.warning("nats error", extra={"error": str(exc)})

        async def on_disconnect() -> None:
            log.warning("nats disconnected", extra={"url": self.url})

        async def on_reconnect() -> None:
            log.info("nats reconnected", extra={"url": self.url})

        while True:
            try:
                self._nc = await nats.connect(
                    self.url,
                    name=self.name,
                    connect_timeout=2,
                    reconnect_time_wait=1,
                    max_reconnect_attempts=-1,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                )
            except Exception as exc:
                log.warning("nats unreachable", extra={"url": self.url, "error": str(exc)})
                await asyncio.sleep(retry_every)
                continue
            log.info("nats connected", extra={"url": self.url})
            return

    async def ping(self) -> None:
        """Readiness probe: the connection is up and JetStream answers."""
        await self.js.account_info()

    async def close(self) -> None:
        # close, not drain: every publish was already acked, and draining would wait out
        # the pull subscriptions of cancelled consumers.
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
