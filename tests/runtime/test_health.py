"""Every service answers the standard health protocol, and readiness tells the truth."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sandmesh_devstack.mesh import SERVICES, Mesh, health_status
from sandmesh_devstack.ports import free_port, free_ports


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_serves_overall_liveness_and_readiness(mesh: Mesh, service: str) -> None:
    target = mesh.services[service].target
    for name in ("", "liveness", "readiness"):
        assert health_status(target, name) == "SERVING", (service, name)


def test_unknown_health_service_is_not_found(mesh: Mesh) -> None:
    assert health_status(mesh.services["gateway"].target, "no-such-service") == "NOT_FOUND"


def test_readiness_is_not_serving_without_postgres_and_nats_and_answers_fast(
    tmp_path: Path,
) -> None:
    # Ports nothing listens on: the dependencies are unreachable from the start.
    dead_nats = f"nats://127.0.0.1:{free_port()}"
    dead_postgres = f"postgresql://postgres@127.0.0.1:{free_port()}/sandmesh"
    mesh = Mesh(
        tmp_path / "logs",
        dead_nats,
        dead_postgres,
        ports=dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True)),
    )
    mesh.start()
    try:
        deadline = time.monotonic() + 30
        up: set[str] = set()
        while len(up) < len(SERVICES) and time.monotonic() < deadline:
            up = {
                n
                for n, s in mesh.services.items()
                if health_status(s.target, "liveness") == "SERVING"
            }
            time.sleep(0.2)
        assert up == set(SERVICES), f"not live: {set(SERVICES) - up}"
        time.sleep(2.5)  # several readiness rounds, each trying the dead dependencies
        for name in ("scheduler", "executor", "gateway"):
            target = mesh.services[name].target
            for probe in ("readiness", ""):
                started = time.monotonic()
                status = health_status(target, probe, timeout=1.0)
                took = time.monotonic() - started
                assert status == "NOT_SERVING", (name, probe, status)
                assert took < 1.0, f"{name} {probe} check took {took:.2f} s"
            assert health_status(target, "liveness") == "SERVING"
        # The browser pool depends on neither, so it becomes ready once a browser answers.
        pool = mesh.services["browser-pool"].target
        deadline = time.monotonic() + 30
        while health_status(pool, "readiness") != "SERVING":
            assert time.monotonic() < deadline, "the browser pool never became ready"
            time.sleep(0.2)
    finally:
        codes = mesh.stop()
    assert all(code == 0 for code in codes.values()), codes
