"""Builds the bubblewrap command line for one sandboxed run.

Program files are handed to bwrap as anonymous memfds (``--file FD DEST``)
instead of a host staging directory: nothing is written to the host
filesystem (so there is nothing to no-follow, race or clean up), bwrap can
read the fds even after we drop to an unprivileged host uid, the copies land
in the size-capped /work tmpfs (so they count against ``tmp_bytes``), and the
destination paths are created by bwrap inside a fresh tmpfs where no
attacker-made symlink can exist.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from types import TracebackType

from services.executor.sandbox import init
from services.executor.sandbox.limits import SandboxLimits

SANDBOX_UID = 65534
SANDBOX_GID = 65534
WORK_DIR = "/work"
SANDBOX_HOSTNAME = "sandbox"
SANDBOX_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORK_DIR,
    "LANG": "C.UTF-8",
}

# bwrap runs with RLIMIT_NOFILE=256 and needs low fd numbers of its own.
MAX_FILES = 128
MAX_PATH_LEN = 1024

# Host directories bound read-only; merged-/usr symlinks are recreated as
# symlinks so the sandbox sees the same layout as the host.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Only what dynamic loaders and interpreters need.  Not /etc/ssl as a whole:
# /etc/ssl/private holds host TLS keys.
_ETC_PATHS = (
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
)

# /proc/loadavg as an idle machine's: the host's load tells a program about other runs.
_LOADAVG = "0.00 0.00 0.00 1/1 1\n"

_PASSWD = f"sandbox:x:{SANDBOX_UID}:{SANDBOX_GID}:sandbox:{WORK_DIR}:/usr/sbin/nologin\n"
_GROUP = f"sandbox:x:{SANDBOX_GID}:\n"


def find_bwrap() -> str | None:
    """Absolute path of the bwrap binary, or None when it is not installed."""
    return shutil.which("bwrap")


def validate_file_name(name: str) -> PurePosixPath:
    """Check a program file name and return it as a relative path.

    Raises ValueError for absolute paths, empty, ``.`` or ``..`` components,
    NUL bytes or over-long names.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"invalid file name {name!r}")
    if "\0" in name or len(name) > MAX_PATH_LEN or name.startswith("/"):
        raise ValueError(f"invalid file name {name!r}")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", "..") or len(part.encode()) > 255:
            raise ValueError(f"invalid file name {name!r}")
    return PurePosixPath(*parts)


