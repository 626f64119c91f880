"""Run the six performance benchmarks in turn and record each in BENCHMARKS.md.

    .venv/bin/python -m benchmarks [--no-record] [ingest steady poll memory rate push]

Four to five minutes on two cores. Each benchmark runs in a process of its own, so none
inherits another's heap (or, for the memory benchmark, its peak RSS). The soak
(`benchmarks/soak.py`) is separate.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import fmt_s, print_table

ALL = ("ingest", "steady", "poll", "memory", "rate", "push")


def one(name: str, record: bool, result_file: str) -> None:
    result = importlib.import_module(f"benchmarks.{name}").run(record=record)
    Path(result_file).write_text("met" if result["ok"] else "MISSED")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--one":
        one(sys.argv[2], sys.argv[3] == "record", sys.argv[4])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "names", nargs="*", metavar="NAME", help=f"some of: {', '.join(ALL)} (default: all)"
    )
    p.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    args = p.parse_args()
    unknown = set(args.names) - set(ALL)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    summary = []
    with tempfile.TemporaryDirectory(prefix="loopsync-bench-") as tmp:
        for name in args.names or ALL:
            print(f"\n=== {name} " + "=" * 60, flush=True)
            result_file = Path(tmp) / name
            started = time.perf_counter()
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks",
                    "--one",
                    name,
                    "no-record" if args.no_record else "record",
                    str(result_file),
                ],
                check=False,
            )
            outcome = (
                result_file.read_text() if result_file.exists() else f"failed ({done.returncode})"
            )
            summary.append([name, outcome, fmt_s(time.perf_counter() - started)])
    print_table("Summary", ["benchmark", "target", "took"], summary)


if __name__ == "__main__":
    main()
