"""Rules on the extra files of an execution request, shared by validation and the executor."""

from __future__ import annotations


def is_plain_file_name(name: str) -> bool:
    """A name that stays inside the work dir: no path separators, no dot-files, no NULs."""
    return bool(name) and not any(c in name for c in "/\\\0") and not name.startswith(".")
