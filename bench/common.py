"""What every benchmark shares: sizes, the machine, summaries, tables, JSON, and a mesh."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import grpc
import psycopg

from sandmesh import client
from sandmesh.execution.v1 import execution_pb2
from sandmesh.executor.v1 import executor_pb2, executor_pb2_grpc
from sandmesh_db import migrate
from sandmesh_devstack.mesh import SERVICES, Mesh
from sandmesh_devstack.nats import LocalNats
from sandmesh_devstack.ports import free_ports
from sandmesh_devstack.postgres import LocalPostgres, has_library

RESULTS_DIR = Path(__file__).resolve().parent / "results"
HELLO_SOURCE = 'print("Hello, world!")\n'
SYSTEM_PYTHON = "/usr/bin/python3"
STATEMENTS_LIBRARY = "pg_stat_statements"


class Size(StrEnum):
    FULL = "full"
    TINY = "tiny"


def hello_request() -> execution_pb2.ExecutionRequest:
    return execution_pb2.ExecutionRequest(language="python3", source=HELLO_SOURCE)


async def run_hello(channel: grpc.aio.Channel, timeout: float = 60.0) -> None:
    """Hello world through the mesh, submit to final result; anything but COMPLETED raises."""
    result = await client.run(channel, hello_request(), timeout=timeout)
    if result.status != execution_pb2.EXECUTION_STATUS_COMPLETED:
        raise RuntimeError(f"mesh run ended {client.status_name(result.status)}: {result.detail}")


def warm_pool_detail(mesh: Mesh) -> str:
    """The executor's own account of its warm pool (idle, served warm, served cold)."""
    with grpc.insecure_channel(mesh.services["executor"].target) as channel:
        status = executor_pb2_grpc.ExecutorServiceStub(channel).GetSandboxStatus(
            executor_pb2.GetSandboxStatusRequest(), timeout=5
        )
    details = [layer.detail for layer in status.layers if layer.name == "warm_pool"]
    return details[0] if details else "no warm_pool layer reported"


def cores() -> int:
    return len(os.sched_getaffinity(0))


def machine() -> dict[str, Any]:
    """What the numbers were measured on; every result carries it."""
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = next(int(line.split()[1]) for line in meminfo.splitlines() if "MemTotal" in line)
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": cores(),
        "cpu_model": model,
        "mem_total_mib": mem_kib // 1024,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
    }


def machine_line(info: Mapping[str, Any]) -> str:
    return (
        f"{info['nproc']} cores ({info['cpu_model'] or 'unknown cpu'}), "
        f"{info['mem_total_mib']} MiB, Linux {info['kernel']}, Python {info['python']}, "
        f"load {info['load_average'][0]:.1f}"
    )


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted samples."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """Latency samples (seconds) summarized in milliseconds."""
    if not seconds:
        return {"count": 0}
    ordered = sorted(s * 1000 for s in seconds)
    return {
        "count": len(ordered),
        "min": round(ordered[0], 2),
        "mean": round(statistics.fmean(ordered), 2),
        "p50": round(percentile(ordered, 50), 2),
        "p95": round(percentile(ordered, 95), 2),
        "p99": round(percentile(ordered, 99), 2),
        "max": round(ordered[-1], 2),
    }


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 2) if denominator > 0 else None


@dataclass
class Ratio:
    name: str
    value: float | None
    meaning: str


@dataclass
class Result:
    """One benchmark's outcome: a table for people, the same figures in JSON."""

    name: str
    title: str
    config: dict[str, Any]
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    errors: int = 0
    seconds: float = 0.0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    # Figures align right so their digits line up; words align left.
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(columns))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(list(columns)), rule, *(line(r) for r in cells)])


def render(result: Result, info: Mapping[str, Any], date: str) -> str:
    lines = [
        f"== {result.name}: {result.title}",
        f"   {date} on {machine_line(info)}; took {result.seconds:.0f} s",
        f"   config: {json.dumps(result.config, sort_keys=True)}",
        format_table(result.columns, result.rows),
    ]
    if result.ratios:
        lines.append(
            format_table(
                ["ratio", "value", "meaning"],
                [[r.name, r.value, r.meaning] for r in result.ratios],
            )
        )
    lines += [f"   note: {note}" for note in result.notes]
    return "\n".join(lines)


