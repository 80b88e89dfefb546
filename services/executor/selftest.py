"""The start-up self-test: a real program in the sandbox checks each layer from inside."""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.executor.sandbox import (
    SandboxLimits,
    Verdict,
    run_in_sandbox,
    sandbox_layers,
    seccomp,
)

LIMITS = SandboxLimits(
    wall_time_s=10,
    cpu_time_s=5,
    memory_bytes=256 << 20,
    max_processes=16,
    output_bytes=16384,
    file_size_bytes=4096,
    tmp_bytes=1 << 20,
)

# Each check is True when the layer holds, as seen by the sandboxed program.
PROBE = r"""
import ctypes, errno, json, os, socket
def denied(fn):
    try:
        fn()
    except OSError:
        return True
    return False
libc = ctypes.CDLL(None, use_errno=True)
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines()
              if ":\t" in line)
print(json.dumps({
    "user_namespace": os.getuid() == 65534 and "0" not in status["CapEff"].strip("0"),
    "pid_namespace": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[0] == 1
        and max(int(p) for p in os.listdir("/proc") if p.isdigit()) < 16,
    "net_namespace": [name for _, name in socket.if_nameindex()] == ["lo"],
    "uts_namespace": socket.gethostname() == "sandbox",
    "ipc_namespace": open("/proc/sysvipc/shm").read().count("\n") <= 1,
    "read_only_root": denied(lambda: open("/usr/sandmesh-probe", "w"))
        and denied(lambda: open("/etc/sandmesh-probe", "w")),
    "private_tmp": open("/tmp/probe", "w").write("x") == 1,
    "no_host_secrets": not os.path.exists("/etc/shadow"),
    "clean_environment": set(os.environ) <= {"PATH", "HOME", "LANG", "PWD"},
    "seccomp_enforced": status["Seccomp"].strip() == "2"
        and libc.ptrace(0, 1, 0, 0) == -1 and ctypes.get_errno() == errno.EPERM,
}))
"""


@dataclass(frozen=True)
class Layer:
    name: str
    active: bool
    detail: str


async def run() -> tuple[list[Layer], str | None]:
    """Every layer with whether it is active, and why readiness must fail (None: it passes)."""
    host = sandbox_layers()
    layers = [Layer(name, active, "checked on the host") for name, active in host.items()]
    outcome = await run_in_sandbox(
        ["/usr/bin/python3", "-I", "probe.py"], {"probe.py": PROBE.encode()}, b"", LIMITS
    )
    if outcome.verdict is not Verdict.COMPLETED:
        return layers, f"sandbox self-test failed: {outcome.verdict.value} {outcome.detail}"
    try:
        inside: dict[str, bool] = json.loads(outcome.stdout)
    except ValueError:
        return layers, f"sandbox self-test printed {outcome.stdout[:200]!r}"
    layers += [Layer(name, bool(ok), "checked inside the sandbox") for name, ok in inside.items()]
    # Everything the sandbox itself provides must hold; cgroups may legitimately be missing
    # (rlimits then carry the load, and the status says so).
    broken = [name for name, ok in inside.items() if not ok]
    if not seccomp.supported():
        # An architecture the filter has no syscall table for runs without it, and says so.
        broken = [name for name in broken if name != "seccomp_enforced"]
    if broken or not host["bwrap"]:
        return layers, f"sandbox layers not active: {broken or ['bwrap']}"
    return layers, None
