"""The language registry: `languages.toml` read once, with versions probed at start-up."""

from __future__ import annotations

import asyncio
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path

from sandmesh.execution.v1 import execution_pb2

REGISTRY_FILE = Path(__file__).with_name("languages.toml")
LIMIT_FIELDS = tuple(field.name for field in execution_pb2.Limits.DESCRIPTOR.fields)

log = logging.getLogger("sandmesh.executor")


@dataclass(frozen=True)
class LanguageSpec:
    id: str
    name: str
    file_name: str
    run: tuple[str, ...]
    version_command: tuple[str, ...]
    template: str
    default_limits: execution_pb2.Limits
    max_limits: execution_pb2.Limits


def load(path: Path = REGISTRY_FILE) -> dict[str, LanguageSpec]:
    """Every language described in `path`."""
    data = tomllib.loads(path.read_text())
    return {
        language_id: LanguageSpec(
            id=language_id,
            name=entry["name"],
            file_name=entry["file_name"],
            run=tuple(entry["run"]),
            version_command=tuple(entry["version"]),
            template=entry["template"],
            default_limits=execution_pb2.Limits(**entry["default_limits"]),
            max_limits=execution_pb2.Limits(**entry["max_limits"]),
        )
        for language_id, entry in data.items()
    }


async def detect_version(spec: LanguageSpec) -> str:
    """The toolchain's own version string, or "" when it is not installed."""
    try:
        process = await asyncio.create_subprocess_exec(
            *spec.version_command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 10)
    except (OSError, TimeoutError) as exc:
        log.warning("toolchain missing", extra={"language": spec.id, "error": str(exc)})
        return ""
    return output.decode(errors="replace").strip().splitlines()[0] if output else ""


def resolve_limits(
    spec: LanguageSpec, requested: execution_pb2.Limits
) -> tuple[execution_pb2.Limits, list[tuple[str, str]]]:
    """Fill unset limits from the language's defaults; report any above its hard bounds."""
    effective = execution_pb2.Limits()
    violations = []
    for field in LIMIT_FIELDS:
        value = getattr(requested, field) or getattr(spec.default_limits, field)
        bound = getattr(spec.max_limits, field)
        if value > bound:
            violations.append(
                (f"limits.{field}", f"must be at most {bound} for {spec.id}, got {value}")
            )
        setattr(effective, field, value)
    return effective, violations


def to_proto(spec: LanguageSpec, version: str) -> execution_pb2.Language:
    return execution_pb2.Language(
        id=spec.id,
        name=spec.name,
        version=version,
        file_name=spec.file_name,
        compiled=False,
        default_limits=spec.default_limits,
        max_limits=spec.max_limits,
        template=spec.template,
    )