def write_json(result: Result, info: Mapping[str, Any], date: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = date.replace("-", "").replace(":", "")
    path = out_dir / f"{result.name}-{stamp}.json"
    payload = {
        "benchmark": result.name,
        "title": result.title,
        "date": date,
        "machine": dict(info),
        "config": result.config,
        "seconds": round(result.seconds, 1),
        "errors": result.errors,
        "table": {"columns": result.columns, "rows": result.rows},
        "ratios": [vars(r) for r in result.ratios],
        "notes": result.notes,
        "data": result.data,
    }
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class MeshServers:
    """The servers under one mesh, for benchmarks that read their counters."""

    nats: LocalNats
    postgres: LocalPostgres
    database: str
    # pg_stat_statements tracks this database's statements (see Stack.mesh).
    statements: bool


class Stack:
    """Servers for the meshes of one run: one Postgres, a fresh database and NATS per mesh.

    A fresh database and NATS per mesh keep one benchmark's leftover queue (bench 3 leaves
    hundreds of queued runs behind) out of the next one's figures; a fresh database is
    cheap where a fresh Postgres cluster costs seconds.
    """

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="sandmesh-bench-"))
        self._postgres: LocalPostgres | None = None
        self._statements = False
        self._databases = 0
        self.servers: dict[str, MeshServers] = {}

    def _start_postgres(self) -> LocalPostgres:
        if self._postgres is None:
            settings = {}
            # Loaded where the server ships it, but tracking nothing: only a database that
            # asks for it (Stack.mesh's track_statements) pays for the bookkeeping.
            self._statements = has_library(STATEMENTS_LIBRARY)
            if self._statements:
                settings = {
                    "shared_preload_libraries": STATEMENTS_LIBRARY,
                    "pg_stat_statements.track": "none",
                }
            self._postgres = LocalPostgres.start(self.base / "postgres", settings=settings)
        return self._postgres

    def _fresh_database(self, track_statements: bool) -> tuple[str, bool]:
        """A new migrated database: its URL, and whether pg_stat_statements tracks it."""
        postgres = self._start_postgres()
        self._databases += 1
        name = f"bench_{self._databases}"
        admin = postgres.url
        tracked = False
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # name is ours: no quoting needed
            if track_statements and self._statements:
                try:
                    # The view is read from the admin database, so reading it is not counted.
                    conn.execute(f"CREATE EXTENSION IF NOT EXISTS {STATEMENTS_LIBRARY}")
                    conn.execute(f"ALTER DATABASE {name} SET pg_stat_statements.track = 'top'")
                    tracked = True
                except psycopg.Error:
                    tracked = False  # the module without its SQL files: counters only
        url = admin.rsplit("/", 1)[0] + "/" + name
        asyncio.run(migrate.up(url))
        return url, tracked

    @contextlib.contextmanager
    def mesh(
        self,
        label: str,
        extra_env: Mapping[str, str] | None = None,
        track_statements: bool = False,
    ) -> Iterator[Mesh]:
        """The four services on free ports, ready; stopped (and their NATS too) on exit.

        While it runs, `servers[label]` holds its NATS, Postgres and database name; with
        `track_statements`, pg_stat_statements counts its database's statements where the
        server has the module (`servers[label].statements` says whether it does).
        """
        database_url, tracked = self._fresh_database(track_statements)
        nats = LocalNats.start(self.base / f"nats-{label}")
        env = {
            # The bench holds no API keys; auth is the gateway's own per-call cost, not
            # what these figures compare.
            "SANDMESH_AUTH_DISABLED": "1",
            # All bench traffic is one tenant; its rate limit (50/s) would turn bench 3 into
            # a measure of the policy. Raised, the limiter still runs and costs what it costs.
            "SANDMESH_PRO_RATE_PER_S": "1000000",
            "SANDMESH_PRO_BURST": "1000000",
            "SANDMESH_EXECUTOR_CONCURRENCY": str(cores()),
            **(extra_env or {}),
        }
        mesh = Mesh(
            self.base / f"logs-{label}",
            nats.url,
            database_url,
            ports=dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True)),
            extra_env=env,
        )
        self.servers[label] = MeshServers(
            nats, self._start_postgres(), database_url.rsplit("/", 1)[1], tracked
        )
        try:
            mesh.start()
            mesh.wait_ready(timeout=120)
            yield mesh
        finally:
            del self.servers[label]
            # All at once: each waits out its own drain, and in order that adds up to ~8 s
            # per mesh, which nothing here measures.
            with ThreadPoolExecutor(len(mesh.services)) as pool:
                list(pool.map(lambda service: service.stop(), mesh.services.values()))
            nats.stop()

    def close(self, keep_logs: bool = False) -> None:
        """Stop Postgres; delete everything unless the logs are wanted (a benchmark failed)."""
        if self._postgres is not None:
            self._postgres.destroy()
        if not keep_logs:
            shutil.rmtree(self.base, ignore_errors=True)
