"""Rich gRPC errors (google.rpc details), the way every service reports a refusal."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    message: str,
    *details: Any,
) -> NoReturn:
    """Abort the call with `code`, `message` and google.rpc detail messages."""
    status = status_pb2.Status(code=code.value[0], message=message)
    for detail in details:
        status.details.add().Pack(detail)
    await context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("abort_with_status returned")  # pragma: no cover


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


async def invalid_argument(
    context: grpc.aio.ServicerContext[Any, Any], violations: list[tuple[str, str]]
) -> NoReturn:
    """Refuse bad input, naming every field that is wrong and why."""
    summary = "; ".join(f"{field}: {why}" for field, why in violations)
    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, summary, bad_request(violations))


async def quota_exceeded(
    context: grpc.aio.ServicerContext[Any, Any],
    message: str,
    subject: str,
    limit: str,
    retry_after: float,
) -> NoReturn:
    """Over a rate limit or quota: RESOURCE_EXHAUSTED with RetryInfo and QuotaFailure."""
    await abort(
        context,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        message,
        retry_info(retry_after),
        error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(subject=subject, description=limit)
            ]
        ),
    )


async def unavailable(
    context: grpc.aio.ServicerContext[Any, Any], message: str, retry_after: float = 1.0
) -> NoReturn:
    """A dependency is down: ask the caller to retry later."""
    await abort(context, grpc.StatusCode.UNAVAILABLE, message, retry_info(retry_after))


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


__all__ = [
    "abort",
    "bad_request",
    "code_pb2",
    "details_of",
    "invalid_argument",
    "retry_info",
    "unavailable",
]
