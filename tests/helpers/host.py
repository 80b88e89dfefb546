"""What the tests read of the host itself."""

from __future__ import annotations

import os


def pids_with(marker: str) -> list[int]:
    """Host processes whose command line carries `marker`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    found.append(int(name))
        except OSError:
            continue
    return found
