"""The example Node.js client (`clients/node/run.js`) against the running mesh, and buf.gen.yaml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandmesh_devstack.mesh import Mesh
from tests.helpers.floods import SIXTEEN_MIB, SIXTEEN_MIB_STDERR, SIXTEEN_MIB_STDOUT
from tests.helpers.servers import Servers

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "clients" / "node"
BUF = str(Path(sys.executable).parent / "buf")


@pytest.fixture(scope="session")
def node_client() -> Path:
    """`clients/node/run.js` with its dependencies installed.

    `make test` runs on a fresh machine, where clients/node/node_modules does not exist yet,
    so the test installs the locked dependencies itself (`npm ci`, from package-lock.json,
    the npm registry must be reachable). Later runs reuse node_modules.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for clients/node (Debian packages nodejs and npm)")
    if not (NODE_CLIENT / "node_modules" / ".package-lock.json").exists():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_CLIENT,
            capture_output=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
    return NODE_CLIENT / "run.js"


def run_node(run_js: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("SANDMESH_")}
    return subprocess.run(
        ["node", str(run_js), *args], capture_output=True, timeout=60, env=env, cwd=ROOT
    )


def test_node_client_streams_output_and_exits_with_the_program_code(
    node_client: Path, mesh: Mesh, servers: Servers, tmp_path: Path
) -> None:
    program = tmp_path / "greet.py"
    program.write_text(
        "import sys\n"
        "print('out line', flush=True)\n"
        "print('err line', file=sys.stderr, flush=True)\n"
        "sys.exit(3)\n"
    )
    done = run_node(
        node_client,
        "--gateway",
        mesh.services["gateway"].target,
        "--api-key",
        servers.api_key,
        str(program),
    )
    assert done.stdout == b"out line\n", done.stderr
    # The program's stderr, then the client's one-line verdict (as `sandmesh run` prints it).
    assert done.stderr.startswith(b"err line\n"), done.stderr
    assert b"sandmesh: FAILED" in done.stderr
    assert done.returncode == 3


def test_node_client_prints_output_while_the_program_runs(
    node_client: Path, mesh: Mesh, servers: Servers, tmp_path: Path
) -> None:
    program = tmp_path / "slow.py"
    program.write_text(
        "import time\nprint('first', flush=True)\ntime.sleep(3)\nprint('second', flush=True)\n"
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith("SANDMESH_")}
    with subprocess.Popen(
        [
            "node",
            str(node_client),
            "--gateway",
            mesh.services["gateway"].target,
            "--api-key",
            servers.api_key,
            str(program),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as process:
        assert process.stdout is not None
        first = process.stdout.readline()
        seen_at = time.monotonic()
        rest, errors = process.communicate(timeout=60)
        ended_at = time.monotonic()
    assert first == b"first\n", errors
    assert rest == b"second\n", errors
    assert process.returncode == 0, errors
    assert ended_at - seen_at > 1.5  # the first line came live, not with the result


def test_node_client_passes_arguments_and_stdin(
    node_client: Path, mesh: Mesh, servers: Servers, tmp_path: Path
) -> None:
    program = tmp_path / "echo.py"
    program.write_text("import sys\nprint(sys.argv[1:], sys.stdin.read().upper())\n")
    feed = tmp_path / "in.txt"
    feed.write_text("abc")
    done = run_node(
        node_client,
        "--gateway",
        mesh.services["gateway"].target,
        "--api-key",
        servers.api_key,
        "--stdin",
        str(feed),
        str(program),
        "x",
        "y",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"['x', 'y'] ABC\n"
    assert done.stderr == b""


def test_node_client_without_a_key_is_unauthenticated(
    node_client: Path, mesh: Mesh, tmp_path: Path
) -> None:
    program = tmp_path / "hello.py"
    program.write_text("print('never runs')\n")
    done = run_node(node_client, "--gateway", mesh.services["gateway"].target, str(program))
    assert done.returncode != 0
    assert done.stdout == b""
    assert b"UNAUTHENTICATED" in done.stderr, done.stderr


def test_node_client_with_a_bad_key_is_unauthenticated(
    node_client: Path, mesh: Mesh, tmp_path: Path
) -> None:
    program = tmp_path / "hello.py"
    program.write_text("print('never runs')\n")
    done = run_node(
        node_client,
        "--gateway",
        mesh.services["gateway"].target,
        "--api-key",
        "smk_not_a_key",
        str(program),
    )
    assert done.returncode != 0
    assert b"UNAUTHENTICATED" in done.stderr, done.stderr


def test_buf_gen_yaml_is_a_valid_template(tmp_path: Path) -> None:
    """buf decodes and checks the template (fields, plugin refs, managed-mode options) before
    it contacts the BSR, so offline the only acceptable failure is reaching buf.build."""
    done = subprocess.run(
        [BUF, "generate", "--template", "buf.gen.yaml", "-o", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    if done.returncode == 0:  # online: the remote plugins ran
        assert (tmp_path / "gen" / "go" / "sandmesh" / "gateway" / "v1").is_dir()
        assert (tmp_path / "gen" / "ts" / "sandmesh" / "gateway" / "v1").is_dir()
        return
    error = done.stderr.decode(errors="replace")
    assert "decode config" not in error, error
    assert "remote is unavailable" in error, error  # offline: could not reach buf.build


def test_node_client_writes_sixteen_mib_of_output_byte_for_byte(
    node_client: Path, mesh: Mesh, servers: Servers, tmp_path: Path
) -> None:
    program = tmp_path / "sixteen.py"
    program.write_text(SIXTEEN_MIB)
    done = run_node(
        node_client,
        "--gateway",
        mesh.services["gateway"].target,
        "--api-key",
        servers.api_key,
        "--limit",
        "output_bytes=8388608",
        str(program),
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout == SIXTEEN_MIB_STDOUT
    assert done.stderr == SIXTEEN_MIB_STDERR
