"""Runs untrusted programs in bubblewrap sandboxes and reports how each went.

Layers, outermost first:

* bwrap namespaces (user, pid, net, ipc, uts, cgroup), a read-only root with
  only system directories, private size-capped tmpfs for /work, /tmp and
  /dev/shm, a clean environment and uid 65534 inside (``bwrap``);
* when the executor runs as root, bwrap itself is started under a random
  unprivileged host uid, so the sandbox is not host root in disguise and
  RLIMIT_NPROC counts only this run's tasks (``launch``);
* a per-run cgroup (``cgroups``): memory limit with reliable OOM detection,
  task limit, CPU share, CPU accounting and kill-all;
* rlimits set before bwrap is exec'd (``prlimit``, then ``setpriv`` for the uid);
* a seccomp allow-list (``seccomp``) loaded by bwrap right before it execs the
  sandbox's init (``init.c``), which runs the program and whose exit status is
  the verdict's;
* when the run ends, everything left in its cgroup (or with its uid) is killed
  (``supervise``).

The modules: ``outcome`` (verdicts, outcomes and the judge), ``launch`` (rlimits, uids, the
command chain that becomes bwrap), ``supervise`` (output, limits, clean-up), ``procfs``
(/proc fallbacks), ``probe`` (the layers for the health check), ``run`` (one cold run) and
``warm`` (pre-started sandboxes).  What the rest of the executor uses is exported here.
"""

from services.executor.sandbox.launch import SandboxOptions
from services.executor.sandbox.limits import SandboxLimits
from services.executor.sandbox.outcome import OutputSink, RunOutcome, Verdict
from services.executor.sandbox.probe import sandbox_layers
from services.executor.sandbox.run import run_in_sandbox
from services.executor.sandbox.warm import WarmPools

__all__ = [
    "OutputSink",
    "RunOutcome",
    "SandboxLimits",
    "SandboxOptions",
    "Verdict",
    "WarmPools",
    "run_in_sandbox",
    "sandbox_layers",
]
