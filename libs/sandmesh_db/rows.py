"""Small conversions between database rows and protobuf messages, shared by every store."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from google.protobuf.message import Message


def parse_id(text: str) -> uuid.UUID | None:
    """A row id from a caller's string; None for anything that is not a UUID."""
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def copy_times(message: Message, row: Mapping[str, Any], fields: Iterable[str]) -> None:
    """Set the Timestamp `fields` of `message` from the row's datetimes (NULL stays unset)."""
    for field in fields:
        value = row[field]
        if isinstance(value, datetime):
            getattr(message, field).FromDatetime(value)
