"""The `sandmesh` command as a user runs it: a process of its own, with the environment
cleared of Sandmesh settings unless a test gives them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.helpers.servers import Servers

SANDMESH = str(Path(sys.executable).parent / "sandmesh")


def sandmesh(
    *args: str,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI; `input` is piped to it, else its standard input is /dev/null."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SANDMESH_")}
    return subprocess.run(
        [SANDMESH, *args],
        capture_output=True,
        timeout=timeout,
        env={**clean, **(env or {})},
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
    )


def admin(servers: Servers, *args: str) -> str:
    """`sandmesh admin ARGS` on the session's database; its standard output."""
    done = sandmesh("admin", *args, "--database-url", servers.postgres.url, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


def make_tenant(servers: Servers, tier: str = "pro") -> tuple[str, str, str]:
    """A new tenant of `tier` with a key: (name, key id, key)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    admin(servers, "tenant", "create", name, "--tier", tier)
    out = admin(servers, "key", "create", name).splitlines()
    return name, out[0].split()[-1], out[1].split()[-1]