def _memfd_with(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


class StagedFiles:
    """Program files (and the sandbox's init, synthetic /etc/passwd, /etc/group) in memfds.

    ``args`` are the bwrap operations that materialise them; ``fds`` must be
    passed to the bwrap process (``pass_fds``).  Close after bwrap started.
    """

    def __init__(
        self,
        files: Mapping[str, bytes],
        limits: SandboxLimits,
        executable: frozenset[str] = frozenset(),
    ) -> None:
        if len(files) > MAX_FILES:
            raise ValueError(f"too many files: {len(files)} > {MAX_FILES}")
        paths: dict[PurePosixPath, bytes] = {}
        total = 0
        for name, data in files.items():
            rel = validate_file_name(name)
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise ValueError(f"content of {name!r} must be bytes")
            # Build outputs (the executable ones) are ours, not the request's: only the
            # tmpfs total bounds them.
            if len(data) > limits.file_size_bytes and name not in executable:
                raise ValueError(f"{name!r} is larger than the file size limit")
            if rel in paths:
                raise ValueError(f"duplicate file name {name!r}")
            paths[rel] = bytes(data)
            total += len(data)
        if total > limits.tmp_bytes:
            raise ValueError("program files do not fit in the work directory")
        dirs: set[PurePosixPath] = set()
        for rel in paths:
            dirs.update(p for p in rel.parents if p != PurePosixPath("."))
        clash = dirs.intersection(paths)
        if clash:
            raise ValueError(f"{sorted(map(str, clash))[0]!r} is both a file and a directory")

        init_binary = init.binary()
        # bwrap writes every staged file under the run's RLIMIT_FSIZE, init included.
        self.largest = max([len(init_binary), *(len(data) for data in paths.values())])
        self.fds: list[int] = []
        self.args: list[str] = []
        try:
            fd = _memfd_with("init", init_binary)
            self.fds.append(fd)
            self.args += ["--perms", "0555", "--file", str(fd), init.PATH]
            for path, text in (
                ("/etc/passwd", _PASSWD),
                ("/etc/group", _GROUP),
                ("/proc/loadavg", _LOADAVG),
            ):
                fd = _memfd_with(os.path.basename(path), text.encode())
                self.fds.append(fd)
                self.args += ["--perms", "0444", "--ro-bind-data", str(fd), path]
            # Sorted by depth so every parent exists before its children.
            for d in sorted(dirs, key=lambda p: (len(p.parts), str(p))):
                self.args += ["--dir", f"{WORK_DIR}/{d}"]
            for rel, data in sorted(paths.items(), key=lambda item: str(item[0])):
                fd = _memfd_with("src", data)
                self.fds.append(fd)
                perms = "0755" if str(rel) in executable else "0644"
                self.args += ["--perms", perms, "--file", str(fd), f"{WORK_DIR}/{rel}"]
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _system_mounts(ro_binds: Sequence[str]) -> list[str]:
    args: list[str] = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in (*_ETC_PATHS, *ro_binds):
        args += ["--ro-bind-try", path, path]
    return args


def build_bwrap_argv(
    bwrap_path: str,
    command: Sequence[str],
    limits: SandboxLimits,
    staged: StagedFiles,
    status_fd: int,
    report_fd: int,
    env: Mapping[str, str] | None = None,
    ro_binds: Sequence[str] = (),
    seccomp_fd: int | None = None,
) -> list[str]:
    """Full argv running ``command`` inside a fresh sandbox, under the sandbox's init.

    ``status_fd`` receives bwrap's JSON status; its ``exit-code`` record is
    only written once init was exec'd, which is how setup failures are
    told apart from the program's own exit codes.  ``report_fd`` is where init
    says why it could not execute ``command``.  ``env`` adds to the
    sandbox's clean environment, ``ro_binds`` are extra host paths shown
    read-only (a language's configuration), ``seccomp_fd`` holds a BPF filter.
    """
    if not command:
        raise ValueError("empty command")
    tmp_size = str(limits.tmp_bytes)
    argv = [
        bwrap_path,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        # Our init is pid 1, not bwrap's reaper: bwrap's reaper is dumpable and reports
        # the exit status through an eventfd, both within the program's reach.
        "--as-pid-1",
        # Nested user namespaces are a common kernel attack surface.
        "--disable-userns",
        "--die-with-parent",
        # Stops TIOCSTI injection into a controlling terminal.
        "--new-session",
        "--hostname",
        SANDBOX_HOSTNAME,
        "--clearenv",
    ]
    for key, value in {**SANDBOX_ENV, **(env or {})}.items():
        argv += ["--setenv", key, value]
    argv += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID)]
    argv += _system_mounts(ro_binds)
    argv += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        # /dev/shm must be size-capped too, then /dev itself made read-only.
        "--size",
        tmp_size,
        "--tmpfs",
        "/dev/shm",
        "--remount-ro",
        "/dev",
    ]
    if os.path.isdir("/proc/pressure"):
        # Pressure stall figures are the host's: an empty read-only directory instead.
        argv += ["--tmpfs", "/proc/pressure", "--remount-ro", "/proc/pressure"]
    argv += [
        "--size",
        tmp_size,
        "--tmpfs",
        "/tmp",
        "--size",
        tmp_size,
        "--tmpfs",
        WORK_DIR,
    ]
    argv += staged.args
    argv += [
        # Last mount op: the root tmpfs bwrap built becomes read-only; the
        # tmpfs mounts above stay writable (not recursive).
        "--remount-ro",
        "/",
        "--chdir",
        WORK_DIR,
        "--json-status-fd",
        str(status_fd),
    ]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--", init.PATH, str(report_fd), *command]
    return argv
