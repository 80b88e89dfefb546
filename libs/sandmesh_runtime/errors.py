"""One error tree and one boundary: every refusal a service makes is a SandmeshError with
its gRPC status code and google.rpc details, and `error_hook` turns it, or a foreign error
(database, queue, deadline), into the call's status."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import nats.errors
import psycopg
import psycopg_pool
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger("sandmesh.rpc")


class SandmeshError(Exception):
    """The root of every refusal a Sandmesh service answers with.

    Each kind carries its gRPC status code, and `retry_after` (seconds) when the caller may
    come back; `error_hook` turns one raised by a handler into the call's status, with
    google.rpc details, so no handler maps errors itself.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def details(self) -> list[Message]:
        """The google.rpc detail messages that go with the status."""
        return [] if self.retry_after is None else [retry_info(self.retry_after)]

    def status(self) -> status_pb2.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in self.details():
            status.details.add().Pack(detail)
        return status


class InvalidArgument(SandmeshError):
    """Bad input: every (field, what is wrong) pair goes back as a BadRequest violation."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Iterable[tuple[str, str]]) -> None:
        self.violations = list(violations)
        super().__init__("; ".join(f"{field}: {why}" for field, why in self.violations))

    def details(self) -> list[Message]:
        return [bad_request(self.violations)]


class Unauthenticated(SandmeshError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(SandmeshError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(SandmeshError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(SandmeshError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(SandmeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(SandmeshError):
    code = grpc.StatusCode.ABORTED


class DeadlineExceeded(SandmeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(SandmeshError):
    """Out of room: a full pool, an answer at its size bound."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class QuotaExceeded(ResourceExhausted):
    """Over a rate limit or quota: RetryInfo says when to come back, QuotaFailure which."""

    def __init__(self, message: str, subject: str, limit: str, retry_after: float) -> None:
        super().__init__(message, retry_after=retry_after)
        self.subject, self.limit = subject, limit

    def details(self) -> list[Message]:
        violation = error_details_pb2.QuotaFailure.Violation(
            subject=self.subject, description=self.limit
        )
        return [*super().details(), error_details_pb2.QuotaFailure(violations=[violation])]


class Unavailable(SandmeshError):
    """A dependency is down or a breaker is open: the caller may retry after a while."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)


class Relayed(SandmeshError):
    """A downstream service's refusal, passed on unchanged, google.rpc details included."""

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(error.details() or "")
        self.code = error.code()
        self._status = rpc_status.from_call(error) or status_pb2.Status(
            code=self.code.value[0], message=self.message
        )

    def status(self) -> status_pb2.Status:
        return self._status


def translate(exc: BaseException) -> SandmeshError | None:
    """The refusal a foreign error stands for, or None for a bug (answered UNKNOWN)."""
    if isinstance(exc, SandmeshError):
        return exc
    if isinstance(exc, grpc.aio.AioRpcError):
        return Relayed(exc)
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return DeadlineExceeded("the caller's deadline passed")
    if isinstance(exc, psycopg.OperationalError | psycopg_pool.PoolTimeout):
        return Unavailable("the database is unavailable")
    if isinstance(exc, ConnectionError | nats.errors.Error):
        return Unavailable("the message queue is unavailable")
    return None


@contextlib.asynccontextmanager
async def error_hook(
    method: str, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[None]:
    """Call hook, the innermost: the one place errors become statuses. Domain errors carry
    their own; database, queue and deadline errors are translated; anything else is a bug
    and stays UNKNOWN."""
    try:
        yield
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        refusal = translate(exc)
        if refusal is None:
            raise
        if isinstance(refusal, Unavailable) and refusal is not exc:
            log.warning("dependency unavailable", extra={"method": method, "error": str(exc)})
        await context.abort_with_status(rpc_status.to_status(refusal.status()))


def bad_request(violations: Iterable[tuple[str, str]]) -> error_details_pb2.BadRequest:
    """A BadRequest detail from (field, description) pairs."""
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in violations
        ]
    )


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    """A RetryInfo detail asking the caller to wait `seconds` before retrying."""
    delay = duration_pb2.Duration()
    delay.FromMilliseconds(int(seconds * 1000))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def details_of(error: grpc.aio.AioRpcError) -> list[Any]:
    """Unpack the google.rpc details a server attached to an error."""
    status = rpc_status.from_call(error)
    if status is None:
        return []
    found: list[Any] = []
    for any_detail in status.details:
        for kind in (
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
        ):
            if any_detail.Is(kind.DESCRIPTOR):
                message = kind()
                any_detail.Unpack(message)
                found.append(message)
    return found
