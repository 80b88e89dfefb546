"""The Sandmesh Python SDK: submit programs to the gateway and follow them to their result.

`Client` is for blocking code, `AsyncClient` for asyncio; both have the same methods. Every
call has a deadline, the client's default timeout or the call's own, and `run` spends one
deadline across its submit and watch. Calls that are safe to repeat are retried as
`RetryPolicy` says; any other error reaches the caller as the gRPC error itself
(`grpc.RpcError`, or `grpc.aio.AioRpcError` from `AsyncClient`), with its code and details.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from contextlib import aclosing, closing
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import grpc

from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from sandmesh.retry import Deadline, RetryPolicy

__all__ = [
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUT",
    "AsyncClient",
    "Client",
    "Deadline",
    "RetryPolicy",
    "StreamEnded",
    "connect",
    "missing_output",
    "queued",
    "run",
    "status_name",
]

T = TypeVar("T")
OutputHandler = Callable[[execution_pb2.OutputChunk], Awaitable[None] | None]
StatusHandler = Callable[[execution_pb2.StatusChange], None]

DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRY = RetryPolicy()


class StreamEnded(RuntimeError):
    """The watch stream closed before the final result arrived."""


def _bearer(api_key: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {api_key}")


def _with_key(details: Any, header: tuple[str, str]) -> Any:
    return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), header))


# grpc.aio files an interceptor under the first call kind it implements only, so unary and
# streaming calls each need their own.
class _UnaryKey(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_key(details, self._header), request)


class _StreamKey(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_key(details, self._header), request)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: tuple[tuple[str, str | bytes], ...] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _SyncKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            (*(details.metadata or ()), self._header),
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.ClientCallDetails, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)


def connect(target: str, api_key: str | None = None) -> grpc.aio.Channel:
    """A channel to the gateway at `target` whose calls carry `authorization: Bearer <key>`."""
    interceptors: list[grpc.aio.ClientInterceptor] = (
        [_UnaryKey(_bearer(api_key)), _StreamKey(_bearer(api_key))] if api_key else []
    )
    return grpc.aio.insecure_channel(target, interceptors=interceptors)


def _connect_sync(target: str, api_key: str | None) -> grpc.Channel:
    channel = grpc.insecure_channel(target)
    return grpc.intercept_channel(channel, _SyncKey(_bearer(api_key))) if api_key else channel


def _submission(
    request: execution_pb2.ExecutionRequest, idempotency_key: str | None
) -> gateway_pb2.SubmitExecutionRequest:
    # With a key the gateway answers a repeat of the same request with the same execution,
    # so a retried submit cannot queue the program twice; one key per logical submit.
    return gateway_pb2.SubmitExecutionRequest(
        request=request, idempotency_key=idempotency_key or str(uuid.uuid4())
    )


_STREAMS = (
    (execution_pb2.OUTPUT_STREAM_STDOUT, "stdout"),
    (execution_pb2.OUTPUT_STREAM_STDERR, "stderr"),
)


def missing_output(
    result: execution_pb2.ExecutionResult,
) -> list[tuple[execution_pb2.OutputStream.ValueType, str, int]]:
    """(stream, field, offset) of each stream whose result carries only its first bytes:
    the rest is read with ReadOutput from that offset."""
    missing = []
    for stream, field in _STREAMS:
        inline = getattr(result, field)
        if getattr(result, f"{field}_size") > len(inline):
            missing.append((stream, field, len(inline)))
    return missing


def _read_request(
    execution_id: str, stream: execution_pb2.OutputStream.ValueType, offset: int, limit: int
) -> gateway_pb2.ReadOutputRequest:
    return gateway_pb2.ReadOutputRequest(
        execution_id=execution_id, stream=stream, offset=offset, limit=limit
    )


def queued(execution: execution_pb2.Execution) -> execution_pb2.StatusChange:
    """The status change a just-submitted execution stands at (queued, and its position)."""
    return execution_pb2.StatusChange(
        status=execution.status, queue_position=execution.queue_position
    )


def _watch_request(execution_id: str, after_sequence: int) -> gateway_pb2.WatchExecutionRequest:
    return gateway_pb2.WatchExecutionRequest(
        execution_id=execution_id, after_sequence=after_sequence
    )


_KEY_WITH_CHANNEL = "an api_key goes with a target address; a given channel carries its own"


class AsyncClient:
    """A client of the gateway for asyncio code; `Client` is the same for blocking code."""

    def __init__(
        self,
        target: str | grpc.aio.Channel,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        """Dial `target` (host:port) with `api_key`, or use an open channel as it is (one
        with TLS credentials, say). `timeout` is the deadline of calls that give none."""
        if isinstance(target, str):
            self._channel = connect(target, api_key)
        elif api_key is not None:
            raise ValueError(_KEY_WITH_CHANNEL)
        else:
            self._channel = target
        self._gateway = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._timeout = timeout
        self._retry = retry

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls still running are cancelled."""
        await self._channel.close()

    def _deadline(self, timeout: float | None) -> Deadline:
        return Deadline(self._timeout if timeout is None else timeout)

    async def _call(self, call: Callable[[float], Awaitable[T]], deadline: Deadline) -> T:
        """`call(timeout)` with the time left, retried while the policy allows."""
        attempt = 0
        while True:
            try:
                return await call(deadline.remaining())
            except grpc.RpcError as error:
                delay = self._retry.delay(error, attempt, deadline)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def languages(self, *, timeout: float | None = None) -> list[execution_pb2.Language]:
        """The languages the mesh runs, with their versions, file names and limits."""
        request = gateway_pb2.ListLanguagesRequest()
        response = await self._call(
            lambda left: self._gateway.ListLanguages(request, timeout=left),
            self._deadline(timeout),
        )
        return list(response.languages)

    async def submit(
        self,
        request: execution_pb2.ExecutionRequest,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> execution_pb2.Execution:
        """Queue `request` and return its execution, QUEUED with its queue position. Without
        an `idempotency_key` the client makes one up, so its own retries queue it once."""
        submission = _submission(request, idempotency_key)
        response = await self._call(
            lambda left: self._gateway.SubmitExecution(submission, timeout=left),
            self._deadline(timeout),
        )
        return response.execution

    async def get(
        self, execution_id: str, *, timeout: float | None = None
    ) -> execution_pb2.Execution:
        """The execution as stored now, with its result once it has one."""
        request = gateway_pb2.GetExecutionRequest(execution_id=execution_id)
        response = await self._call(
            lambda left: self._gateway.GetExecution(request, timeout=left),
            self._deadline(timeout),
        )
        return response.execution

    async def cancel(
        self, execution_id: str, *, timeout: float | None = None
    ) -> execution_pb2.Execution:
        """Cancel a queued or running execution; a finished one comes back unchanged."""
        request = gateway_pb2.CancelExecutionRequest(execution_id=execution_id)
        response = await self._call(
            lambda left: self._gateway.CancelExecution(request, timeout=left),
            self._deadline(timeout),
        )
        return response.execution

    async def watch(
        self, execution_id: str, *, after_sequence: int = 0, timeout: float | None = None
    ) -> AsyncGenerator[execution_pb2.ExecutionEvent, None]:
        """The execution's events after `after_sequence`, ending with its result. A stream
        that breaks is resumed after the last event seen, so none comes twice."""
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            call = self._gateway.WatchExecution(
                _watch_request(execution_id, after_sequence), timeout=deadline.remaining()
            )
            try:
                async for response in call:
                    attempt = 0
                    event = response.event
                    # A result read from the record rather than the stream has no sequence.
                    after_sequence = event.sequence or after_sequence
                    yield event
                    if event.HasField("result"):
                        return
                return
            except grpc.RpcError as error:
                delay = self._retry.delay(error, attempt, deadline)
                if delay is None:
                    raise
            finally:
                call.cancel()
            await asyncio.sleep(delay)
            attempt += 1

    async def read_output(
        self,
        execution_id: str,
        stream: execution_pb2.OutputStream.ValueType = execution_pb2.OUTPUT_STREAM_STDOUT,
        *,
        offset: int = 0,
        limit: int = 0,
        timeout: float | None = None,
    ) -> bytes:
        """A finished execution's output from `offset`, `limit` bytes at most (0: all the
        rest), read in chunks; a stream that breaks resumes where it stopped."""
        deadline = self._deadline(timeout)
        data = bytearray()
        attempt = 0
        while True:
            left = limit - len(data) if limit else 0
            call = self._gateway.ReadOutput(
                _read_request(execution_id, stream, offset + len(data), left),
                timeout=deadline.remaining(),
            )
            try:
                async for piece in call:
                    attempt = 0
                    data += piece.data
                return bytes(data)
            except grpc.RpcError as error:
                delay = self._retry.delay(error, attempt, deadline)
                if delay is None:
                    raise
            finally:
                call.cancel()
            await asyncio.sleep(delay)
            attempt += 1

    async def _whole(
        self, execution_id: str, result: execution_pb2.ExecutionResult, deadline: Deadline
    ) -> execution_pb2.ExecutionResult:
        """`result` with every stream's output whole, the part beyond the inline cap read."""
        for stream, field, offset in missing_output(result):
            rest = await self.read_output(
                execution_id, stream, offset=offset, timeout=deadline.remaining()
            )
            setattr(result, field, getattr(result, field) + rest)
        return result

    async def run(
        self,
        request: execution_pb2.ExecutionRequest,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        on_output: OutputHandler | None = None,
        on_status: StatusHandler | None = None,
        whole_output: bool = True,
    ) -> execution_pb2.ExecutionResult:
        """Submit `request` and watch it to its result, all within one deadline, passing
        output chunks to `on_output` and status changes (queued, running) to `on_status`.
        The result holds the whole output, read beyond the inline cap, unless
        `whole_output` is False (then only its first bytes: see `missing_output`)."""
        deadline = self._deadline(timeout)
        execution = await self.submit(
            request, idempotency_key=idempotency_key, timeout=deadline.remaining()
        )
        if on_status is not None:
            on_status(queued(execution))
        async with aclosing(self.watch(execution.id, timeout=deadline.remaining())) as events:
            async for event in events:
                if event.HasField("output") and on_output is not None:
                    pending = on_output(event.output)
                    if pending is not None:
                        await pending
                elif event.HasField("status") and on_status is not None:
                    on_status(event.status)
                elif event.HasField("result"):
                    if not whole_output:
                        return event.result
                    return await self._whole(execution.id, event.result, deadline)
        raise StreamEnded(f"the watch of {execution.id} ended without a result")


class Client:
    """A client of the gateway for blocking code, on grpc's sync API; `AsyncClient` is the
    same for asyncio."""

    def __init__(
        self,
        target: str | grpc.Channel,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        """Dial `target` (host:port) with `api_key`, or use an open channel as it is (one
        with TLS credentials, say). `timeout` is the deadline of calls that give none."""
        if isinstance(target, str):
            self._channel = _connect_sync(target, api_key)
        elif api_key is not None:
            raise ValueError(_KEY_WITH_CHANNEL)
        else:
            self._channel = target
        self._gateway = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._timeout = timeout
        self._retry = retry

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls still running are cancelled."""
        self._channel.close()

    def _deadline(self, timeout: float | None) -> Deadline:
        return Deadline(self._timeout if timeout is None else timeout)

    def _call(self, call: Callable[[float], T], deadline: Deadline) -> T:
        """`call(timeout)` with the time left, retried while the policy allows."""
        attempt = 0
        while True:
            try:
                return call(deadline.remaining())
            except grpc.RpcError as error:
                delay = self._retry.delay(error, attempt, deadline)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1

    def languages(self, *, timeout: float | None = None) -> list[execution_pb2.Language]:
        """The languages the mesh runs, with their versions, file names and limits."""
        request = gateway_pb2.ListLanguagesRequest()
        response = self._call(
            lambda left: self._gateway.ListLanguages(request, timeout=left),
            self._deadline(timeout),
        )
        return list(response.languages)

    def submit(
        self,
        request: execution_pb2.ExecutionRequest,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> execution_pb2.Execution:
        """Queue `request` and return its execution, QUEUED with its queue position. Without
        an `idempotency_key` the client makes one up, so its own retries queue it once."""
        submission = _submission(request, idempotency_key)
        response = self._call(
            lambda left: self._gateway.SubmitExecution(submission, timeout=left),
            self._deadline(timeout),
        )
        return response.execution

    def get(self, execution_id: str, *, timeout: float | None = None) -> execution_pb2.Execution:
        """The execution as stored now, with its result once it has one."""
        request = gateway_pb2.GetExecutionRequest(execution_id=execution_id)
        response = self._call(
            lambda left: self._gateway.GetExecution(request, timeout=left),
            self._deadline(timeout),
        )
        return response.execution

    def cancel(self, execution_id: str, *, timeout: float | None = None) -> execution_pb2.Execution:
        """Cancel a queued or running execution; a finished one comes back unchanged."""
        request = gateway_pb2.CancelExecutionRequest(execution_id=execution_id)
        response = self._call(
            lambda left: self._gateway.CancelExecution(request, timeout=left),
            self._deadline(timeout),
        )
        return response.execution

    def watch(
        self, execution_id: str, *, after_sequence: int = 0, timeout: float | None = None
    ) -> Generator[execution_pb2.ExecutionEvent, None, None]:
        """The execution's events after `after_sequence`, ending with its result. A stream
        that breaks is resumed after the last event seen, so none comes twice."""
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            call = self._gateway.WatchExecution(
                _watch_request(execution_id, after_sequence), timeout=deadline.remaining()
            )
            try:
                for response in call:
                    attempt = 0
                    event = response.event
                    # A result read from the record rather than the stream has no sequence.
                    after_sequence = event.sequence or after_sequence
                    yield event
                    if event.HasField("result"):
                        return
                return
            except grpc.RpcError as error:
                delay = self._retry.delay(error, attempt, deadline)
                if delay is None:
                    raise
            finally:
                call.cancel()
            time.sleep(delay)
            attempt += 1

    def read_output(
        self,
        execution_id: str,
        stream: execution_pb2.OutputStream.ValueType = execution_pb2.OUTPUT_STREAM_STDOUT,
        *,
        offset: int = 0,
        limit: int = 0,
        timeout: float | None = None,
    ) -> bytes:
        """A finished execution's output from `offset`, `limit` bytes at most (0: all the
        rest), read in chunks; a stream that breaks resumes where it stopped."""
        deadline = self._deadline(timeout)
        data = bytearray()
        attempt = 0
        while True:
            left = limit - len(data) if limit else 0
            call = self._gateway.ReadOutput(
                _read_request(execution_id, stream, offset + len(data), left),
                timeout=deadline.remaining(),
            )
            try:
                for piece in call:
                    attempt = 0
                    data += piece.data
                return bytes(data)
            except grpc.RpcError as error:
                delay = self._retry.delay(error, attempt, deadline)
                if delay is None:
                    raise
            finally:
                call.cancel()
            time.sleep(delay)
            attempt += 1

    def _whole(
        self, execution_id: str, result: execution_pb2.ExecutionResult, deadline: Deadline
    ) -> execution_pb2.ExecutionResult:
        """`result` with every stream's output whole, the part beyond the inline cap read."""
        for stream, field, offset in missing_output(result):
            rest = self.read_output(
                execution_id, stream, offset=offset, timeout=deadline.remaining()
            )
            setattr(result, field, getattr(result, field) + rest)
        return result

    def run(
        self,
        request: execution_pb2.ExecutionRequest,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        on_output: Callable[[execution_pb2.OutputChunk], None] | None = None,
        on_status: StatusHandler | None = None,
        whole_output: bool = True,
    ) -> execution_pb2.ExecutionResult:
        """Submit `request` and watch it to its result, all within one deadline, passing
        output chunks to `on_output` and status changes (queued, running) to `on_status`.
        The result holds the whole output, read beyond the inline cap, unless
        `whole_output` is False (then only its first bytes: see `missing_output`)."""
        deadline = self._deadline(timeout)
        execution = self.submit(
            request, idempotency_key=idempotency_key, timeout=deadline.remaining()
        )
        if on_status is not None:
            on_status(queued(execution))
        with closing(self.watch(execution.id, timeout=deadline.remaining())) as events:
            for event in events:
                if event.HasField("output") and on_output is not None:
                    on_output(event.output)
                elif event.HasField("status") and on_status is not None:
                    on_status(event.status)
                elif event.HasField("result"):
                    if not whole_output:
                        return event.result
                    return self._whole(execution.id, event.result, deadline)
        raise StreamEnded(f"the watch of {execution.id} ended without a result")


async def run(
    channel: grpc.aio.Channel,
    request: execution_pb2.ExecutionRequest,
    *,
    timeout: float = 120.0,
    on_output: OutputHandler | None = None,
    on_status: StatusHandler | None = None,
    whole_output: bool = True,
) -> execution_pb2.ExecutionResult:
    """`AsyncClient.run` over a channel from `connect`, which stays open: submit `request`
    and watch it to its result within `timeout` seconds in all."""
    return await AsyncClient(channel, timeout=timeout).run(
        request, on_output=on_output, on_status=on_status, whole_output=whole_output
    )


def status_name(status: execution_pb2.ExecutionStatus.ValueType) -> str:
    """`EXECUTION_STATUS_COMPLETED` → `COMPLETED`."""
    return execution_pb2.ExecutionStatus.Name(status).removeprefix("EXECUTION_STATUS_")
