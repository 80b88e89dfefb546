"""A seccomp filter, hand-assembled as classic BPF, for bwrap's ``--seccomp FD``.

It denies the system calls no user program needs and that widen the kernel's
attack surface (debugging other processes, mounts, modules, keyrings, BPF,
perf, userfaultfd, namespaces, clock and host settings, io_uring).  Denied
calls fail with EPERM (ENOSYS for io_uring, so runtimes fall back to plain
I/O); everything else is allowed.  A foreign architecture or the x32 ABI is
killed: syscall numbers differ there, so the list would not hold.

No library is needed: the program is a list of ``struct sock_filter``
(u16 code, u8 jt, u8 jf, u32 k) that bwrap loads after it has set the
sandbox up, right before exec'ing the program.
"""

from __future__ import annotations

import errno
import os
import platform
import struct

# BPF opcodes (linux/bpf_common.h) and seccomp constants (linux/seccomp.h).
_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K
_JA = 0x05 | 0x00  # BPF_JMP | BPF_JA
_RET_KILL_PROCESS = 0x8000_0000
_RET_ERRNO = 0x0005_0000
_RET_ALLOW = 0x7FFF_0000
# Offsets in struct seccomp_data.
_NR_OFFSET = 0
_ARCH_OFFSET = 4
_X32_SYSCALL_BIT = 0x4000_0000

AUDIT_ARCH_X86_64 = 0xC000_003E
AUDIT_ARCH_AARCH64 = 0xC000_00B7

# name: (x86_64, aarch64); aarch64 has no iopl/ioperm.
DENIED: dict[str, tuple[int | None, int | None]] = {
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "open_tree": (428, 428),
    "move_mount": (429, 429),
    "mount_setattr": (442, 442),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "quotactl": (179, 60),
    "acct": (163, 89),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "perf_event_open": (298, 241),
    "bpf": (321, 280),
    "userfaultfd": (323, 282),
    "unshare": (272, 97),
    "setns": (308, 268),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "syslog": (103, 116),
    "lookup_dcookie": (212, 18),
    "vhangup": (153, 58),
    "iopl": (172, None),
    "ioperm": (173, None),
}
# io_uring answers ENOSYS: libuv, Go and the JVM then use ordinary syscalls.
NOT_IMPLEMENTED: dict[str, tuple[int, int]] = {
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _arch_block(index: int, x32_check: bool) -> list[bytes]:
    """Instructions judging the syscall number for one architecture's table."""
    rules = [(nrs[index], errno.EPERM) for nrs in DENIED.values() if nrs[index] is not None]
    rules += [(nrs[index], errno.ENOSYS) for nrs in NOT_IMPLEMENTED.values()]
    block = [_insn(_LD_W_ABS, _NR_OFFSET)]
    if x32_check:
        block.append(_insn(_JGE_K, _X32_SYSCALL_BIT, jt=0, jf=1))
        block.append(_insn(_RET_K, _RET_KILL_PROCESS))
    for nr, err in rules:
        assert nr is not None
        # Equal: fall through to the return; otherwise skip it.
        block.append(_insn(_JEQ_K, nr, jt=0, jf=1))
        block.append(_insn(_RET_K, _RET_ERRNO | err))
    block.append(_insn(_RET_K, _RET_ALLOW))
    return block


def build_filter() -> bytes:
    """The whole BPF program, for both architectures it knows."""
    x86 = _arch_block(0, x32_check=True)
    arm = _arch_block(1, x32_check=False)
    # Layout: dispatch on the architecture | kill | x86_64 block | aarch64 block.
    # Jump offsets count from the next instruction.
    head = [
        _insn(_LD_W_ABS, _ARCH_OFFSET),
        _insn(_JEQ_K, AUDIT_ARCH_X86_64, jt=0, jf=1),
        _insn(_JA, 3),
        _insn(_JEQ_K, AUDIT_ARCH_AARCH64, jt=0, jf=1),
        _insn(_JA, 1 + len(x86)),
        _insn(_RET_K, _RET_KILL_PROCESS),
    ]
    program = head + x86 + arm
    if len(program) > 4096:
        raise ValueError("seccomp program too long")
    return b"".join(program)


def supported() -> bool:
    """Whether this machine's architecture is one the filter knows."""
    return platform.machine() in ("x86_64", "aarch64")


def filter_fd() -> int:
    """A memfd holding the program, positioned at its start, for ``--seccomp FD``."""
    fd = os.memfd_create("seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, build_filter())
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
