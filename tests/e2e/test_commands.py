"""The user's commands: `sandmesh run FILE` and `make up` (its devstack entry point)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sandmesh_devstack.mesh import Mesh, health_status
from sandmesh_devstack.ports import free_port
from services.browser_pool import procs
from tests.helpers.cli import SANDMESH, sandmesh
from tests.helpers.servers import Servers


def at(mesh: Mesh, servers: Servers) -> tuple[str, ...]:
    """The CLI options that reach the session mesh's gateway as tenant "default"."""
    return ("--gateway", mesh.services["gateway"].target, "--api-key", servers.api_key)


def test_sandmesh_run_prints_output_and_exits_with_the_program_code(
    mesh: Mesh, servers: Servers, tmp_path: Path
) -> None:
    program = tmp_path / "greet.py"
    program.write_text(
        "import sys\nprint('out line')\nprint('err line', file=sys.stderr)\nsys.exit(4)\n"
    )
    done = sandmesh("run", str(program), *at(mesh, servers))
    assert done.stdout == b"out line\n"
    assert done.stderr.startswith(b"err line\n")
    assert done.returncode == 4


def test_sandmesh_run_passes_arguments_and_stdin(
    mesh: Mesh, servers: Servers, tmp_path: Path
) -> None:
    program = tmp_path / "echo.py"
    program.write_text("import sys\nprint(sys.argv[1:], sys.stdin.read().upper())\n")
    feed = tmp_path / "in.txt"
    feed.write_text("abc")
    done = sandmesh("run", str(program), "x", "y", "--stdin", str(feed), *at(mesh, servers))
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"['x', 'y'] ABC\n"


HELLO_BY_FILE = {
    "hello.js": "console.log('hello from js')",
    "hello.rb": "puts 'hello from rb'",
    "hello.c": '#include <stdio.h>\nint main(void) { puts("hello from c"); return 0; }',
    "Main.java": "public class Main { public static void main(String[] a) {"
    ' System.out.println("hello from java"); } }',
}


def test_sandmesh_run_tells_every_language_by_its_file_name(
    mesh: Mesh, servers: Servers, tmp_path: Path
) -> None:
    for name, source in HELLO_BY_FILE.items():
        program = tmp_path / name
        program.write_text(source)
        done = sandmesh("run", str(program), *at(mesh, servers))
        assert done.returncode == 0, (name, done.stderr)
        suffix = "java" if name.endswith(".java") else name.rsplit(".", 1)[1]
        assert done.stdout == f"hello from {suffix}\n".encode(), name
    unknown = tmp_path / "notes.txt"
    unknown.write_text("hi")
    refused = sandmesh("run", str(unknown), *at(mesh, servers))
    assert refused.returncode != 0
    assert b"cannot tell the language" in refused.stderr and b".py" in refused.stderr


def test_sandmesh_run_reads_a_pipe_and_stdin_dash(
    mesh: Mesh, servers: Servers, tmp_path: Path
) -> None:
    program = tmp_path / "double.py"
    program.write_text("print(int(input()) * 2)\n")
    piped = sandmesh("run", str(program), *at(mesh, servers), input=b"21\n")
    assert (piped.returncode, piped.stdout) == (0, b"42\n"), piped.stderr
    dash = sandmesh("run", str(program), "--stdin", "-", *at(mesh, servers), input=b"5\n")
    assert (dash.returncode, dash.stdout) == (0, b"10\n"), dash.stderr


def test_sandmesh_run_on_a_missing_file_says_so(tmp_path: Path) -> None:
    done = sandmesh("run", str(tmp_path / "nope.py"), timeout=30)
    assert done.returncode != 0
    assert b"cannot read" in done.stderr and b"nope.py" in done.stderr


def test_make_up_entry_point_starts_everything_and_prints_the_smoke_output(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    for variable in (
        "SANDMESH_GATEWAY_PORT",
        "SANDMESH_SCHEDULER_PORT",
        "SANDMESH_EXECUTOR_PORT",
        "SANDMESH_BROWSER_POOL_PORT",
    ):
        env[variable] = str(free_port())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sandmesh_devstack",
            "up",
            "--exit-after-smoke",
            "--dir",
            str(tmp_path / "devstack"),
        ],
        capture_output=True,
        env=env,
        timeout=180,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hello from sandmesh on 3." in done.stdout
    assert "all four services are ready" in done.stdout
    assert "gateway exit 0" in done.stdout


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in procs.all_procs():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def test_supervisor_restarts_a_service_that_dies_and_nothing_of_it_lingers(mesh: Mesh) -> None:
    service = mesh.services["browser-pool"]
    assert service.process is not None
    chromium = {pid for pid in descendants(service.process.pid) if "chromium" in procs.cmdline(pid)}
    assert chromium, "the pool runs a browser while ready"
    # SIGKILL: the pool gets no chance to close its browsers itself.
    service.process.kill()
    service.process.wait(10)

    def alive() -> list[procs.Proc]:
        return [p for pid in chromium if (p := procs.read_proc(pid)) is not None and p.state != "Z"]

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and alive():
        time.sleep(0.1)
    assert not alive(), alive()
    restarted = mesh.restart_dead()
    assert restarted == [("browser-pool", -9)]
    mesh.wait_ready(30)
    assert health_status(service.target, "readiness") == "SERVING"


def test_sandmesh_run_streams_output_while_the_program_runs_with_progress(
    mesh: Mesh, servers: Servers, tmp_path: Path
) -> None:
    program = tmp_path / "slow.py"
    program.write_text("import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second')\n")
    started = time.monotonic()
    process = subprocess.Popen(
        [SANDMESH, "run", str(program), "--progress", *at(mesh, servers)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    first_at = time.monotonic() - started
    rest, progress = process.communicate(timeout=60)
    ended_at = time.monotonic() - started
    assert (first, rest) == (b"first\n", b"second\n")
    assert ended_at - first_at > 1.5, "the first line must arrive while the program still runs"
    assert process.returncode == 0
    assert progress.startswith(b"sandmesh: queued"), progress
    assert b"sandmesh: running" in progress
