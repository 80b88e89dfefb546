"""`sandmesh`: run a program through the gateway, and operate the database."""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import sys
from pathlib import Path
from typing import BinaryIO

import grpc

from sandmesh import client
from sandmesh.execution.v1 import execution_pb2
from sandmesh.gateway.v1 import gateway_pb2, gateway_pb2_grpc

DEFAULT_GATEWAY = "127.0.0.1:50051"


async def _language_for(sdk: client.AsyncClient, path: Path, given: str | None) -> str:
    """`given`, or the language whose file name ends like `path` (from ListLanguages)."""
    if given:
        return given
    by_suffix = {
        Path(language.file_name).suffix: language.id
        for language in sorted(await sdk.languages(), key=lambda language: language.id)
    }
    language = by_suffix.get(path.suffix)
    if language is None:
        known = " ".join(sorted(by_suffix))
        raise SystemExit(
            f"sandmesh: cannot tell the language of {path} (known: {known}); pass --language"
        )
    return language


def _piped() -> bool:
    """Whether standard input is a pipe or a file (not a terminal, not /dev/null)."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _request(args: argparse.Namespace) -> execution_pb2.ExecutionRequest:
    """The request without its language, which may need the gateway to tell."""
    path = Path(args.file)
    try:
        source = path.read_text()
        if args.stdin == "-" or (args.stdin is None and _piped()):
            stdin = sys.stdin.buffer.read()
        else:
            stdin = Path(args.stdin).read_bytes() if args.stdin else b""
    except OSError as exc:
        raise SystemExit(f"sandmesh: cannot read {exc.filename}: {exc.strerror}") from None
    return execution_pb2.ExecutionRequest(
        source=source, stdin=stdin, args=args.args, limits=_limits(args.limit)
    )


def _limits(pairs: list[str]) -> execution_pb2.Limits:
    """`--limit NAME=VALUE` options as Limits; the gateway checks the values' bounds."""
    fields = [f.name for f in execution_pb2.Limits.DESCRIPTOR.fields]
    limits = execution_pb2.Limits()
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in fields or not value.isdigit():
            raise SystemExit(
                f"sandmesh: --limit takes NAME=VALUE with NAME one of {', '.join(fields)}"
                f" and VALUE a whole number, got {pair!r}"
            )
        setattr(limits, name, int(value))
    return limits


def _out(stream: execution_pb2.OutputStream.ValueType) -> BinaryIO:
    return sys.stderr.buffer if stream == execution_pb2.OUTPUT_STREAM_STDERR else sys.stdout.buffer


class _Output:
    """Writes the program's output as it comes, each byte once and in order, then what the
    live stream did not carry (a lost chunk, or a run's output beyond the inline cap)."""

    # Bytes asked of ReadOutput per call, so a large output is never held whole.
    READ_BYTES = 1024 * 1024

    def __init__(self) -> None:
        self.written = {
            execution_pb2.OUTPUT_STREAM_STDOUT: 0,
            execution_pb2.OUTPUT_STREAM_STDERR: 0,
        }
        self.gapped: set[int] = set()

    def chunk(self, chunk: execution_pb2.OutputChunk) -> None:
        stream = chunk.stream
        if stream not in self.written or stream in self.gapped:
            return
        if chunk.offset > self.written[stream]:
            # A chunk was lost: the rest of this stream is read once the run is over.
            self.gapped.add(stream)
            return
        self._write(stream, chunk.data[self.written[stream] - chunk.offset :])

    def _write(self, stream: execution_pb2.OutputStream.ValueType, data: bytes) -> None:
        out = _out(stream)
        out.write(data)
        out.flush()
        self.written[stream] += len(data)

    async def rest(
        self, sdk: client.AsyncClient, execution_id: str, result: execution_pb2.ExecutionResult
    ) -> None:
        for stream, field in (
            (execution_pb2.OUTPUT_STREAM_STDOUT, "stdout"),
            (execution_pb2.OUTPUT_STREAM_STDERR, "stderr"),
        ):
            inline: bytes = getattr(result, field)
            size = max(getattr(result, f"{field}_size"), len(inline))
            if self.written[stream] < len(inline):
                self._write(stream, inline[self.written[stream] :])
            while self.written[stream] < size:
                data = await sdk.read_output(
                    execution_id, stream, offset=self.written[stream], limit=self.READ_BYTES
                )
                if not data:
                    raise client.StreamEnded(f"the {field} of {execution_id} ended early")
                self._write(stream, data)


