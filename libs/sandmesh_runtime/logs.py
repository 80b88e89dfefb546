"""JSON logs, one object per line, that still reach stderr when logging itself fails."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
import traceback
from typing import Any

from sandmesh_runtime import telemetry

execution_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "execution_id", default=None
)

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; extra fields are kept."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = telemetry.current_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        execution_id = execution_id_var.get()
        if execution_id:
            entry["execution_id"] = execution_id
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(entry, default=str)


class FallbackStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler whose failures still leave a plain line on the real stderr."""

    def handleError(self, record: logging.LogRecord) -> None:
        stderr = sys.__stderr__
        if stderr is None:
            return
        # Nothing is left to report a failure of this last resort to.
        with contextlib.suppress(Exception):
            stderr.write(f"logging failed; {record.levelname}: {record.getMessage()}\n")
            stderr.flush()


def setup_logging(service: str, level: str = "INFO") -> None:
    """Send every log record of the process to stderr as JSON lines."""
    handler = FallbackStreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.raiseExceptions = True
