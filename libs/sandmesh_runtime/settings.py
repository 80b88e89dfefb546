"""Service settings read from environment variables, with errors that name the variable."""

from __future__ import annotations

import dataclasses
import os
import types
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def env(name: str, default: Any, doc: str = "") -> Any:
    """Declare a settings field read from the environment variable `name`."""
    return dataclasses.field(default=default, metadata={"env": name, "doc": doc})


def _convert(name: str, raw: str, kind: Any) -> Any:
    if get_origin(kind) in (Union, types.UnionType):
        kind = next(arg for arg in get_args(kind) if arg is not type(None))
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError
        if kind in (int, float):
            return kind(raw)
        return raw
    except ValueError:
        raise SettingsError(
            f"{name} must be a {getattr(kind, '__name__', kind)}, got {raw!r}"
        ) from None


def load(cls: type[T], environ: dict[str, str] | None = None) -> T:
    """Build the settings dataclass `cls` from `environ` (default: os.environ)."""
    source = os.environ if environ is None else environ
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = field.metadata.get("env")
        if name and name in source:
            values[field.name] = _convert(name, source[name], hints[field.name])
    return cls(**values)
