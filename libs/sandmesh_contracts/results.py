"""Results a service makes itself: a verdict's error code goes on the wire twice, as the
ErrorCode enum and as the stable string ("E001" …) clients written before the enum match."""

from __future__ import annotations

from typing import TypeAlias

from sandmesh.execution.v1 import execution_pb2

ErrorCode: TypeAlias = execution_pb2.ErrorCode.ValueType


def set_error(result: execution_pb2.ExecutionResult, code: ErrorCode) -> None:
    """Mark `result` with the kind of its failure (ERROR_CODE_UNSPECIFIED: none)."""
    result.error = code
    result.error_code = f"E{code:03d}" if code else ""


def closed(
    status: execution_pb2.ExecutionStatus.ValueType,
    detail: str,
    code: ErrorCode = execution_pb2.ERROR_CODE_UNSPECIFIED,
) -> execution_pb2.ExecutionResult:
    """The result of an execution closed without a run of its own (refused, expired,
    cancelled, lost), saying why."""
    result = execution_pb2.ExecutionResult(status=status, detail=detail)
    set_error(result, code)
    return result
