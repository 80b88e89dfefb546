"""Every language end to end through the mesh's real executor, with its real toolchain."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass

import grpc
import pytest

from sandmesh.executor.v1 import executor_pb2, executor_pb2_grpc
from tests.helpers.runner import Runner, status


@dataclass(frozen=True)
class Programs:
    echo: str  # copies stdin to stdout
    args: str  # prints each argument on its own line
    crash: str  # fails at run time, mentioning "boom" where the language has a message
    crash_signal: str  # "" when it exits with a code, else the signal that kills it
    broken: str = ""  # does not compile (compiled languages only)
    broken_mentions: str = ""  # what the compiler's message names


PROGRAMS = {
    "python3": Programs(
        echo="import sys\nsys.stdout.write(sys.stdin.read())\n",
        args="import sys\nprint('\\n'.join(sys.argv[1:]))\n",
        crash="raise ValueError('boom')\n",
        crash_signal="",
    ),
    "javascript": Programs(
        echo="process.stdout.write(require('fs').readFileSync(0));\n",
        args="process.argv.slice(2).forEach((a) => console.log(a));\n",
        crash="throw new Error('boom');\n",
        crash_signal="",
    ),
    "c": Programs(
        echo="#include <stdio.h>\nint main(void) { int c; while ((c = getchar()) != EOF)"
        " putchar(c); return 0; }\n",
        args="#include <stdio.h>\nint main(int argc, char **argv) {"
        " for (int i = 1; i < argc; i++) puts(argv[i]); return 0; }\n",
        crash="int main(void) { volatile int *p = 0; return *p; }\n",
        crash_signal="SIGSEGV",
        broken="int main(void) { return undefined_thing; }\n",
        broken_mentions="undefined_thing",
    ),
    "cpp": Programs(
        echo="#include <iostream>\nint main() { std::cout << std::cin.rdbuf(); }\n",
        args="#include <iostream>\nint main(int argc, char **argv) {"
        " for (int i = 1; i < argc; i++) std::cout << argv[i] << '\\n'; }\n",
        crash='#include <stdexcept>\nint main() { throw std::runtime_error("boom"); }\n',
        crash_signal="SIGABRT",
        broken="int main() { return nope; }\n",
        broken_mentions="nope",
    ),
    "go": Programs(
        echo='package main\n\nimport (\n\t"io"\n\t"os"\n)\n\n'
        "func main() { io.Copy(os.Stdout, os.Stdin) }\n",
        args='package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\n'
        "func main() {\n\tfor _, a := range os.Args[1:] {\n\t\tfmt.Println(a)\n\t}\n}\n",
        crash='package main\n\nfunc main() { panic("boom") }\n',
        crash_signal="",
        broken="package main\n\nfunc main() { undefinedFn() }\n",
        broken_mentions="undefinedFn",
    ),
    "java": Programs(
        echo="public class Main { public static void main(String[] a) throws Exception {"
        " System.in.transferTo(System.out); } }\n",
        args="public class Main { public static void main(String[] args) {"
        " for (String a : args) System.out.println(a); } }\n",
        crash="public class Main { public static void main(String[] a) {"
        ' throw new RuntimeException("boom"); } }\n',
        crash_signal="",
        broken="public class Main { public static void main(String[] a) { int x = } }\n",
        broken_mentions="Main.java",
    ),
    "php": Programs(
        echo="<?php echo stream_get_contents(STDIN);\n",
        args='<?php foreach (array_slice($argv, 1) as $a) { echo $a, "\\n"; }\n',
        crash="<?php throw new Exception('boom');\n",
        crash_signal="",
    ),
    "ruby": Programs(
        echo="STDOUT.write(STDIN.read)\n",
        args="ARGV.each { |a| puts a }\n",
        crash="raise 'boom'\n",
        crash_signal="",
    ),
}
COMPILED = {"c", "cpp", "go", "java"}
STDIN = "héllo\nworld\n".encode()
ARGS = ["one", "two words", "--three"]


def _toolchain_version(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return (done.stdout + done.stderr).strip().splitlines()[0]


async def test_list_languages_reports_all_eight_with_real_versions(
    executor: executor_pb2_grpc.ExecutorServiceAsyncStub,
) -> None:
    listed = await executor.ListLanguages(executor_pb2.ListLanguagesRequest(), timeout=5)
    by_id = {language.id: language for language in listed.languages}
    assert set(by_id) == set(PROGRAMS)
    assert {i for i, language in by_id.items() if language.compiled} == COMPILED
    # The versions are the installed toolchains' own, not strings from the registry.
    assert by_id["python3"].version == _toolchain_version(["/usr/bin/python3", "--version"])
    assert by_id["go"].version == _toolchain_version(["/usr/bin/go", "version"])
    assert by_id["c"].version == _toolchain_version(["/usr/bin/gcc", "--version"])
    for language in by_id.values():
        assert language.version and language.template and language.file_name, language.id
        for field in ("cpu_time_ms", "memory_mb", "max_processes", "tmp_mb"):
            default = getattr(language.default_limits, field)
            assert 0 < default <= getattr(language.max_limits, field), (language.id, field)
    # The JVM and Go get more memory than the plain default.
    assert by_id["java"].default_limits.memory_mb > by_id["python3"].default_limits.memory_mb


async def test_get_language_answers_one_or_not_found(
    executor: executor_pb2_grpc.ExecutorServiceAsyncStub,
) -> None:
    got = await executor.GetLanguage(executor_pb2.GetLanguageRequest(language_id="go"), timeout=5)
    assert got.language.id == "go" and got.language.compiled
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await executor.GetLanguage(executor_pb2.GetLanguageRequest(language_id="cobol"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("language", list(PROGRAMS))
async def test_language_runs_hello_stdin_args_and_reports_errors(
    language: str, run: Runner, executor: executor_pb2_grpc.ExecutorServiceAsyncStub
) -> None:
    programs = PROGRAMS[language]
    template = (
        await executor.GetLanguage(executor_pb2.GetLanguageRequest(language_id=language), timeout=5)
    ).language.template
    hello, echo, args, crash = await asyncio.gather(
        run(language, template),
        run(language, programs.echo, stdin=STDIN),
        run(language, programs.args, args=ARGS),
        run(language, programs.crash),
    )
    assert status(hello) == "COMPLETED", hello
    assert hello.stdout == b"Hello, world!\n"
    assert hello.exit_code == 0 and hello.error_code == ""
    assert hello.usage.wall_time_ms > 0 and hello.usage.peak_memory_bytes > 0
    assert hello.usage.bytes_written == len(hello.stdout) + len(hello.stderr)

    assert status(echo) == "COMPLETED", echo
    assert echo.stdout == STDIN

    assert status(args) == "COMPLETED", args
    assert args.stdout.decode().splitlines() == ARGS

    assert status(crash) == "FAILED", crash
    assert crash.error_code == "E002"
    if programs.crash_signal:
        assert crash.signal == programs.crash_signal
        assert not crash.HasField("exit_code")
        assert programs.crash_signal in crash.detail
    else:
        assert crash.HasField("exit_code") and crash.exit_code != 0
        assert b"boom" in crash.stdout + crash.stderr

    if language in COMPILED:
        broken = await run(language, programs.broken)
        assert status(broken) == "COMPILATION_ERROR", broken
        assert broken.error_code == "E001"
        assert programs.broken_mentions.encode() in broken.stderr + broken.stdout
        assert broken.detail.startswith("compilation failed:")
