"""Checks on public requests; each problem names the field and what is wrong."""

from __future__ import annotations

from collections.abc import Sequence

from sandmesh.execution.v1 import execution_pb2
from sandmesh_contracts.files import is_plain_file_name
from sandmesh_runtime import errors

Violations = list[tuple[str, str]]

MAX_KEY_LENGTH = 200
MAX_BATCH = 100
# The kernel refuses an exec whose single argument reaches MAX_ARG_STRLEN (128 KiB with its
# NUL); all arguments together stay well inside ARG_MAX (a quarter of the 8 MiB stack).
MAX_ARG_BYTES = 128 * 1024 - 1
MAX_ARGS_BYTES = 256 * 1024


def execution_request(
    request: execution_pb2.ExecutionRequest,
    prefix: str,
    max_source_bytes: int,
    max_request_bytes: int,
) -> Violations:
    """Problems with an ExecutionRequest found at `prefix` in the call's message."""
    problems: Violations = []
    if not request.language:
        problems.append((f"{prefix}.language", "must not be empty"))
    problems += text_problems({f"{prefix}.language": request.language})
    source_bytes = len(request.source.encode())
    if not request.source:
        problems.append((f"{prefix}.source", "must not be empty"))
    elif source_bytes > max_source_bytes:
        problems.append(
            (f"{prefix}.source", f"must be at most {max_source_bytes} bytes, got {source_bytes}")
        )
    if request.priority not in execution_pb2.Priority.values():
        problems.append((f"{prefix}.priority", f"unknown priority {request.priority}"))
    for index, extra in enumerate(request.files):
        if not is_plain_file_name(extra.name):
            problems.append(
                (f"{prefix}.files[{index}].name", f"must be a plain file name, got {extra.name!r}")
            )
    problems += _args_problems(request.args, f"{prefix}.args")
    total = source_bytes + len(request.stdin) + sum(len(f.content) for f in request.files)
    if total > max_request_bytes:
        problems.append(
            (
                prefix,
                f"source, stdin and files together must be at most {max_request_bytes} bytes,"
                f" got {total}",
            )
        )
    return problems


def idempotency_key(key: str, prefix: str = "") -> Violations:
    """Problems with an idempotency key found at `prefix` in the call's message."""
    field = f"{prefix}idempotency_key"
    problems = text_problems({field: key})
    if len(key) > MAX_KEY_LENGTH:
        problems.append((field, f"must be at most {MAX_KEY_LENGTH} characters, got {len(key)}"))
    return problems


def batch_size(field: str, count: int) -> None:
    """InvalidArgument unless a batch holds 1 to MAX_BATCH entries."""
    if not 1 <= count <= MAX_BATCH:
        raise errors.InvalidArgument([(field, f"must hold 1 to {MAX_BATCH} entries, got {count}")])


def _args_problems(args: Sequence[str], field: str) -> Violations:
    """Arguments an exec can carry: no NUL, each and all within the kernel's bounds."""
    problems: Violations = []
    total = 0
    for index, arg in enumerate(args):
        size = len(arg.encode())
        total += size + 1
        if "\0" in arg:
            problems.append((f"{field}[{index}]", "must not contain NUL characters"))
        elif size > MAX_ARG_BYTES:
            problems.append(
                (f"{field}[{index}]", f"must be at most {MAX_ARG_BYTES} bytes, got {size}")
            )
    if total > MAX_ARGS_BYTES:
        problems.append((field, f"must be at most {MAX_ARGS_BYTES} bytes in all, got {total}"))
    return problems


def session_source(
    language: str, source: str, max_source_bytes: int, allow_empty: bool = False
) -> Violations:
    """Problems with a session's language and source."""
    problems = text_problems({"language": language, "source": source})
    if not language:
        problems.append(("language", "must not be empty"))
    size = len(source.encode())
    if not source and not allow_empty:
        problems.append(("source", "must not be empty"))
    elif size > max_source_bytes:
        problems.append(("source", f"must be at most {max_source_bytes} bytes, got {size}"))
    return problems


def text_problems(fields: dict[str, str]) -> Violations:
    """Text that Postgres cannot store: a NUL character."""
    return [
        (field, "must not contain NUL characters")
        for field, value in fields.items()
        if "\0" in value
    ]
