"""The bounds on an execution's limits, checked the same way by the gateway (from
ListLanguages) and by the executor (from its registry)."""

from __future__ import annotations

from sandmesh.execution.v1 import execution_pb2

FIELDS = tuple(f.name for f in execution_pb2.Limits.DESCRIPTOR.fields)


def violations(
    low: execution_pb2.Limits,
    high: execution_pb2.Limits,
    requested: execution_pb2.Limits,
    language_id: str,
    prefix: str = "limits",
) -> list[tuple[str, str]]:
    """Requested limits outside [low, high], each naming its field; zero means "the
    default" and is always fine."""
    problems = []
    for name in FIELDS:
        value, least, most = getattr(requested, name), getattr(low, name), getattr(high, name)
        if value and most and value > most:
            problems.append(
                (f"{prefix}.{name}", f"must be at most {most} for {language_id}, got {value}")
            )
        elif value and value < least:
            problems.append(
                (f"{prefix}.{name}", f"must be at least {least} for {language_id}, got {value}")
            )
    return problems
