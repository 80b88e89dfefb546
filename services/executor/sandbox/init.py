"""The sandbox's pid 1 (``init.c``), built once per executor process with the system C compiler.

It is built rather than shipped so the binary always matches the machine's libc, and into
a memfd (the compiler writes through ``/proc/<pid>/fd/N``), so no host directory is used.
Each sandbox gets its own copy through bwrap's ``--file``, at ``PATH``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("init.c")
# Where the sandbox sees it: on the read-only root, named as initramfs does.
PATH = "/init"
# The code init exits with when it could not execute the command (it says why on its pipe).
EXEC_FAILED = 127


@functools.cache
def binary() -> bytes:
    """The compiled init; raises OSError when it cannot be built."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler to build the sandbox init")
    fd = os.memfd_create("sandbox-init", os.MFD_CLOEXEC)
    try:
        result = subprocess.run(
            [compiler, "-O2", "-s", "-o", f"/proc/{os.getpid()}/fd/{fd}", str(SOURCE)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise OSError(f"cannot build the sandbox init: {result.stderr.decode()[-500:]}")
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)
    except subprocess.SubprocessError as exc:
        raise OSError(f"cannot build the sandbox init: {exc}") from exc
    finally:
        os.close(fd)
