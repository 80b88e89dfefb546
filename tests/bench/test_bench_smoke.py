"""Every benchmark once, in the tiny configuration, so none of them can rot.

Structure only (JSON written, tables printed, no errors): timings on a shared test machine
say nothing, so nothing here compares a figure with a threshold.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import BENCHMARKS, main
from bench.browser import PER_JOB, POOL, SHARED
from bench.common import format_table, percentile
from bench.cost import MESH, PROGRAMS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, dict[str, Any]]]:
    out = tmp_path_factory.mktemp("bench-results")
    # The real entry point, as `make bench` runs it.
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = {}
    for name in BENCHMARKS:
        files = sorted(out.glob(f"{name}-*.json"))
        assert len(files) == 1, f"{name}: expected one JSON file, found {files}"
        results[name] = json.loads(files[0].read_text())
    return done.stdout, results


@pytest.mark.timeout(600)
def test_every_benchmark_writes_json_and_prints_its_table(
    quick_run: tuple[str, dict[str, dict[str, Any]]],
) -> None:
    stdout, results = quick_run
    for name, result in results.items():
        assert result["benchmark"] == name
        assert result["date"].endswith("Z")
        assert result["machine"]["nproc"] >= 1
        assert result["machine"]["mem_total_mib"] > 0
        assert result["machine"]["kernel"] and result["machine"]["python"]
        assert result["config"]
        assert result["table"]["rows"], f"{name} has no rows"
        assert f"== {name}: " in stdout
        for row in result["table"]["rows"]:
            assert f"| {row[0]} " in stdout, f"{name}: row {row[0]!r} not printed"
        for item in result["ratios"]:
            assert item["name"] in stdout
    assert "== summary" in stdout


@pytest.mark.timeout(600)
def test_figures_are_complete_and_error_free(
    quick_run: tuple[str, dict[str, dict[str, Any]]],
) -> None:
    _, results = quick_run
    submit = results["submit"]
    assert submit["errors"] == 0
    assert submit["data"]["errors_by_code"] == {}
    assert submit["data"]["latency_ms"]["count"] == submit["config"]["clients"]

    for name in ("latency", "throughput", "queue", "memory"):
        assert results[name]["errors"] == 0, name
    latency = results["latency"]["data"]["summaries_ms"]
    assert all(s["count"] >= 1 for s in latency.values())
    assert all(r["value"] is not None for r in results["latency"]["ratios"])

    browser = results["browser"]["data"]
    # The Playwright baselines always run; the pool runs unless it still answers UNIMPLEMENTED.
    for label in (PER_JOB, SHARED):
        assert browser["summaries_ms"][label]["count"] >= 1
    assert browser["summaries_ms"][POOL]["count"] >= 1 or POOL in browser["unavailable"]

    rss = results["memory"]["data"]["rss_bytes"]
    assert set(rss["start"]) == {"gateway", "scheduler", "executor", "browser-pool"}
    assert all(figures["process"] > 0 for figures in rss["end"].values())

    cost = results["cost"]
    assert cost["errors"] == 0
    figures = cost["data"]
    assert figures["executions"] >= 1
    cpu = figures["cpu_ms_per_execution"]
    # Every service does work for every run; a zero means a process was not found.
    for component in (*MESH, PROGRAMS):
        assert cpu[component] > 0, (component, cpu)
    assert figures["mesh_cpu_ms_per_execution"] == pytest.approx(
        sum(cpu[c] for c in MESH), abs=0.01
    )
    assert figures["postgres_transactions_per_execution"] > 0
    statements = figures["postgres_statements_per_execution"]
    assert statements is None or statements > 0
    assert statements is None or figures["postgres_top_statements"]
    nats = figures["nats_per_execution"]
    assert nats["in_msgs"] > 0 and nats["out_msgs"] > 0 and nats["in_bytes"] > 0
    assert all(r["value"] is not None for r in cost["ratios"])


def test_unknown_benchmark_is_refused() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["no-such-benchmark"])
    assert exited.value.code == 2


def test_percentile_is_nearest_rank_and_tables_align() -> None:
    samples = [float(n) for n in range(1, 101)]
    assert (percentile(samples, 50), percentile(samples, 99), percentile(samples, 100)) == (
        50.0,
        99.0,
        100.0,
    )
    table = format_table(["series", "p50"], [["a", 1.5], ["longer", 10.25]]).splitlines()
    assert table[2] == "| a      |  1.50 |"
    assert table[3] == "| longer | 10.25 |"
