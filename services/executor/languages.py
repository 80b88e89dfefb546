"""The language registry: `languages.toml` read once, with versions probed at start-up."""

from __future__ import annotations

import asyncio
import logging
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandmesh.execution.v1 import execution_pb2
from sandmesh_contracts import limits

REGISTRY_FILE = Path(__file__).with_name("languages.toml")
LIMIT_FIELDS = limits.FIELDS

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
    min_limits: execution_pb2.Limits
    max_limits: execution_pb2.Limits
    compile_limits: execution_pb2.Limits
    compile: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    ro_binds: tuple[str, ...] = ()

    @property
    def compiled(self) -> bool:
        return bool(self.compile)


def _limits(
    base: Mapping[str, int], override: Mapping[str, int], where: str
) -> execution_pb2.Limits:
    unknown = set(override) - set(LIMIT_FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown limit fields {sorted(unknown)}")
    merged = {**base, **override}
    missing = [name for name in LIMIT_FIELDS if not merged.get(name)]
    if missing:
        raise ValueError(f"{where}: limits must be positive: {missing}")
    return execution_pb2.Limits(**merged)


def _spec(language_id: str, entry: dict[str, Any], limits: dict[str, Any]) -> LanguageSpec:
    where = f"languages.{language_id}"
    spec = LanguageSpec(
        id=language_id,
        name=entry["name"],
        file_name=entry["file_name"],
        run=tuple(entry["run"]),
        version_command=tuple(entry["version"]),
        template=entry["template"],
        default_limits=_limits(limits["default"], entry.get("default_limits", {}), where),
        min_limits=_limits(limits["min"], entry.get("min_limits", {}), where),
        max_limits=_limits(limits["max"], entry.get("max_limits", {}), where),
        compile_limits=_limits(limits["compile"], entry.get("compile_limits", {}), where),
        compile=tuple(entry.get("compile", ())),
        env=dict(entry.get("env", {})),
        ro_binds=tuple(entry.get("ro_binds", ())),
    )
    outside = [
        f
        for f in LIMIT_FIELDS
        if not getattr(spec.min_limits, f)
        <= getattr(spec.default_limits, f)
        <= getattr(spec.max_limits, f)
    ]
    if outside:
        raise ValueError(f"{where}: defaults outside the bounds: {outside}")
    return spec


def load(path: Path = REGISTRY_FILE) -> dict[str, LanguageSpec]:
    """Every language described in `path`; a malformed entry fails start-up, naming it."""
    data = tomllib.loads(path.read_text())
    return {
        language_id: _spec(language_id, entry, data["limits"])
        for language_id, entry in data["languages"].items()
    }


def command(template: Sequence[str], limits: execution_pb2.Limits) -> list[str]:
    """A registry command with `{limit_name}` placeholders filled from the run's limits."""
    values = {name: getattr(limits, name) for name in LIMIT_FIELDS}
    return [arg.format_map(values) for arg in template]


async def detect_version(spec: LanguageSpec) -> str:
    """The toolchain's own version string, or "" when it is not installed."""
    try:
        process = await asyncio.create_subprocess_exec(
            *spec.version_command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 10)
    except (OSError, TimeoutError) as exc:
        log.warning("toolchain missing", extra={"language": spec.id, "error": str(exc)})
        return ""
    if process.returncode != 0:
        log.warning("toolchain broken", extra={"language": spec.id})
        return ""
    return output.decode(errors="replace").strip().splitlines()[0] if output else ""


def resolve_limits(
    spec: LanguageSpec, requested: execution_pb2.Limits
) -> tuple[execution_pb2.Limits, list[tuple[str, str]]]:
    """Fill unset limits from the language's defaults; report any outside its bounds."""
    effective = execution_pb2.Limits()
    for name in LIMIT_FIELDS:
        setattr(effective, name, getattr(requested, name) or getattr(spec.default_limits, name))
    return effective, limits.violations(spec.min_limits, spec.max_limits, requested, spec.id)


def to_proto(spec: LanguageSpec, version: str) -> execution_pb2.Language:
    return execution_pb2.Language(
        id=spec.id,
        name=spec.name,
        version=version,
        file_name=spec.file_name,
        compiled=spec.compiled,
        default_limits=spec.default_limits,
        max_limits=spec.max_limits,
        min_limits=spec.min_limits,
        template=spec.template,
    )
