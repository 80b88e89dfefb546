"""Chromium's jail: an unprivileged uid, its own namespaces, a clean environment.

Layers, outermost first:

* `setpriv`: killed with the pool (`--pdeathsig KILL`) and, when the pool runs as root, a
  random unprivileged host uid and gid of its own with no supplementary groups;
* bubblewrap: new user, pid, network, ipc, uts and cgroup namespaces; a read-only `/usr`
  and the few other system files Chromium reads; a fresh `/proc`, `/dev` and `/tmp`; the
  browser's private dir (profile, HOME, TMPDIR) the only writable host path;
* `jail_init.py`, which hands the pool the namespace's proxy listener and a socket to reach
  DevTools by (see there), then execs Chromium.

Chromium keeps its own sandbox on: its renderers get further user, pid and network
namespaces and a seccomp-bpf filter. That sandbox needs unprivileged user namespaces, the
same as bubblewrap here. The environment holds only HOME, TMPDIR, PATH and LANG: nothing of
the pool's (database or NATS addresses, settings) reaches the browser.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

# What Chromium reads outside /usr: fonts and their cache (without it every new browser
# spends seconds indexing fonts), the loader cache, Debian's launcher settings.
_SYSTEM_FILES = (
    "/etc/alternatives",
    "/etc/chromium",
    "/etc/chromium.d",
    "/etc/fonts",
    "/etc/ld.so.cache",
    "/etc/ssl/certs",
    "/var/cache/fontconfig",
)
_INIT = Path(__file__).with_name("jail_init.py")
_INIT_IN_JAIL = "/run/sandmesh/jail_init.py"


def environment(private_dir: Path) -> dict[str, str]:
    return {
        "HOME": str(private_dir),
        "TMPDIR": str(private_dir / "tmp"),
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }


def _python() -> str:
    """An interpreter the jail can run: only /usr is in there."""
    own = os.path.realpath(sys.executable)
    if own.startswith("/usr/"):
        return own
    found = shutil.which("python3", path="/usr/local/bin:/usr/bin")
    if found is None:
        raise RuntimeError("no python3 under /usr for the browser jail")
    return found


def command(
    executable: str,
    args: list[str],
    private_dir: Path,
    uid: int | None,
    control_fd: int,
    init_fd: int,
) -> list[str]:
    """The command line that starts Chromium in its jail.

    `control_fd` is where jail_init sends the sockets; `init_fd` holds jail_init's source
    (copied in by bwrap, so the pool's own files need not be readable by the browser's uid).
    """
    prefix = ["setpriv", "--pdeathsig", "KILL"]
    if uid is not None:
        prefix += [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    binds = ["--ro-bind", "/usr", "/usr"]
    # Merged-/usr symlinks stay symlinks, so the jail has the host's layout.
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            binds += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            binds += ["--ro-bind", top, top]
    for name in _SYSTEM_FILES:
        binds += ["--ro-bind-try", name, name]
    return [
        *prefix,
        "--",
        "bwrap",
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        *binds,
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--bind",
        str(private_dir),
        str(private_dir),
        "--ro-bind-data",
        str(init_fd),
        _INIT_IN_JAIL,
        "--",
        _python(),
        "-I",
        "-S",
        _INIT_IN_JAIL,
        str(control_fd),
        executable,
        *args,
    ]


def init_source_fd() -> int:
    """A memfd holding jail_init's source, to hand to bwrap (close it once bwrap started)."""
    fd = os.memfd_create("jail_init", os.MFD_CLOEXEC)
    with open(fd, "wb", closefd=False) as memfd:
        memfd.write(_INIT.read_bytes())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def receive_sockets(control: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(proxy listener, DevTools socket) from jail_init; blocking, under the caller's timeout."""
    _, fds, _, _ = socket.recv_fds(control, 64, 2)
    if len(fds) != 2:
        for fd in fds:
            os.close(fd)
        raise RuntimeError("the browser jail did not hand over its sockets")
    return socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1])
