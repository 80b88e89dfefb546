"""Programs that flood their output, one per language: lines of 999 'x' and a newline, on
stdout (and on stderr too with `both`), until the sandbox stops them."""

from __future__ import annotations

LINE = b"x" * 999 + b"\n"
_MIB = 1024 * 1024

_FLOODS = {
    "python3": (
        "import sys\nline = b'x' * 999 + b'\\n'\nwhile True:\n"
        "    sys.stdout.buffer.write(line)\n    {err}\n",
        "sys.stderr.buffer.write(line)",
    ),
    "javascript": (
        "const fs = require('fs');\nconst line = 'x'.repeat(999) + '\\n';\n"
        "for (;;) { fs.writeSync(1, line); {err} }\n",
        "fs.writeSync(2, line);",
    ),
    "c": (
        "#include <stdio.h>\nint main(void) {\n  char line[1001];\n"
        "  for (int i = 0; i < 999; i++) line[i] = 'x';\n  line[999] = '\\n'; line[1000] = 0;\n"
        "  for (;;) { fputs(line, stdout); {err} }\n}\n",
        "fputs(line, stderr);",
    ),
    "cpp": (
        "#include <cstdio>\n#include <string>\nint main() {\n"
        "  std::string line(999, 'x'); line += '\\n';\n"
        "  for (;;) { std::fputs(line.c_str(), stdout); {err} }\n}\n",
        "std::fputs(line.c_str(), stderr);",
    ),
    "go": (
        'package main\n\nimport (\n\t"os"\n\t"strings"\n)\n\nfunc main() {\n'
        '\tline := strings.Repeat("x", 999) + "\\n"\n'
        "\tfor {\n\t\tos.Stdout.WriteString(line)\n\t\t{err}\n\t}\n}\n",
        "os.Stderr.WriteString(line)",
    ),
    "java": (
        "public class Main {\n  public static void main(String[] args) {\n"
        '    byte[] line = ("x".repeat(999) + "\\n").getBytes();\n'
        "    for (;;) { System.out.write(line, 0, line.length); {err} }\n  }\n}\n",
        "System.err.write(line, 0, line.length);",
    ),
    "php": (
        "<?php\n$line = str_repeat('x', 999) . \"\\n\";\n"
        "for (;;) { fwrite(STDOUT, $line); {err} }\n",
        "fwrite(STDERR, $line);",
    ),
    "ruby": (
        "line = 'x' * 999 + \"\\n\"\nloop do\n  $stdout.write(line)\n  {err}\nend\n",
        "$stderr.write(line)",
    ),
}

LANGUAGES = tuple(_FLOODS)


def flood(language: str, both: bool = False) -> str:
    """A program in `language` that writes LINE to stdout forever (and to stderr with `both`)."""
    template, err = _FLOODS[language]
    return template.replace("{err}", err if both else "")


def expected(size: int) -> bytes:
    """The first `size` bytes a flood writes on one stream."""
    return (LINE * (size // len(LINE) + 1))[:size]


# 8 MiB on stdout as one line (no newline until the end) with invalid UTF-8 and NUL bytes,
# and 8 MiB of other bytes on stderr: 16 MiB in all, inside the largest limits, not cut.
SIXTEEN_MIB = (
    "import sys\n"
    "line = bytes(range(256)) * (8 * 1024 * 1024 // 256 - 1) + b'\\xff\\xfe\\x00' * 85 + b'\\n'\n"
    "sys.stdout.buffer.write(line[: 8 * 1024 * 1024])\n"
    "sys.stderr.buffer.write(bytes(reversed(range(256))) * (8 * 1024 * 1024 // 256))\n"
)
SIXTEEN_MIB_STDOUT = (bytes(range(256)) * (8 * _MIB // 256 - 1) + b"\xff\xfe\x00" * 85 + b"\n")[
    : 8 * _MIB
]
SIXTEEN_MIB_STDERR = bytes(reversed(range(256))) * (8 * _MIB // 256)
