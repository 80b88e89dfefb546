"""Bench 7: what one execution costs the mesh: CPU per component, statements, messages.

A held load of Python hello worlds (`IN_FLIGHT` at once for `WINDOW_S`) goes through a mesh;
right before the first and right after the last run, CPU times are read from /proc, the
database's counters from Postgres and the message counters from NATS's monitoring endpoint.
Each difference is divided by the executions completed.

CPU is utime + stime from /proc/<pid>/stat, all threads of a process. A process tree's CPU
is each live process's own time plus its cutime + cstime (children it has reaped, and what
those had reaped in turn), over every live descendant. So a sandbox that has exited is
counted once its parent has waited for it; one still running is counted as far as it got.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg

from bench.common import MeshServers, Ratio, Result, Size, Stack, ratio, run_hello
from sandmesh_devstack.mesh import Mesh

NAME = "cost"
WINDOW_S = {Size.FULL: 30.0, Size.TINY: 3.0}
IN_FLIGHT = 4
# Lets start-up work (migrations checks, the warm pool filling) finish before the first reading.
SETTLE_S = 2.0
# Backends publish their transaction counters (pg_stat_database) when they go idle, at most
# once a second: this long after a run, all of it shows.
STATS_LAG_S = 1.5
# An idle spell before the load (longer than STATS_LAG_S): what the mesh spends doing nothing.
IDLE_S = {Size.FULL: 5.0, Size.TINY: 2.0}
TOP_STATEMENTS = 10
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
GOAL_MESH_MS = 5.0

# Table rows, in order; "mesh total" sums the MESH ones.
MESH = ("gateway", "scheduler", "executor", "NATS", "Postgres")
PROGRAMS = "programs (sandboxes)"
IDLE = "browser-pool (idle)"


@dataclass(frozen=True)
class _Times:
    """One process's CPU ticks: its own and its reaped children's."""

    own: int
    children: int


def _stat(pid: int) -> tuple[int, _Times] | None:
    """(ppid, times) of a live process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # Fields after the command name, which may hold spaces and parentheses.
    fields = raw[raw.rfind(b")") + 2 :].split()
    # state ppid ... utime(14) stime(15) cutime(16) cstime(17), numbered from pid = 1.
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return int(fields[1]), _Times(utime + stime, cutime + cstime)


def _processes() -> tuple[dict[int, _Times], dict[int, list[int]]]:
    """Every live process's times, and each pid's children."""
    times: dict[int, _Times] = {}
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        found = _stat(int(name))
        if found is None:
            continue
        ppid, pid_times = found
        times[int(name)] = pid_times
        children.setdefault(ppid, []).append(int(name))
    return times, children


def _tree_ticks(pid: int, times: Mapping[int, _Times], children: Mapping[int, list[int]]) -> int:
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        if current in times:
            total += times[current].own + times[current].children
        todo.extend(children.get(current, ()))
    return total


def cpu_reading(mesh: Mesh, servers: MeshServers) -> dict[str, float]:
    """CPU seconds so far of each component (the table's rows), from one pass over /proc."""
    times, children = _processes()

    def tree(pid: int | None) -> float:
        return 0.0 if pid is None else _tree_ticks(pid, times, children) / TICKS_PER_S

    def pid_of(service: str) -> int | None:
        process = mesh.services[service].process
        return None if process is None else process.pid

    executor = pid_of("executor")
    executor_own = times[executor].own / TICKS_PER_S if executor in times else 0.0
    return {
        "gateway": tree(pid_of("gateway")),
        "scheduler": tree(pid_of("scheduler")),
        "executor": executor_own,
        "NATS": tree(servers.nats.pid),
        "Postgres": tree(servers.postgres.pid),
        PROGRAMS: tree(executor) - executor_own,
        IDLE: tree(pid_of("browser-pool")),
    }


def nats_reading(servers: MeshServers) -> dict[str, int]:
    # A loopback call: any proxy from the environment must not see it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{servers.nats.monitor_url}/varz", timeout=5) as response:
        varz = json.load(response)
    return {key: int(varz[key]) for key in ("in_msgs", "out_msgs", "in_bytes", "out_bytes")}


def postgres_reading(servers: MeshServers) -> dict[str, Any]:
    """The mesh database's transaction counters and, where tracked, its statements' calls.

    Read over a connection to the admin database, so the readings count nothing of their own.
    """
    with psycopg.connect(servers.postgres.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT oid FROM pg_database WHERE datname = %s", (servers.database,)
        ).fetchone()
        assert row is not None, servers.database
        oid = row[0]
        # Backends publish these counters at most once a second (and when idle): cheap,
        # but they lag. pg_stat_statements, when there, is updated as each statement ends.
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datid = %s", (oid,)
        ).fetchone()
        assert row is not None, servers.database
        reading: dict[str, Any] = {"xact_commit": int(row[0]), "xact_rollback": int(row[1])}
        if servers.statements:
            rows = conn.execute(
                "SELECT queryid, query, calls, rows FROM pg_stat_statements WHERE dbid = %s",
                (oid,),
            ).fetchall()
            reading["statements"] = {
                str(queryid): {"query": query, "calls": int(calls), "rows": int(n)}
                for queryid, query, calls, n in rows
            }
    return reading


