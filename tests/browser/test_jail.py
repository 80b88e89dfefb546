"""Who Chromium runs as and what it holds, read from /proc while it serves a job."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from sandmesh.browser.v1 import browser_pb2, browser_pb2_grpc
from tests.browser.conftest import PageServer, PoolProcess, cmdline, page

if TYPE_CHECKING:
    Stub: TypeAlias = browser_pb2_grpc.BrowserPoolServiceAsyncStub

SECRETS = ("DATABASE_URL", "NATS_URL")


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _environ(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return [entry.decode(errors="replace").split("=", 1)[0] for entry in raw.split(b"\0") if entry]


async def test_chromium_runs_unprivileged_with_its_sandbox_and_a_clean_environment(
    pool: Stub, pool_process: PoolProcess, pages: PageServer
) -> None:
    # The pool itself holds the addresses (conftest sets them); its browsers must not.
    assert set(SECRETS) <= set(_environ(pool_process.pid))
    job = asyncio.ensure_future(
        pool.GetContent(
            browser_pb2.GetContentRequest(page=page(pages.url("/slow?s=3"))), timeout=30
        )
    )
    await asyncio.sleep(1.5)  # the job's renderer is up, waiting for the slow page
    seen: dict[int, tuple[dict[str, str], list[str], str, str]] = {}
    for pid in pool_process.jailed():
        try:
            seen[pid] = (
                _status(pid),
                _environ(pid),
                " ".join(cmdline(pid)),
                os.readlink(f"/proc/{pid}/ns/user"),
            )
        except OSError:
            continue  # gone meanwhile
    await job

    browsers = [pid for pid, _ in pool_process.browsers()]
    renderers = [pid for pid, (_, _, args, _) in seen.items() if "--type=renderer" in args]
    assert browsers and renderers, seen
    for pid, (status, environ, args, _) in seen.items():
        uids = status["Uid"].split()
        assert "0" not in uids, (pid, args[:80], uids)
        assert "--no-sandbox" not in args, (pid, args[:80])
        leaked = [name for name in environ if name in SECRETS or name.startswith("SANDMESH_")]
        assert leaked == [], (pid, args[:80], leaked)
    # Chromium's own sandbox is on: renderers have a seccomp filter and a user namespace
    # of their own, inside the browser's.
    browser_userns = {seen[pid][3] for pid in browsers if pid in seen}
    for pid in renderers:
        status, _, _, userns = seen[pid]
        assert status["Seccomp"] == "2", pid
        assert userns not in browser_userns, pid
    # The browser is not in the pool's network namespace.
    own_netns = os.readlink(f"/proc/{pool_process.pid}/ns/net")
    assert all(os.readlink(f"/proc/{pid}/ns/net") != own_netns for pid in browsers)
