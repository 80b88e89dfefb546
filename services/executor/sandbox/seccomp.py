"""The seccomp policy, an allow-list assembled as classic BPF for bwrap's ``--seccomp FD``.

Modelled on Docker's default profile: the calls ordinary programs, interpreters and
toolchains make are allowed (``ALLOWED``); anything else, including every call a newer
kernel adds, fails with ENOSYS, which is what programs expect of a call the kernel does
not have (glibc and the runtimes then fall back: io_uring, inotify and clone3-era calls
included). Beyond that:

* calls programs probe and cope with being refused (debugging other processes, mounts,
  namespaces, keyrings, perf, clock and host settings) fail with EPERM (``REFUSED``);
* calls that only serve an attack on the kernel or the machine (kexec, modules, bpf,
  open_by_handle_at, port I/O, reboot, swap) kill the process (``KILLED``);
* ``socket``/``socketpair`` take only the families a program can use in a sandbox without a
  network: AF_UNIX, AF_INET, AF_INET6, and AF_NETLINK for NETLINK_ROUTE alone (how libc
  and runtimes list interfaces; the namespace has only ``lo``). AF_VSOCK, AF_PACKET and
  the rest fail with EAFNOSUPPORT, other netlink protocols with EPROTONOSUPPORT;
* file locks (``flock``, ``fcntl`` F_SETLK*) succeed without locking: the toolchain's
  files are shared read-only inodes, and a lock on one would block other runs and the
  host. A run's own processes thus cannot exclude each other with locks;
* inotify and fanotify are not allowed: watching the shared /usr showed other runs'
  compilers at work.

A foreign architecture or the x32 ABI is killed: syscall numbers differ there, so the list
would not hold. The program is a list of ``struct sock_filter`` (u16 code, u8 jt, u8 jf,
u32 k) that bwrap loads right before it execs the sandbox's init. The kernel caches the
verdict of every call whose rule reads no argument, so the length of the list costs only
the first call of each.
"""

from __future__ import annotations

import errno
import os
import platform
import socket
import struct

from services.executor.sandbox.syscalls import NUMBERS

# BPF opcodes (linux/bpf_common.h) and seccomp constants (linux/seccomp.h).
_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K
_JA = 0x05 | 0x00  # BPF_JMP | BPF_JA
_RET_KILL_PROCESS = 0x8000_0000
_RET_ERRNO = 0x0005_0000
_RET_ALLOW = 0x7FFF_0000
# Offsets in struct seccomp_data; arguments are 64-bit, their low half first (both
# architectures are little-endian).
_NR_OFFSET = 0
_ARCH_OFFSET = 4
_ARG_OFFSET = (16, 24, 32)
_X32_SYSCALL_BIT = 0x4000_0000

AUDIT_ARCH_X86_64 = 0xC000_003E
AUDIT_ARCH_AARCH64 = 0xC000_00B7

ALLOWED = [
    "accept",
    "accept4",
    "access",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "clone",
    "clone3",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_waitv",
    "futimesat",
    "get_mempolicy",
    "get_robust_list",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "mbind",
    "membarrier",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pause",
    "personality",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "set_robust_list",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
]
REFUSED = [
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "process_madvise",
    "process_mrelease",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "open_tree",
    "move_mount",
    "mount_setattr",
    "unshare",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "perf_event_open",
    "syslog",
    "quotactl",
    "quotactl_fd",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "vhangup",
    "lookup_dcookie",
    "name_to_handle_at",
    "userfaultfd",
    "move_pages",
    "migrate_pages",
]
KILLED = [
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "open_by_handle_at",
    "iopl",
    "ioperm",
    "reboot",
    "swapon",
    "swapoff",
]
SOCKET_FAMILIES = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)
_NETLINK_ROUTE = 0
# fcntl commands that take a lock: F_SETLK, F_SETLKW, F_OFD_SETLK, F_OFD_SETLKW.
_LOCK_COMMANDS = (6, 7, 37, 38)


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _on_arg(arg: int, values: tuple[int, ...], match: int, other: int) -> list[bytes]:
    """Return ``match`` when argument ``arg`` (its low 32 bits) is one of ``values``, else
    ``other`` (the last instruction)."""
    block = [_insn(_LD_W_ABS, _ARG_OFFSET[arg])]
    for value in values:
        block += [_insn(_JEQ_K, value, jt=0, jf=1), _insn(_RET_K, match)]
    return [*block, _insn(_RET_K, other)]


def _arch_block(index: int, x32_check: bool) -> list[bytes]:
    """Instructions judging the syscall number for one architecture's table."""

    def nr(name: str) -> int | None:
        return NUMBERS[name][index]

    nofamily = _RET_ERRNO | errno.EAFNOSUPPORT
    netlink = _on_arg(2, (_NETLINK_ROUTE,), _RET_ALLOW, _RET_ERRNO | errno.EPROTONOSUPPORT)
    families = _on_arg(0, SOCKET_FAMILIES, _RET_ALLOW, nofamily)
    # Before the final return: netlink sockets go on to their protocol check.
    families[-1:-1] = [_insn(_JEQ_K, socket.AF_NETLINK, jt=0, jf=len(netlink)), *netlink]
    # (syscall number, instructions run with it; they end in a return).
    rules: list[tuple[int | None, list[bytes]]] = [
        (nr("socket"), families),
        (nr("socketpair"), _on_arg(0, (socket.AF_UNIX,), _RET_ALLOW, nofamily)),
        # Errno 0: the call returns success without running.
        (nr("flock"), [_insn(_RET_K, _RET_ERRNO | 0)]),
        (nr("fcntl"), _on_arg(1, _LOCK_COMMANDS, _RET_ERRNO | 0, _RET_ALLOW)),
    ]
    rules += [(nr(name), [_insn(_RET_K, _RET_KILL_PROCESS)]) for name in KILLED]
    rules += [(nr(name), [_insn(_RET_K, _RET_ERRNO | errno.EPERM)]) for name in REFUSED]
    rules += [(nr(name), [_insn(_RET_K, _RET_ALLOW)]) for name in ALLOWED]
    block = [_insn(_LD_W_ABS, _NR_OFFSET)]
    if x32_check:
        block.append(_insn(_JGE_K, _X32_SYSCALL_BIT, jt=0, jf=1))
        block.append(_insn(_RET_K, _RET_KILL_PROCESS))
    for number, body in rules:
        if number is None:
            continue
        # Equal: fall into the body; otherwise skip it (A still holds the number).
        block.append(_insn(_JEQ_K, number, jt=0, jf=len(body)))
        block += body
    block.append(_insn(_RET_K, _RET_ERRNO | errno.ENOSYS))
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
