"""`make up`: NATS, Postgres, migrations and the four services, then a smoke execution.

NATS_URL and DATABASE_URL select existing servers; without them throwaway ones are started
under `.devstack/`. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from psycopg_pool import AsyncConnectionPool

from sandmesh import client
from sandmesh.execution.v1 import execution_pb2
from sandmesh_db import migrate
from sandmesh_db.tenants import TenantStore
from sandmesh_devstack.mesh import Mesh
from sandmesh_devstack.nats import LocalNats
from sandmesh_devstack.postgres import LocalPostgres

SMOKE_PROGRAM = 'import sys\nprint("hello from sandmesh on", sys.version.split()[0])\n'


def say(message: str) -> None:
    print(f"[sandmesh] {message}", flush=True)


@contextlib.contextmanager
def servers(base: Path) -> Iterator[tuple[str, str]]:
    """NATS and Postgres URLs: from the environment, or throwaway local servers."""
    with contextlib.ExitStack() as stack:
        nats_url = os.environ.get("NATS_URL")
        if not nats_url:
            nats = stack.enter_context(LocalNats.start(base / "nats"))
            nats_url = nats.url
            say(f"nats-server with JetStream at {nats_url} (log {nats.log_path})")
        database_url = os.environ.get("DATABASE_URL")
        if not database_url:
            postgres = LocalPostgres.start(base / "postgres")
            # Throwaway: its cluster goes when make up stops, not just the server.
            stack.callback(postgres.destroy)
            database_url = postgres.url
            say(f"throwaway Postgres at {database_url} (log {postgres.log_path})")
        yield nats_url, database_url


async def developer_key(database_url: str) -> str:
    """Tenant `dev` and a fresh API key of it, for the smoke run and the developer."""
    async with AsyncConnectionPool(database_url, min_size=1, max_size=1) as pool:
        store = TenantStore(pool)
        await store.create_tenant("dev", "pro")
        _, key = await store.create_key("dev")
    return key


async def smoke(target: str, api_key: str) -> execution_pb2.ExecutionResult:
    async with client.connect(target, api_key) as channel:
        return await client.run(
            channel,
            execution_pb2.ExecutionRequest(language="python3", source=SMOKE_PROGRAM),
            timeout=60,
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sandmesh_devstack", description=__doc__)
    parser.add_argument("command", choices=["up"])
    parser.add_argument("--dir", default=".devstack", help="where servers keep data and logs")
    parser.add_argument("--exit-after-smoke", action="store_true", help="stop after the smoke run")
    args = parser.parse_args()

    base = Path(args.dir).resolve()
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with servers(base) as (nats_url, database_url):
        applied = asyncio.run(migrate.up(database_url))
        say(f"migrations applied: {', '.join(applied) or 'none pending'}")
        api_key = asyncio.run(developer_key(database_url))
        mesh = Mesh(base / "logs", nats_url, database_url)
        mesh.start()
        try:
            mesh.wait_ready()
            say(
                "all four services are ready: "
                + ", ".join(f"{name} {service.target}" for name, service in mesh.services.items())
            )
            result = asyncio.run(smoke(mesh.services["gateway"].target, api_key))
            say(f"smoke execution: {client.status_name(result.status)}, output:")
            sys.stdout.write(result.stdout.decode(errors="replace"))
            if result.status != execution_pb2.EXECUTION_STATUS_COMPLETED:
                raise SystemExit(f"smoke execution failed: {result.detail}")
            if args.exit_after_smoke:
                return
            say(f"gateway on {mesh.services['gateway'].target}; logs in {base / 'logs'}")
            say(f"try: export SANDMESH_API_KEY={api_key}; .venv/bin/sandmesh run hello.py")
            say("Ctrl-C stops everything")
            while True:
                for name, code in mesh.restart_dead():
                    say(f"{name} exited with code {code}; restarted")
                time.sleep(1)
        except KeyboardInterrupt:
            say("stopping")
        finally:
            codes = mesh.stop()
            say("stopped: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()))


if __name__ == "__main__":
    main()
