"""Translation between the sandbox's outcome and the wire's ExecutionResult."""

from __future__ import annotations

from sandmesh.execution.v1 import execution_pb2
from sandmesh_contracts import results
from services.executor.sandbox import RunOutcome, SandboxLimits, Verdict

_STATUS = {
    Verdict.COMPLETED: execution_pb2.EXECUTION_STATUS_COMPLETED,
    Verdict.FAILED: execution_pb2.EXECUTION_STATUS_FAILED,
    Verdict.TIMEOUT: execution_pb2.EXECUTION_STATUS_TIMEOUT,
    Verdict.MEMORY_LIMIT: execution_pb2.EXECUTION_STATUS_MEMORY_LIMIT,
    Verdict.OUTPUT_LIMIT: execution_pb2.EXECUTION_STATUS_OUTPUT_LIMIT,
    Verdict.SYSTEM_ERROR: execution_pb2.EXECUTION_STATUS_SYSTEM_ERROR,
    Verdict.CANCELLED: execution_pb2.EXECUTION_STATUS_CANCELLED,
}

_ERROR_CODE = {
    Verdict.COMPLETED: execution_pb2.ERROR_CODE_UNSPECIFIED,
    Verdict.FAILED: execution_pb2.ERROR_CODE_RUNTIME,
    Verdict.TIMEOUT: execution_pb2.ERROR_CODE_TIME,
    Verdict.MEMORY_LIMIT: execution_pb2.ERROR_CODE_MEMORY,
    Verdict.OUTPUT_LIMIT: execution_pb2.ERROR_CODE_RUNTIME,
    Verdict.SYSTEM_ERROR: execution_pb2.ERROR_CODE_SYSTEM,
    Verdict.CANCELLED: execution_pb2.ERROR_CODE_UNSPECIFIED,
}


def sandbox_limits(limits: execution_pb2.Limits) -> SandboxLimits:
    """Resolved wire limits in the sandbox's units."""
    return SandboxLimits(
        wall_time_s=limits.wall_time_ms / 1000,
        cpu_time_s=limits.cpu_time_ms / 1000,
        memory_bytes=limits.memory_mb * 1024 * 1024,
        max_processes=limits.max_processes,
        output_bytes=limits.output_bytes,
        file_size_bytes=limits.file_size_bytes,
        tmp_bytes=limits.tmp_mb * 1024 * 1024,
        cpu_millicores=limits.cpu_millicores,
    )


def to_result(outcome: RunOutcome) -> execution_pb2.ExecutionResult:
    """The wire result of one sandboxed run."""
    result = execution_pb2.ExecutionResult(
        status=_STATUS[outcome.verdict],
        stdout=outcome.stdout,
        stderr=outcome.stderr,
        stdout_truncated=outcome.stdout_truncated,
        stderr_truncated=outcome.stderr_truncated,
        signal=outcome.signal_name or "",
        detail=outcome.detail,
        usage=execution_pb2.ResourceUsage(
            wall_time_ms=outcome.wall_time_ms,
            cpu_time_ms=outcome.cpu_time_ms,
            peak_memory_bytes=outcome.peak_memory_bytes,
            bytes_written=len(outcome.stdout) + len(outcome.stderr),
        ),
    )
    if outcome.exit_code is not None:
        result.exit_code = outcome.exit_code
    results.set_error(result, _ERROR_CODE[outcome.verdict])
    return result


def compile_failed(outcome: RunOutcome, detail: str | None = None) -> execution_pb2.ExecutionResult:
    """COMPILATION_ERROR with the compiler's own output; our own failures stay SYSTEM_ERROR.

    A compile step that breaks its limits (a compile-time bomb) is the program's fault too:
    the detail names the limit.
    """
    result = to_result(outcome)
    if outcome.verdict in (Verdict.SYSTEM_ERROR, Verdict.CANCELLED):
        return result
    result.status = execution_pb2.EXECUTION_STATUS_COMPILATION_ERROR
    results.set_error(result, execution_pb2.ERROR_CODE_COMPILE)
    if detail is not None:
        result.detail = detail
    elif outcome.verdict is Verdict.FAILED and outcome.signal_name is None:
        message = (outcome.stderr or outcome.stdout).decode("utf-8", "replace").strip()
        result.detail = "compilation failed: " + (message.splitlines() or [outcome.detail])[0]
    else:
        result.detail = f"compilation stopped: {outcome.detail}"
    return result


def system_error(detail: str) -> execution_pb2.ExecutionResult:
    """Our own failure, final: nothing a retry could change."""
    return results.closed(
        execution_pb2.EXECUTION_STATUS_SYSTEM_ERROR, detail, execution_pb2.ERROR_CODE_SYSTEM
    )
