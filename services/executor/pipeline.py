"""One execution from request to result: check the files, compile if the language does, run.

Compile and run are two sandboxes. The build output crosses between them as a tar archive
read from the compile sandbox through a pipe (`SandboxOptions.export_work`) and staged into
the run sandbox through memfds, so no host directory is ever created, read or written for a
run: there is no host path an attacker's symlink could redirect.
"""

from __future__ import annotations

import asyncio
import io
import logging
import stat
import tarfile
import time
from dataclasses import dataclass

from sandmesh.execution.v1 import execution_pb2
from services.executor import languages, verdicts
from services.executor.languages import LanguageSpec
from services.executor.sandbox import (
    OutputSink,
    SandboxOptions,
    Verdict,
    WarmPools,
    bwrap,
    run_in_sandbox,
)

log = logging.getLogger("sandmesh.executor")


@dataclass(frozen=True)
class Build:
    files: dict[str, bytes]
    executable: frozenset[str]


def unpack_build(archive: bytes, max_bytes: int) -> Build:
    """Regular files of a build archive; links, devices and odd names are dropped unread."""
    files: dict[str, bytes] = {}
    executable: set[str] = set()
    total = 0
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        for member in tar:
            if not member.isreg():
                continue
            name = member.name.removeprefix("./")
            try:
                bwrap.validate_file_name(name)
            except ValueError:
                continue
            total += member.size
            if total > max_bytes:
                raise ValueError("build output larger than the work directory limit")
            handle = tar.extractfile(member)
            if handle is None:
                continue
            files[name] = handle.read()
            if member.mode & stat.S_IXUSR:
                executable.add(name)
    return Build(files, frozenset(executable))


def request_files(spec: LanguageSpec, request: execution_pb2.ExecutionRequest) -> dict[str, bytes]:
    files = {f.name: f.content for f in request.files}
    files[spec.file_name] = request.source.encode()
    return files


def check_files(
    spec: LanguageSpec, request: execution_pb2.ExecutionRequest, limits: execution_pb2.Limits
) -> str | None:
    """Why the request's files cannot be placed in the sandbox, or None."""
    names = [f.name for f in request.files]
    if spec.file_name in names or len(set(names)) != len(names):
        return f"files: duplicate names or a clash with the source file {spec.file_name}"
    total = sum(len(f.content) for f in request.files) + len(request.source.encode())
    budget = limits.tmp_mb * 1024 * 1024
    if total > budget:
        return f"files: {total} bytes do not fit in the {limits.tmp_mb} MiB work directory"
    return None


def _until(limits: execution_pb2.Limits, deadline: float | None) -> execution_pb2.Limits:
    if deadline is None:
        return limits
    clamped = execution_pb2.Limits()
    clamped.CopyFrom(limits)
    left_ms = int((deadline - time.time()) * 1000)
    clamped.wall_time_ms = max(1, min(limits.wall_time_ms, left_ms))
    return clamped


async def execute(
    spec: LanguageSpec,
    request: execution_pb2.ExecutionRequest,
    limits: execution_pb2.Limits,
    on_output: OutputSink | None,
    cancel: asyncio.Event,
    pools: WarmPools,
    deadline: float | None = None,
) -> tuple[execution_pb2.ExecutionResult, bool]:
    """Run the request under `limits`; returns the result and whether a warm sandbox ran it.

    Nothing runs past `deadline` (epoch seconds): each step's wall limit shrinks to the time
    left when it starts.
    """
    files = request_files(spec, request)
    executable: frozenset[str] = frozenset()
    if spec.compiled:
        compile_limits = _until(spec.compile_limits, deadline)
        outcome = await run_in_sandbox(
            languages.command(spec.compile, compile_limits),
            files,
            b"",
            verdicts.sandbox_limits(compile_limits),
            options=SandboxOptions(env=spec.env, ro_binds=spec.ro_binds, export_work=True),
            cancel=cancel,
        )
        if outcome.verdict is not Verdict.COMPLETED:
            return verdicts.compile_failed(outcome), False
        assert outcome.exported is not None
        try:
            build = unpack_build(outcome.exported, limits.tmp_mb * 1024 * 1024)
        except (ValueError, tarfile.TarError) as exc:
            return verdicts.compile_failed(outcome, f"unusable build output: {exc}"), False
        files, executable = build.files, build.executable

    limits = _until(limits, deadline)
    argv = [*languages.command(spec.run, limits), *request.args]
    sandbox_limits = verdicts.sandbox_limits(limits)
    warm = pools.claim(spec.id, sandbox_limits) if not spec.compiled else None
    if warm is not None:
        served = await warm.run(argv, files, request.stdin, sandbox_limits, on_output, cancel)
        if served is not None:
            return verdicts.to_result(served), True
    run = await run_in_sandbox(
        argv,
        files,
        request.stdin,
        sandbox_limits,
        on_output,
        options=SandboxOptions(env=spec.env, ro_binds=spec.ro_binds, executable=executable),
        cancel=cancel,
    )
    return verdicts.to_result(run), False