def _print_status(change: execution_pb2.StatusChange) -> None:
    """Progress on stderr, so stdout stays the program's own."""
    if change.status == execution_pb2.EXECUTION_STATUS_QUEUED:
        ahead = change.queue_position
        print(f"sandmesh: queued, {ahead} ahead" if ahead else "sandmesh: queued", file=sys.stderr)
    elif change.status == execution_pb2.EXECUTION_STATUS_RUNNING:
        print("sandmesh: running", file=sys.stderr)
    sys.stderr.flush()


async def _run(args: argparse.Namespace, request: execution_pb2.ExecutionRequest) -> int:
    show_progress = args.progress or (args.progress is None and sys.stderr.isatty())
    output = _Output()
    async with client.AsyncClient(args.gateway, args.api_key, timeout=args.timeout) as sdk:
        try:
            deadline = client.Deadline(args.timeout)
            request.language = await _language_for(
                sdk,
                Path(args.file),
                args.language,
            )
            execution = await sdk.submit(request, timeout=deadline.remaining())
            if show_progress:
                _print_status(client.queued(execution))
            result = None
            async for event in sdk.watch(execution.id, timeout=deadline.remaining()):
                if event.HasField("output"):
                    output.chunk(event.output)
                elif event.HasField("status") and show_progress:
                    _print_status(event.status)
                elif event.HasField("result"):
                    result = event.result
            if result is None:
                raise client.StreamEnded(f"the watch of {execution.id} ended without a result")
            await output.rest(sdk, execution.id, result)
        except grpc.aio.AioRpcError as error:
            print(f"sandmesh: {error.code().name}: {error.details()}", file=sys.stderr)
            return 2
        except client.StreamEnded as exc:
            print(f"sandmesh: {exc}", file=sys.stderr)
            return 2
    if result.status != execution_pb2.EXECUTION_STATUS_COMPLETED:
        print(f"sandmesh: {client.status_name(result.status)}: {result.detail}", file=sys.stderr)
    if result.HasField("exit_code"):
        return result.exit_code
    return 1


async def _migrate(args: argparse.Namespace) -> int:
    from sandmesh_db import migrate

    url = database_url(args)
    if args.direction == "up":
        ran = await migrate.up(url)
    elif args.direction == "down":
        ran = await migrate.down(url, args.steps)
    else:
        for entry in await migrate.status(url):
            mark = "applied" if entry.applied else "pending"
            print(f"{entry.version:04d}_{entry.name}\t{mark}")
        return 0
    for name in ran:
        print(f"{args.direction} {name}")
    if not ran:
        print("nothing to do")
    return 0


async def _dead_letters(args: argparse.Namespace) -> int:
    async with client.connect(args.gateway, args.api_key) as channel:
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        try:
            if args.action == "list":
                listing = await gateway.ListDeadLetters(
                    gateway_pb2.ListDeadLettersRequest(page_size=args.limit), timeout=10
                )
                for letter in listing.dead_letters:
                    when = letter.created_at.ToDatetime().isoformat(timespec="seconds")
                    print(
                        f"{letter.id}\t{letter.execution_id}\t{when}\t"
                        f"{letter.deliveries} deliveries\t{letter.reason}"
                    )
                if not listing.dead_letters:
                    print("no dead letters")
                return 0
            replay = await gateway.ReplayDeadLetter(
                gateway_pb2.ReplayDeadLetterRequest(dead_letter_id=args.id), timeout=10
            )
            print(f"replayed as execution {replay.execution.id}")
            return 0
        except grpc.aio.AioRpcError as error:
            print(f"sandmesh: {error.code().name}: {error.details()}", file=sys.stderr)
            return 2


def add_gateway_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gateway",
        default=os.environ.get("SANDMESH_GATEWAY", DEFAULT_GATEWAY),
        help="gateway host:port (default: $SANDMESH_GATEWAY or 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("SANDMESH_API_KEY"),
        help="API key (default: $SANDMESH_API_KEY)",
    )


