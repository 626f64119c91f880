"""Benchmark 4, memory: peak RSS of a worker pulling 100,000 returns against one pulling
10,000.

    .venv/bin/python -m benchmarks.memory [--small N] [--large N] [--no-record]

For each size, the sandbox Loop runs in a process of its own (`benchmarks.loop_server`,
rate limit off), holding N returns updated over the last year in the five states, and a
fresh worker process pulls them: this module with `--worker`, which builds the Loop
client, the connector and a new SQLite store exactly as `runner.run_merchant` does, runs
`Engine.ingest()` (the pull: every state pass, window and page; no push, poll or act)
and then reads `resource.getrusage(RUSAGE_SELF).ru_maxrss` -- the worker's own peak
resident set, nothing subtracted. (Linux keeps the forking process's peak in a child's
ru_maxrss across exec, so the worker is started by a bare launcher process; the kernel's
VmHWM of the worker is printed beside it as a cross-check.) Its client-side limiter runs
on a FakeClock (the pull is not slowed to 280 requests a minute; benchmark 5 checks the
limits).
"""

from __future__ import annotations

import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    HISTORY_DAYS,
    NOW,
    append_row,
    build_engine,
    cli,
    close_engine,
    fmt_s,
    loop_http,
    print_table,
    quiet_logs,
    ratio,
    verdict,
    worker_config,
)
from benchmarks.loop_server import loop_server

TARGET = 1.2  # issue 11, target 2
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def worker(loop_url: str, state_dir: str) -> None:
    """The measured process: one pull, then its peak RSS on stdout as JSON."""
    from loopsync.testing import FakeClock

    quiet_logs()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    clock = FakeClock(NOW)
    cfg = worker_config(
        loop_url,
        Path(state_dir) / "memory.sqlite",
        start=clock.now() - dt.timedelta(days=HISTORY_DAYS),
    )
    engine = build_engine(cfg, clock)
    started = time.perf_counter()
    engine.ingest()
    seconds = time.perf_counter() - started
    stored = engine.store.db.execute("select count(*) from returns").fetchone()[0]
    requests = loop_http(engine).requests_sent
    close_engine(engine)
    print(
        json.dumps(
            {
                "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "vm_hwm_kib": _vm_hwm_kib(),
                "rss_before_pull_kib": before,
                "seconds": seconds,
                "stored": stored,
                "requests": requests,
                "errors": engine.counts.errors,
            }
        )
    )


def _vm_hwm_kib() -> int | None:
    """The kernel's high-water mark of this process's own memory (reset by exec), as a
    cross-check of ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def one_size(n: int) -> dict[str, Any]:
    with (
        loop_server(n, days=HISTORY_DAYS) as (url, seed_s),
        tempfile.TemporaryDirectory(prefix="loopsync-bench-") as tmp,
    ):
        # Linux carries the peak RSS of the process that forks into ru_maxrss across exec,
        # so the worker is started by a bare launcher process, not by this (bigger) one.
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                LAUNCHER,
                sys.executable,
                "-m",
                "benchmarks.memory",
                "--worker",
                url,
                tmp,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["stored"] == n and res["errors"] == 0, res
    return {"returns": n, "seed_s": seed_s, **res}


def run(small: int = 10_000, large: int = 100_000, record: bool = True) -> dict[str, Any]:
    a, z = one_size(small), one_size(large)
    r = ratio(z["peak_rss_kib"], a["peak_rss_kib"])
    ok = r <= TARGET
    print_table(
        "Memory: peak RSS of a worker process pulling every return (sandbox Loop in "
        "another process)",
        [
            "returns pulled",
            "peak RSS (ru_maxrss)",
            "VmHWM (cross-check)",
            "ru_maxrss before the pull",
            "pull time",
            "requests",
        ],
        [
            [
                f"{x['returns']:,}",
                f"{x['peak_rss_kib'] / 1024:.1f} MiB",
                f"{x['vm_hwm_kib'] / 1024:.1f} MiB" if x.get("vm_hwm_kib") else "-",
                f"{x['rss_before_pull_kib'] / 1024:.1f} MiB",
                fmt_s(x["seconds"]),
                x["requests"],
            ]
            for x in (a, z)
        ],
    )
    print(f"peak RSS {large:,} / {small:,} = {r:.2f}x (target <= {TARGET}x: {verdict(ok)})")
    if record:
        append_row(
            "memory",
            [
                f"{a['peak_rss_kib'] / 1024:.1f} MiB",
                f"{z['peak_rss_kib'] / 1024:.1f} MiB",
                f"{r:.2f}x",
                verdict(ok),
            ],
        )
    return {"small": a, "large": z, "ratio": r, "ok": ok}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
        return
    cli(__doc__, run, small=10_000, large=100_000)


if __name__ == "__main__":
    main()
