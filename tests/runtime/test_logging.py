"""A service survives losing its log stream, and a failed start says why and exits non-zero."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import grpc

from sandmesh.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from sandmesh_devstack.mesh import command, health_status
from sandmesh_devstack.ports import free_port
from tests.helpers.servers import Servers


def scheduler_env(servers: Servers, port: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "NATS_URL": servers.nats.url,
        "DATABASE_URL": servers.postgres.url,
        "SANDMESH_HOST": "127.0.0.1",
        "SANDMESH_SCHEDULER_PORT": str(port),
        **extra,
    }


def test_killing_the_log_stream_does_not_stop_the_service(servers: Servers) -> None:
    port = free_port()
    process = subprocess.Popen(
        command("scheduler"),
        env=scheduler_env(servers, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        for line in process.stderr:
            if b'"message": "serving"' in line:
                break
        # Nobody reads the logs any more: every later write to stderr fails (EPIPE).
        process.stderr.close()
        target = f"127.0.0.1:{port}"
        with grpc.insecure_channel(target) as channel:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
            for _ in range(20):  # each call logs a line
                try:
                    stub.GetExecution(
                        scheduler_pb2.GetExecutionRequest(tenant="t", execution_id="x"), timeout=5
                    )
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.NOT_FOUND
        assert process.poll() is None, "the service died with its log stream"
        assert health_status(target, "liveness") == "SERVING"
    finally:
        process.terminate()
        process.wait(30)


def test_a_failed_start_exits_non_zero_with_the_reason_on_stderr(servers: Servers) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run(
            command("scheduler"),
            env=scheduler_env(servers, port),
            capture_output=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"sandmesh-scheduler: fatal: cannot listen on 127.0.0.1:{port}".encode() in done.stderr
    assert time.monotonic() - started < 30

    bad = subprocess.run(
        command("scheduler"),
        env=scheduler_env(servers, free_port(), SANDMESH_GRACE_S="soon"),
        capture_output=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert b"SANDMESH_GRACE_S must be a float, got 'soon'" in bad.stderr