def add_database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="default: $DATABASE_URL")


def database_url(args: argparse.Namespace) -> str:
    url: str | None = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("sandmesh: set DATABASE_URL or pass --database-url")
    return url


async def _tenants(args: argparse.Namespace) -> int:
    from psycopg_pool import AsyncConnectionPool

    from sandmesh_db.tenants import TenantStore

    async with AsyncConnectionPool(database_url(args), min_size=1, max_size=1) as pool:
        store = TenantStore(pool)
        try:
            if args.area == "tenant":
                await store.create_tenant(args.name, args.tier)
                print(f"tenant {args.name} ({args.tier})")
            elif args.area == "key" and args.action == "create":
                key_id, key = await store.create_key(args.tenant)
                print(
                    f"key id {key_id}\nkey    {key}\n(the key is shown once; only its hash is kept)"
                )
            elif args.area == "key":
                if not await store.revoke_key(args.key_id):
                    print(f"sandmesh: no active key {args.key_id}", file=sys.stderr)
                    return 2
                print(f"revoked {args.key_id}")
            else:
                for entry in await store.audit_entries(args.tenant, args.limit):
                    when = entry.time.isoformat(timespec="seconds")
                    print(
                        f"{when}\t{entry.tenant}\t{entry.key_id or '-'}\t{entry.method}"
                        f"\t{entry.target_id or '-'}\t{entry.code}"
                    )
        except (LookupError, ValueError) as exc:
            print(f"sandmesh: {exc}", file=sys.stderr)
            return 2
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sandmesh", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a program and print its output")
    run.add_argument("file")
    run.add_argument("args", nargs="*", help="command-line arguments for the program")
    run.add_argument("--language", help="language id (default: from the file suffix)")
    run.add_argument(
        "--stdin",
        help="file to feed to the program's standard input; '-' reads ours"
        " (default: ours when it is a pipe or a file)",
    )
    run.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a limit of the run, e.g. output_bytes=8388608 (repeatable; default: the language's)",
    )
    add_gateway_option(run)
    run.add_argument("--timeout", type=float, default=120.0, help="seconds to wait in all")
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show queue and run progress on stderr (default: when stderr is a terminal)",
    )

    migrate = commands.add_parser("migrate", help="apply or revert database migrations")
    migrate.add_argument("direction", choices=["up", "down", "status"])
    migrate.add_argument("--steps", type=int, default=1, help="how many to revert with down")
    add_database_option(migrate)

    admin = commands.add_parser("admin", help="operate the mesh")
    areas = admin.add_subparsers(dest="area", required=True)
    tenant = areas.add_parser("tenant", help="create a tenant or change its tier")
    tenant.add_argument("action", choices=["create"])
    tenant.add_argument("name")
    tenant.add_argument("--tier", choices=["free", "pro"], default="free")
    add_database_option(tenant)
    key = areas.add_parser("key", help="API keys: create one for a tenant, or revoke one")
    key_actions = key.add_subparsers(dest="action", required=True)
    key_create = key_actions.add_parser("create")
    key_create.add_argument("tenant")
    add_database_option(key_create)
    key_revoke = key_actions.add_parser("revoke")
    key_revoke.add_argument("key_id")
    add_database_option(key_revoke)
    audit = areas.add_parser("audit", help="the newest mutating calls, newest first")
    audit.add_argument("--tenant")
    audit.add_argument("--limit", type=int, default=50)
    add_database_option(audit)
    dlq = areas.add_parser("dlq", help="dead letters: jobs no executor could finish")
    actions = dlq.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="list dead letters, newest first")
    listing.add_argument("--limit", type=int, default=50)
    add_gateway_option(listing)
    replay = actions.add_parser("replay", help="run a dead-lettered execution again")
    replay.add_argument("id", help="dead letter id (from `list`)")
    add_gateway_option(replay)

    args = parser.parse_args(argv)
    if args.command == "run":
        sys.exit(asyncio.run(_run(args, _request(args))))
    if args.command == "admin":
        handler = _dead_letters if args.area == "dlq" else _tenants
        sys.exit(asyncio.run(handler(args)))
    sys.exit(asyncio.run(_migrate(args)))


if __name__ == "__main__":
    main()
