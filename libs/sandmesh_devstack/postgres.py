"""A throwaway local PostgreSQL cluster (``initdb`` + ``pg_ctl``) for ``make up`` and tests.

Layout of a cluster "home" directory::

    <home>/data           the cluster (PGDATA)
    <home>/sock           unix socket dir (``-k``)
    <home>/postgres.log   server log (``pg_ctl -l``)

Where ``<home>`` lives:

* Not root: ``<base_dir>/postgres``.
* Root: PostgreSQL refuses to run as root, so initdb/pg_ctl/createdb run as the ``postgres``
  system user.  ``base_dir`` is often below a directory that user cannot traverse
  (``/root/...``, ``/tmp/pytest-of-root/...``), so ``<home>`` is a fresh
  ``tempfile.mkdtemp(prefix="sandmesh-pg-")`` in ``tempfile.gettempdir()`` (normally
  ``/tmp``; override with ``TMPDIR``), chowned to ``postgres``, and ``<base_dir>/postgres``
  is a symlink to it.  :meth:`LocalPostgres.destroy` removes both.

If ``<base_dir>/postgres`` already holds an initialised cluster, :meth:`LocalPostgres.start`
reuses it (data survives ``make down``/``make up``); otherwise it runs initdb.

The server listens on 127.0.0.1 only, trusts every local connection (no passwords) and runs
with fsync/full_page_writes off: fast, and only a crash of the *machine* loses data;
committed transactions survive :meth:`LocalPostgres.kill`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from sandmesh_devstack.ports import free_port

__all__ = ["LocalPostgres", "find_pg_bindir", "has_library"]

_HOST = "127.0.0.1"
_DATABASE = "sandmesh"
_SUPERUSER = "postgres"
_SYSTEM_USER = "postgres"
_HOME_NAME = "postgres"
_DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
_PG_CTL_WAIT_S = 30
_CMD_TIMEOUT_S = 120.0
_STOP_WAIT_S = 10.0
_START_ATTEMPTS = 3
# sun_path is 108 bytes on Linux (104 on macOS) including ".s.PGSQL.<port>" and a NUL.
_MAX_SOCKET_PATH = 100


def find_pg_bindir() -> Path:
    """Directory holding ``initdb``, ``pg_ctl`` and ``postgres`` of one PostgreSQL version.

    PATH first (resolving symlinks so all tools come from the same version), then the
    highest ``/usr/lib/postgresql/<version>/bin`` (Debian/Ubuntu keep them off PATH).
    """
    for tool in ("pg_ctl", "initdb"):
        found = shutil.which(tool)
        if found:
            bindir = Path(found).resolve().parent
            if _is_bindir(bindir):
                return bindir
    versions: list[tuple[tuple[int, ...], Path]] = []
    for bindir in _DEBIAN_PG_ROOT.glob("*/bin"):
        try:
            key = tuple(int(part) for part in bindir.parent.name.split("."))
        except ValueError:
            continue
        if _is_bindir(bindir):
            versions.append((key, bindir))
    if versions:
        return max(versions)[1]
    raise FileNotFoundError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
        f"{_DEBIAN_PG_ROOT}/*/bin; on Debian/Ubuntu: apt-get install postgresql"
    )


def has_library(name: str) -> bool:
    """Whether the server found by :func:`find_pg_bindir` ships the loadable module ``name``
    (e.g. ``pg_stat_statements``), in the ``lib`` directory beside its ``bin``."""
    try:
        bindir = find_pg_bindir()
    except FileNotFoundError:
        return False
    return (bindir.parent / "lib" / f"{name}.so").is_file()


def _is_bindir(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres"))


@dataclass(frozen=True)
class _Account:
    """The unprivileged system user the server runs as when we are root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def lookup(cls, name: str) -> _Account:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise RuntimeError(
                f"running as root but there is no {name!r} system user to run PostgreSQL as "
                "(PostgreSQL refuses to run as root); on Debian/Ubuntu installing the "
                "postgresql package creates it, or: adduser --system --group postgres"
            ) from None
        groups = tuple(os.getgrouplist(name, entry.pw_gid))
        return cls(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)

    def can_traverse(self, path: Path) -> bool:
        for directory in (path, *path.parents):
            st = directory.stat()
            if st.st_uid == self.uid:
                bit = stat.S_IXUSR
            elif st.st_gid in self.groups:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not st.st_mode & bit:
                return False
        return True

    def chown(self, path: Path) -> None:
        os.chown(path, self.uid, self.gid)


