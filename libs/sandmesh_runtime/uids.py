"""Random unprivileged host uids for untrusted processes started by a root service (a
sandboxed program, a browser), so none of them is host root in disguise and each is alone
under its uid (RLIMIT_NPROC counts only its own tasks)."""

from __future__ import annotations

import os
import secrets

# Above systemd's container ranges and below its "foreign" range and 2**31.
_BASE = 0x7000_0000
_SPAN = 0x0FFE_0000
_in_use: set[int] = set()


def pick() -> int | None:
    """A fresh uid no other process of ours holds (None unless we are root)."""
    if os.geteuid() != 0:
        return None
    while True:
        uid = _BASE + secrets.randbelow(_SPAN)
        if uid not in _in_use:
            _in_use.add(uid)
            return uid


def release(uid: int | None) -> None:
    """Give back a uid from `pick` once nothing that ran under it is left."""
    if uid is not None:
        _in_use.discard(uid)
