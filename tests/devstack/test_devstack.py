"""Tests for the local NATS / PostgreSQL starters used by ``make up`` and the suite."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sandmesh_devstack.nats import LocalNats
from sandmesh_devstack.ports import free_port
from sandmesh_devstack.postgres import LocalPostgres

# Never touch the system servers that may run on the default ports.
_SYSTEM_PORTS = {4222, 5432, 8222}


def _read_info(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        buf = b""
        while b"\r\n" not in buf:
            chunk = sock.recv(4096)
            assert chunk, "connection closed before INFO"
            buf += chunk
    return buf.split(b"\r\n", 1)[0].decode()


def _js_request(port: int, subject: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Minimal NATS request/reply over a raw socket (JetStream API calls)."""
    body = json.dumps(payload).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"INFO ")
        sock.sendall(
            b'CONNECT {"verbose":false,"pedantic":false,"headers":false}\r\n'
            b"SUB _INBOX.devstack 1\r\n"
            + f"PUB {subject} _INBOX.devstack {len(body)}\r\n".encode()
            + body
            + b"\r\n"
        )
        while True:
            line = reader.readline()
            assert line, "connection closed before the reply"
            if line.startswith(b"PING"):
                sock.sendall(b"PONG\r\n")
            elif line.startswith(b"MSG "):
                size = int(line.split()[-1])
                reply: dict[str, Any] = json.loads(reader.read(size + 2)[:size])
                return reply


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    # A zombie is not running (pid 1 of a container may be slow or never reap).
    return not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] != "Z"


def _children(pid: int) -> list[int]:
    """Live direct children of ``pid`` (Linux /proc only): the postmaster's backends."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                children.append(int(entry.name))
    return children


def test_free_port() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[LocalNats]:
    server = LocalNats.start(tmp_path / "nats")
    try:
        yield server
    finally:
        server.stop()


def test_nats_info_says_jetstream(nats: LocalNats) -> None:
    assert nats.port not in _SYSTEM_PORTS
    assert nats.url == f"nats://127.0.0.1:{nats.port}"
    info = _read_info(nats.port)
    assert info.startswith("INFO ")
    assert json.loads(info[len("INFO ") :])["jetstream"] is True
    assert '"jetstream":true' in info
    assert nats.log_path.is_file()


def test_nats_restart_keeps_port_and_streams(nats: LocalNats) -> None:
    created = _js_request(
        nats.port, "$JS.API.STREAM.CREATE.DEVSTACK", {"name": "DEVSTACK", "subjects": ["ds.>"]}
    )
    assert "error" not in created, created
    port, pid = nats.port, nats.pid

    nats.restart()
    assert nats.port == port
    assert nats.pid != pid
    assert not _pid_alive(pid)
    info = _js_request(nats.port, "$JS.API.STREAM.INFO.DEVSTACK", {})
    assert info["config"]["name"] == "DEVSTACK", info


def test_nats_kill_and_recover(nats: LocalNats) -> None:
    pid = nats.pid
    nats.kill()
    assert not nats.is_running
    assert not _pid_alive(pid)
    assert _refused(nats.port)

    nats.restart()
    assert nats.is_running
    assert '"jetstream":true' in _read_info(nats.port)


def test_nats_stop(tmp_path: Path) -> None:
    server = LocalNats.start(tmp_path / "nats")
    pid = server.pid
    server.stop()
    assert not _pid_alive(pid)
    assert _refused(server.port)
    server.stop()  # idempotent


def _select_one(url: str) -> int:
    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        row = conn.execute("SELECT 1").fetchone()
        assert row is not None
        value: int = row[0]
        return value


def test_postgres_lifecycle(tmp_path: Path) -> None:
    started = time.monotonic()
    pg = LocalPostgres.start(tmp_path)
    try:
        assert pg.port not in _SYSTEM_PORTS
        assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/sandmesh"
        assert _select_one(pg.url) == 1
        with psycopg.connect(pg.url, autocommit=True) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("sandmesh",)
            conn.execute("CREATE TABLE kept (v int)")
            conn.execute("INSERT INTO kept VALUES (42)")

        port, pid = pg.port, pg.pid
        pg.restart()
        assert pg.port == port
        assert pg.pid is not None and pg.pid != pid
        with psycopg.connect(pg.url, autocommit=True) as conn:
            assert conn.execute("SELECT v FROM kept").fetchone() == (42,)

        pid = pg.pid
        assert pid is not None
        backends = _children(pid)
        assert backends  # sanity: checkpointer, walwriter, ... are seen
        pg.stop()
        assert not pg.is_running
        assert _refused(port)
        assert [p for p in [pid, *backends] if _pid_alive(p)] == []
        pg.stop()  # idempotent

        # A second start() on the same base_dir reuses the cluster.
        again = LocalPostgres.start(tmp_path, port=port)
        assert again.home == pg.home
        with psycopg.connect(again.url, autocommit=True) as conn:
            assert conn.execute("SELECT v FROM kept").fetchone() == (42,)
        again.stop()
    finally:
        pg.destroy()
    assert not pg.home.exists()
    assert time.monotonic() - started < 30


def test_postgres_kill_leaves_nothing_running(tmp_path: Path) -> None:
    pg = LocalPostgres.start(tmp_path)
    try:
        conn = psycopg.connect(pg.url, autocommit=True)
        conn.execute("CREATE TABLE t (v int)")
        conn.execute("INSERT INTO t VALUES (7)")
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        client_backend: int = row[0]

        pid = pg.pid
        assert pid is not None
        backends = _children(pid)
        assert client_backend in backends  # sanity: the probe sees the backends

        pg.kill()
        assert not pg.is_running
        assert [p for p in [pid, *backends] if _pid_alive(p)] == []
        assert _refused(pg.port)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()

        pg.restart()  # crash recovery, same port, data kept
        with psycopg.connect(pg.url, autocommit=True) as conn:
            assert conn.execute("SELECT v FROM t").fetchone() == (7,)
    finally:
        pg.destroy()