class LocalPostgres:
    """A local PostgreSQL server with database ``sandmesh`` on 127.0.0.1.

    Use :meth:`start`; the constructor does not touch the disk.
    """

    def __init__(
        self,
        base_dir: Path,
        home: Path,
        bindir: Path,
        account: _Account | None,
        port: int,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._base_dir = base_dir
        self._home = home
        self._bindir = bindir
        self._account = account
        self._port = port
        self._settings = dict(settings or {})
        self._socket_dir = home / "sock"
        self._own_socket_dir = False

    # -- construction -------------------------------------------------------------------

    @classmethod
    def start(
        cls, base_dir: Path, port: int = 0, settings: Mapping[str, str] | None = None
    ) -> LocalPostgres:
        """Start (initialising if needed) a cluster for ``base_dir`` and create ``sandmesh``.

        ``port=0`` picks a free port (retrying with another one if it was taken meanwhile).
        ``settings`` are extra server parameters (``-c name=value``), kept across
        :meth:`restart`; e.g. ``{"shared_preload_libraries": "pg_stat_statements"}``.
        Returns once the server accepts connections.
        """
        base_dir = Path(base_dir).absolute()
        base_dir.mkdir(parents=True, exist_ok=True)
        bindir = find_pg_bindir()
        account = _Account.lookup(_SYSTEM_USER) if os.geteuid() == 0 else None
        home = _prepare_home(base_dir, account)
        pg = cls(base_dir, home, bindir, account, port, settings)
        running = pg.pid
        if running is not None:
            # Not ours to kill on failure below; e.g. a second `make up` on the same dir.
            raise RuntimeError(f"a postmaster (pid {running}) already runs on {pg.data_dir}")
        try:
            pg._prepare_socket_dir()
            if not (pg.data_dir / "PG_VERSION").is_file():
                pg._initdb()
            attempts = _START_ATTEMPTS if port == 0 else 1
            for attempt in range(1, attempts + 1):
                pg._port = port or free_port()
                try:
                    pg._pg_ctl_start()
                    break
                except RuntimeError:
                    if attempt == attempts:
                        raise
            pg._ensure_database()
        except BaseException:
            pg.kill()
            raise
        return pg

    # -- properties ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"postgresql://{_SUPERUSER}@{_HOST}:{self._port}/{_DATABASE}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def database(self) -> str:
        return _DATABASE

    @property
    def pid(self) -> int | None:
        """PID of the running postmaster, or None when the server is down."""
        pid = self._postmaster_pid()
        return pid if pid is not None and _alive(pid) else None

    @property
    def is_running(self) -> bool:
        return self.pid is not None

    @property
    def home(self) -> Path:
        return self._home

    @property
    def data_dir(self) -> Path:
        return self._home / "data"

    @property
    def socket_dir(self) -> Path:
        return self._socket_dir

    @property
    def log_path(self) -> Path:
        return self._home / "postgres.log"

    # -- lifecycle ----------------------------------------------------------------------

    def stop(self) -> None:
        """Fast shutdown (``pg_ctl stop -m fast``); a no-op if the server is down."""
        pid = self.pid
        if pid is None:
            return
        result = self._run(
            [self._tool("pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
             "-w", "-t", str(_PG_CTL_WAIT_S), "stop"],
        )  # fmt: skip
        if result.returncode != 0 and _alive(pid):
            raise RuntimeError(f"pg_ctl stop failed:\n{_output(result)}")
        # pg_ctl returns once postmaster.pid is gone; wait for the exit so the port is free.
        # (The postmaster itself waits for all its backends before exiting.)
        _wait_gone([pid], _STOP_WAIT_S)

    def kill(self) -> None:
        """SIGKILL the postmaster and all its backends (a crash, for fault tests).

        Data stays; :meth:`restart` runs crash recovery.
        """
        pid = self.pid
        if pid is None:
            return
        # Backends would notice the postmaster's death and exit on their own, but not
        # instantly; kill them too so nothing is left when this returns.  Each backend
        # setsid()s itself, so killpg() does not reach them: freeze the postmaster (no new
        # forks), list its children, then SIGKILL everyone.
        shmid = self._shmem_id()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        victims = [pid, *_children(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        _wait_gone(victims, _STOP_WAIT_S)
        if shmid is not None:
            # The postmaster's small SysV interlock segment would outlive a destroy();
            # a restart does not need it (it would just reclaim it).
            _remove_sysv_shm(shmid)
        self._clear_stale_locks()

    def restart(self) -> None:
        """Stop (if running) and start again on the same port with the same data."""
        self.stop()
        self._prepare_socket_dir()
        self._pg_ctl_start()

    def destroy(self) -> None:
        """Stop the server and delete the cluster (and the temp dirs/link made for it)."""
        try:
            self.stop()
        except (RuntimeError, OSError, subprocess.SubprocessError):
            self.kill()
        link = self._base_dir / _HOME_NAME
        shutil.rmtree(self._home, ignore_errors=True)
        if link.is_symlink():
            link.unlink()
        if self._own_socket_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalPostgres(url={self.url!r}, home={str(self._home)!r})"

    # -- internals ----------------------------------------------------------------------

    def _tool(self, name: str) -> str:
        path = self._bindir / name
        if os.access(path, os.X_OK):
            return str(path)
        found = shutil.which(name)
        if found is None:
            raise FileNotFoundError(f"{name} not found in {self._bindir} or on PATH")
        return found

    def _prepare_socket_dir(self) -> None:
        sock = self._home / "sock"
        if len(os.fsencode(sock / ".s.PGSQL.65535")) > _MAX_SOCKET_PATH:
            if self._own_socket_dir and self._socket_dir.is_dir():
                return
            # A deep base_dir would overflow sun_path: use a short temp dir instead.
            sock = Path(tempfile.mkdtemp(prefix="sandmesh-pgsock-"))
            self._own_socket_dir = True
        sock.mkdir(mode=0o700, exist_ok=True)
        if self._account is not None:
            self._account.chown(sock)
        self._socket_dir = sock

    def _initdb(self) -> None:
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # leftover of an interrupted initdb
        result = self._run(
            [self._tool("initdb"), "-D", str(self.data_dir), "--auth=trust",
             "-U", _SUPERUSER, "--encoding=UTF8", "--no-locale", "--no-sync"],
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{_output(result)}")

    def _clear_stale_locks(self) -> None:
        """Drop lock files whose owner is dead.

        PostgreSQL clears stale locks itself, except when the old PID is still a zombie
        (kill(pid, 0) succeeds), which is what a container pid 1 that never reaps leaves
        after kill(): the next start would then refuse with "lock file already exists".
        """
        locks = [self.data_dir / "postmaster.pid", *self._socket_dir.glob(".s.PGSQL.*.lock")]
        for lock in locks:
            try:
                owner = int(lock.read_text().split("\n", 1)[0].strip())
            except (OSError, ValueError):
                continue
            if not _alive(owner):
                lock.unlink(missing_ok=True)

    def _pg_ctl_start(self) -> None:
        self._clear_stale_locks()
        options = " ".join(
            [
                "-p", str(self._port),
                "-k", shlex.quote(str(self._socket_dir)),
                "-c", f"listen_addresses={_HOST}",
                # Only an OS crash can lose data with these off.  synchronous_commit stays
                # on: off would lose recent commits on kill(), breaking fault tests, and
                # with fsync=off a commit costs just a write() anyway.
                "-c", "fsync=off",
                "-c", "full_page_writes=off",
                *(
                    part
                    for name, value in self._settings.items()
                    for part in ("-c", shlex.quote(f"{name}={value}"))
                ),
            ]
        )  # fmt: skip
        result = self._run(
            [self._tool("pg_ctl"), "-w", "-t", str(_PG_CTL_WAIT_S), "-D", str(self.data_dir),
             "-o", options, "-l", str(self.log_path), "start"],
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(
                f"pg_ctl start on port {self._port} failed:\n{_output(result)}\n"
                f"log {self.log_path}:\n{self._log_tail()}"
            )

    def _ensure_database(self) -> None:
        result = self._run(
            [self._tool("createdb"), "-h", _HOST, "-p", str(self._port),
             "-U", _SUPERUSER, _DATABASE],
        )  # fmt: skip
        if result.returncode != 0 and "already exists" not in result.stderr:
            raise RuntimeError(f"createdb {_DATABASE} failed:\n{_output(result)}")

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        account = self._account
        return subprocess.run(
            cmd,
            cwd=self._home,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_CMD_TIMEOUT_S,
            check=False,
            user=None if account is None else account.uid,
            group=None if account is None else account.gid,
            extra_groups=None if account is None else list(account.groups),
        )

    def _env(self) -> dict[str, str]:
        # Ambient PG* settings (PGDATA, PGHOST, PGOPTIONS, ...) must not leak into our tools.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if self._account is not None:
            env.update(HOME=self._account.home, USER=self._account.name,
                       LOGNAME=self._account.name)  # fmt: skip
        return env

    def _postmaster_pid(self) -> int | None:
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first_line.strip())
        except (OSError, ValueError):
            return None

    def _shmem_id(self) -> int | None:
        # Line 7 of postmaster.pid is "<shm key> <shm id>".
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return int(lines[6].split()[1])
        except (OSError, ValueError, IndexError):
            return None

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "<no log>"


def _remove_sysv_shm(shmid: int) -> None:
    """Best-effort ``shmctl(shmid, IPC_RMID)`` (what ``ipcrm -m`` does)."""
    ipc_rmid = 0  # same value on Linux and the BSDs/macOS
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmctl(ctypes.c_int(shmid), ctypes.c_int(ipc_rmid), None)


def _prepare_home(base_dir: Path, account: _Account | None) -> Path:
    link = base_dir / _HOME_NAME
    if account is None:
        link.mkdir(exist_ok=True)
        return link.resolve()
    if (link / "data" / "PG_VERSION").is_file():
        return link.resolve()  # reuse the cluster of an earlier run
    if link.is_symlink():
        target = link.resolve()
        link.unlink()
        if target.name.startswith("sandmesh-pg-"):
            shutil.rmtree(target, ignore_errors=True)
    elif link.exists():
        shutil.rmtree(link)  # an uninitialised leftover of ours
    tmp_root = Path(tempfile.gettempdir())
    if not account.can_traverse(tmp_root):
        raise RuntimeError(
            f"the {account.name!r} user cannot reach {tmp_root}; "
            "point TMPDIR at a directory it can traverse"
        )
    home = Path(tempfile.mkdtemp(prefix="sandmesh-pg-"))
    account.chown(home)
    link.symlink_to(home, target_is_directory=True)
    return home


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"$ {shlex.join(str(a) for a in result.args)}\n{result.stdout}{result.stderr}".rstrip()


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after "(comm)": state, ppid, pgrp, ...; None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm itself may contain spaces and parentheses, hence rpartition.
    return text.rpartition(")")[2].split()


def _has_proc() -> bool:
    return Path("/proc/self/stat").is_file()


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (pid 1 in containers may never reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if not _has_proc():
        return True
    fields = _proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    """Live direct children of ``pid`` (empty where there is no /proc)."""
    if not _has_proc():
        return []
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                children.append(int(entry.name))
    return children


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() >= deadline:
            alive = [pid for pid in pids if _alive(pid)]
            raise TimeoutError(f"postgres processes {alive} still running after {timeout}s")
        time.sleep(0.02)
