"""`make bench`: run the benchmarks, print one table each and a summary of ratios, write JSON."""

from __future__ import annotations

import argparse
import functools
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import browser, cost, jobqueue, latency, memory, submit, throughput
from bench.common import (
    RESULTS_DIR,
    Result,
    Size,
    Stack,
    format_table,
    machine,
    machine_line,
    render,
    utc_now,
    write_json,
)

BENCHMARKS: dict[str, Callable[[Stack, Size], Result]] = {
    latency.NAME: latency.run,
    throughput.NAME: throughput.run,
    submit.NAME: submit.run,
    jobqueue.NAME: jobqueue.run,
    browser.NAME: browser.run,
    memory.NAME: memory.run,
    cost.NAME: cost.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--size", choices=[s.value for s in Size], default=Size.FULL.value)
    parser.add_argument("--quick", action="store_true", help="same as --size tiny")
    parser.add_argument(
        "--executions",
        type=int,
        help=f"bench 6's execution count (default: {memory.EXECUTIONS[Size.FULL]:,} full, "
        f"{memory.EXECUTIONS[Size.TINY]} tiny)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where JSON results go")
    args = parser.parse_args(argv)
    size = Size.TINY if args.quick else Size(args.size)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    benchmarks = dict(BENCHMARKS)
    if args.executions:
        benchmarks[memory.NAME] = functools.partial(memory.run, executions=args.executions)

    info = machine()
    print(f"sandmesh bench, size {size.value}, on {machine_line(info)}", flush=True)
    results: list[Result] = []
    failed: list[str] = []
    stack = Stack()
    try:
        for name in names:
            date = utc_now()
            began = time.monotonic()
            try:
                result = benchmarks[name](stack, size)
            except Exception:
                # One broken benchmark must not hide the others' figures; the run still fails.
                traceback.print_exc()
                print(f"== {name}: FAILED (logs under {stack.base})", flush=True)
                failed.append(name)
                continue
            result.seconds = time.monotonic() - began
            # Load average included: on a shared machine it says how noisy the figures are.
            now = machine()
            path = write_json(result, now, date, args.out)
            print(render(result, now, date), flush=True)
            print(f"   json: {path}\n", flush=True)
            results.append(result)
    finally:
        stack.close(keep_logs=bool(failed))

    print(f"== summary ({utc_now()}, {machine_line(machine())})")
    rows: list[list[object]] = [
        [r.name, ratio.name, ratio.value, ratio.meaning] for r in results for ratio in r.ratios
    ]
    rows += [[r.name, "errors", r.errors, "must be 0"] for r in results]
    print(format_table(["benchmark", "ratio", "value", "meaning"], rows))
    # Errors are faults, not figures: the run fails on them like on a crashed benchmark.
    faulty = failed + [f"{r.name} ({r.errors} errors)" for r in results if r.errors]
    if faulty:
        print(f"failed: {', '.join(faulty)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