def _statement_deltas(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[dict[str, Any]]:
    deltas = []
    for queryid, now in after.items():
        then = before.get(queryid, {"calls": 0, "rows": 0})
        calls = now["calls"] - then["calls"]
        if calls > 0:
            query = " ".join(now["query"].split())
            deltas.append({"query": query, "calls": calls, "rows": now["rows"] - then["rows"]})
    return sorted(deltas, key=lambda d: -d["calls"])


@dataclass
class _Held:
    done: int
    errors: int
    seconds: float
    idle_start: dict[str, Any]
    idle_s: float
    before: dict[str, Any]
    after: dict[str, Any]


async def _hold(
    target: str,
    window_s: float,
    loops: int,
    idle_s: float,
    read: Callable[[], dict[str, Any]],
) -> _Held:
    """`read()` before and after `idle_s` of nothing, then `loops` clients start hello
    worlds until `window_s` has passed and wait for the last, and `read()` again."""
    done = errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        await run_hello(channel)  # connection set-up and first imports: not counted
        idle_start = read()
        idle_began = time.monotonic()
        await asyncio.sleep(idle_s)  # longer than STATS_LAG_S: the warm-up's counters show
        before = read()
        idle_s = time.monotonic() - idle_began
        began = time.monotonic()
        stop_at = began + window_s

        async def loop() -> None:
            nonlocal done, errors
            while time.monotonic() < stop_at:
                try:
                    await run_hello(channel)
                    done += 1
                except (grpc.RpcError, RuntimeError, TimeoutError):
                    errors += 1

        await asyncio.gather(*(loop() for _ in range(loops)))
        seconds = time.monotonic() - began
        return _Held(done, errors, seconds, idle_start, idle_s, before, read())


def _readings(mesh: Mesh, servers: MeshServers) -> dict[str, Any]:
    return {
        "cpu_s": cpu_reading(mesh, servers),
        "nats": nats_reading(servers),
        "postgres": postgres_reading(servers),
    }


def run(stack: Stack, size: Size) -> Result:
    window = WINDOW_S[size]
    result = Result(
        name=NAME,
        title=f"cost per execution: hello worlds, {IN_FLIGHT} in flight for {window:.0f} s",
        config={
            "window_s": window,
            "in_flight": IN_FLIGHT,
            "settle_s": SETTLE_S,
            "stats_lag_s": STATS_LAG_S,
            "idle_s": IDLE_S[size],
        },
        columns=["component", "measure", "per execution", "share of mesh CPU", "idle, per s"],
    )
    with stack.mesh(NAME, track_statements=True) as mesh:
        servers = stack.servers[NAME]
        time.sleep(SETTLE_S)
        # The bench's own client runs in this process: in none of the trees read here.
        held = asyncio.run(
            _hold(
                mesh.services["gateway"].target,
                window,
                IN_FLIGHT,
                IDLE_S[size],
                lambda: _readings(mesh, servers),
            )
        )
        # pg_stat_database lags by up to a second or so of backend activity: read it again
        # once the idle backends have published, for the transaction figure only.
        time.sleep(STATS_LAG_S)
        late = postgres_reading(servers)
    done, errors, elapsed, before, after = (
        held.done,
        held.errors,
        held.seconds,
        held.before,
        held.after,
    )
    result.errors = errors
    per = max(done, 1)
    idle_cpu = {
        name: round(
            (before["cpu_s"][name] - held.idle_start["cpu_s"][name]) * 1000 / held.idle_s, 2
        )
        for name in before["cpu_s"]
    }
    idle_nats = {
        key: round((before["nats"][key] - held.idle_start["nats"][key]) / held.idle_s, 2)
        for key in before["nats"]
    }

    cpu_ms = {
        name: (after["cpu_s"][name] - before["cpu_s"][name]) * 1000 / per for name in after["cpu_s"]
    }
    mesh_ms = sum(cpu_ms[name] for name in MESH)
    idle_mesh = round(sum(idle_cpu[name] for name in MESH), 2)
    for name in MESH:
        share = ratio(cpu_ms[name], mesh_ms)
        result.rows.append([name, "CPU ms", round(cpu_ms[name], 2), share, idle_cpu[name]])
    result.rows.append(
        ["mesh total", "CPU ms", round(mesh_ms, 2), 1.0 if mesh_ms > 0 else None, idle_mesh]
    )
    result.rows.append([PROGRAMS, "CPU ms", round(cpu_ms[PROGRAMS], 2), None, idle_cpu[PROGRAMS]])
    result.rows.append([IDLE, "CPU ms", round(cpu_ms[IDLE], 2), None, idle_cpu[IDLE]])

    transactions = sum(
        late[key] - before["postgres"][key] for key in ("xact_commit", "xact_rollback")
    )
    nats = {key: (after["nats"][key] - before["nats"][key]) / per for key in after["nats"]}
    statements = None
    top: list[dict[str, Any]] = []
    idle: int | str = "uncounted"
    idle_statements = None
    if servers.statements:
        idle_statements = round(
            sum(
                d["calls"]
                for d in _statement_deltas(
                    held.idle_start["postgres"]["statements"], before["postgres"]["statements"]
                )
            )
            / held.idle_s,
            2,
        )
        idle = sum(
            d["calls"]
            for d in _statement_deltas(after["postgres"]["statements"], late["statements"])
        )
        top = _statement_deltas(before["postgres"]["statements"], after["postgres"]["statements"])
        statements = sum(d["calls"] for d in top) / per
    kib = (nats["in_bytes"] + nats["out_bytes"]) / 1024
    result.rows += [
        ["Postgres", "transactions", round(transactions / per, 2), None, None],
        [
            "Postgres",
            "statements",
            None if statements is None else round(statements, 2),
            None,
            idle_statements,
        ],
        ["NATS", "messages in", round(nats["in_msgs"], 2), None, idle_nats["in_msgs"]],
        ["NATS", "messages out", round(nats["out_msgs"], 2), None, idle_nats["out_msgs"]],
        [
            "NATS",
            "KiB in + out",
            round(kib, 2),
            None,
            round((idle_nats["in_bytes"] + idle_nats["out_bytes"]) / 1024, 2),
        ],
    ]

    result.ratios = [
        Ratio(
            "mesh CPU ms / program CPU ms",
            ratio(mesh_ms, cpu_ms[PROGRAMS]),
            f"lower is better; goal: mesh total ≤ {GOAL_MESH_MS:g} ms per execution "
            f"(now {mesh_ms:.1f} ms)",
        ),
        Ratio(
            "mesh CPU ms / execution ÷ goal",
            ratio(mesh_ms, GOAL_MESH_MS),
            f"≤ 1 meets issue 19's goal of {GOAL_MESH_MS:g} ms of mesh CPU per execution",
        ),
    ]
    result.notes += [
        f"{done:,} executions completed ({errors} errors) in {elapsed:.1f} s "
        f"({done / elapsed:.1f}/s); every figure is per completed execution",
        f"idle, per s: the same counters over {held.idle_s:.1f} s with nothing submitted, just "
        "before the load; divided by the executions per second it is the part of a "
        "per-execution figure the mesh spends whether or not it runs anything",
        "CPU is utime+stime from /proc/<pid>/stat, all threads, read right before the first "
        "and after the last run. gateway, scheduler, NATS and Postgres (the postmaster and "
        "its backends) count their whole process trees, live processes plus the children "
        "they have reaped; executor is its own process only; programs are the executor's "
        "descendants (bwrap, the sandbox init, the warm pool's launchers and the programs), "
        "live or reaped. Not counted: the bench's client, the kernel's work outside these "
        "processes, and a sandbox that exits but is not yet reaped at a reading",
        f"the browser pool serves nothing here; its idle CPU is shown but not in the mesh "
        f"total. CPU is read in ticks of {1000 / TICKS_PER_S:g} ms per process",
        "transactions: xact_commit + xact_rollback of the mesh's database (pg_stat_database, "
        f"the after reading taken {STATS_LAG_S:g} s after the run, as backends publish "
        f"them late, so it includes {idle} statements of idle polling in that time); "
        "statements: "
        + (
            "pg_stat_statements calls (track = top, BEGIN/COMMIT included)"
            if servers.statements
            else "not available (no pg_stat_statements on this server)"
        ),
        "NATS: /varz in_msgs, out_msgs, in_bytes, out_bytes of the mesh's own server "
        "(JetStream's internal messages included)",
    ]
    if top:
        result.notes.append(
            "top statements by calls / execution: "
            + "; ".join(f"{d['calls'] / per:.2f} x {d['query'][:80]}" for d in top[:TOP_STATEMENTS])
        )
    result.data = {
        "executions": done,
        "elapsed_s": elapsed,
        "cpu_ms_per_execution": {name: round(v, 3) for name, v in cpu_ms.items()},
        "mesh_cpu_ms_per_execution": round(mesh_ms, 3),
        "postgres_transactions_per_execution": transactions / per,
        "postgres_statements_per_execution": statements,
        "postgres_statements_while_waiting_for_stats": idle,
        "postgres_top_statements": [
            {**d, "calls_per_execution": d["calls"] / per} for d in top[:TOP_STATEMENTS]
        ],
        "nats_per_execution": nats,
        # The raw counters, less the statements' texts (their deltas are above).
        "idle_per_s": {"cpu_ms": idle_cpu, "nats": idle_nats, "statements": idle_statements},
        "readings": {
            label: {
                "cpu_s": {name: round(v, 3) for name, v in reading["cpu_s"].items()},
                "nats": reading["nats"],
                "postgres": {k: v for k, v in reading["postgres"].items() if k != "statements"},
            }
            for label, reading in (
                ("idle_start", held.idle_start),
                ("before", before),
                ("after", after),
            )
        }
        | {"postgres_late": {k: v for k, v in late.items() if k != "statements"}},
    }
    return result
