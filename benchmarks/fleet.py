"""Benchmark 8, the fleet: 50, 200 and 500 merchants in one `serve` process.

    .venv/bin/python -m benchmarks.fleet [--sizes 50,200,500] [--interval 30]
                                         [--steady 2] [--workers N] [--no-record]

For each size, one sandbox (emulated Loop + the generic 3PL over HTTP, real clock, in this
process) serves every merchant: each has a Loop key of its own (`Sandbox.fleet_key`, so
the emulator's per-key rate limit of 300 a minute applies to each, as Loop's would), and
they share the shop's data and the warehouse account (its limits off: in production each
merchant has its own). The merchants are idle: no return arrives, so a cycle is the
steady poll of an up-to-date merchant (Loop's passes, the warehouse's receipts, the state
file opened and closed), the cost a fleet pays for existing. One `loopsync serve` child
process (JSON logs at info) runs them all on `--interval` seconds, with the default pool
unless `--workers`.

Measured from the outside, on the child only:
- peak RSS (VmHWM) and threads (sampled once a second from /proc) over the whole run;
- CPU (utime + stime) per merchant-cycle, over the steady window: from one interval after
  the last first cycle was due (the stagger's ramp is at most one interval) for `--steady`
  intervals, divided by the cycles started in it (the runner's `cycle.start` lines);
  "of due" compares those cycles with one a merchant an interval (about 95 % is on time:
  the scheduler's jitter, up to a tenth of the interval, lengthens each interval);
- lateness: `late_s` of every `serve.cycle_started` line (how long after it was due a cycle
  got a worker, scheduling.Pool), first cycles included; p50, p99 and max;
- start-up: from the process's start to its `serve.start` line (every configuration read);
  the warm-up counts from there;
- then SIGTERM: the exit status must be 0 and the drain prompt.

Targets (issue 12): RSS grows by at most 1 MiB per idle merchant (the slope of peak RSS
between the smallest and the largest size), and no cycle starts later than 10 % of its
interval at 500 merchants on 2 cores. The sandbox shares the machine's cores with the
child (a real Loop does not), so the lateness here is pessimistic.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import append_row, print_table, verdict
from loopsync.sandbox import Sandbox
from loopsync.timeutil import SystemClock

SIZES = (50, 200, 500)
RSS_TARGET_MIB = 1.0  # per idle merchant
LATE_TARGET = 0.10  # of the interval
TICK = os.sysconf("SC_CLK_TCK")
SERVE = "-m loopsync --log-format json --log-level info serve -c"  # info: cycle_started


@dataclass
class Sample:
    """What /proc says of the child at one moment."""

    cpu_s: float
    rss_kib: int
    hwm_kib: int
    threads: int


def sample(pid: int) -> Sample | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return Sample(
        cpu,
        int(values["VmRSS"].split()[0]),
        int(values["VmHWM"].split()[0]),
        int(values["Threads"]),
    )


@dataclass
class Watch:
    """Samples the child once a second until stopped."""

    pid: int
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            got = sample(self.pid)
            if got is None:
                return
            self.samples.append(got)
            self.stop.wait(1.0)


def events(log: Path, start: int = 0, end: int | None = None) -> list[dict[str, object]]:
    data = log.read_bytes()[start:end]
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Result:
    merchants: int
    workers: str
    peak_rss_mib: float
    threads: int
    cpu_ms_per_cycle: float
    cycles: int
    late_p50: float
    late_p99: float
    late_max: float
    late_warnings: int
    failed: int
    exit_code: int | None
    drain_s: float
    startup_s: float = 0.0


def write_configs(sb: Sandbox, root: Path, n: int, interval: int) -> Path:
    conf = root / "conf"
    for i in range(n):
        merchant = f"m{i:04d}"
        sb.write_config(
            conf,
            merchant=merchant,
            state_path=str(root / "state" / f"{merchant}.sqlite"),
            every=f"{interval}s",
            start_days=1,
            loop_key_env=sb.fleet_key(merchant),
        )
    (root / "state").mkdir(exist_ok=True)
    return conf


def run_size(n: int, interval: int, steady: int, workers: int | None) -> Result:
    with (
        tempfile.TemporaryDirectory(prefix="loopsync-fleet-") as tmp,
        Sandbox("generic", clock=SystemClock(), rate_limits=False) as sb,
    ):
        sb.loop.rate_limit_enabled = True  # per key, so per merchant; the 3PL's stays off
        root = Path(tmp)
        conf = write_configs(sb, root, n, interval)
        log = root / "serve.log"
        extra = ["--workers", str(workers)] if workers else []
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, *SERVE.split(), str(conf), *extra],
                env={**os.environ, **sb.env()},
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                cwd=root,
            )
        watch = Watch(proc.pid)
        watcher = threading.Thread(target=watch.run, daemon=True)
        watcher.start()
        startup = wait_for_start(log, proc)
        # Warm-up: the ramp (at most one interval) plus one interval, so every merchant has
        # had its first cycle and runs on its steady phase.
        time.sleep(2 * interval)
        begin, offset = sample(proc.pid), log.stat().st_size
        time.sleep(steady * interval)
        end, until = sample(proc.pid), log.stat().st_size
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
        drain = time.monotonic() - stopped
        watch.stop.set()
        watcher.join()
        result = summarise(
            n, workers, log, watch.samples, (begin, end), (offset, until), code, drain
        )
        result.startup_s = startup
        return result


def wait_for_start(log: Path, proc: subprocess.Popen[bytes]) -> float:
    """Seconds until serve has loaded every configuration and scheduled the merchants (its
    `serve.start` line): the warm-up counts from there, whatever the machine's load."""
    began = time.monotonic()
    while proc.poll() is None and time.monotonic() - began < 600:
        if b'"serve.start"' in log.read_bytes():
            break
        time.sleep(0.5)
    return time.monotonic() - began


def summarise(
    n: int,
    workers: int | None,
    log: Path,
    samples: list[Sample],
    window: tuple[Sample | None, Sample | None],
    span: tuple[int, int],
    code: int | None,
    drain: float,
) -> Result:
    every = events(log)
    started = [e for e in every if e.get("event") == "serve.cycle_started"]
    late = [float(e["late_s"]) for e in started if isinstance(e.get("late_s"), (int, float))]
    in_window = [e for e in events(log, *span) if e.get("event") == "cycle.start"]
    begin, end = window
    cpu = (end.cpu_s - begin.cpu_s) if begin and end else 0.0
    pool = next((e.get("workers") for e in every if e.get("event") == "serve.start"), "?")
    return Result(
        merchants=n,
        workers=str(workers or pool),
        peak_rss_mib=max((s.hwm_kib for s in samples), default=0) / 1024,
        threads=max((s.threads for s in samples), default=0),
        cpu_ms_per_cycle=1000 * cpu / max(1, len(in_window)),
        cycles=len(in_window),
        late_p50=percentile(late, 0.50),
        late_p99=percentile(late, 0.99),
        late_max=max(late, default=0.0),
        late_warnings=sum(e.get("event") == "serve.cycle_late" for e in every),
        failed=sum(
            e.get("event") in {"serve.cycle_failed", "serve.state_error", "scheduler.skipped"}
            for e in every
        ),
        exit_code=code,
        drain_s=drain,
    )


def run(
    sizes: Sequence[int] = SIZES,
    interval: int = 30,
    steady: int = 2,
    workers: int | None = None,
    *,
    record: bool = True,
) -> dict[str, object]:
    results = []
    for n in sizes:
        print(f"{n} merchants, every {interval} s ...", flush=True)
        results.append(run_size(n, interval, steady, workers))
    small, large = results[0], results[-1]
    slope = (
        (large.peak_rss_mib - small.peak_rss_mib) / (large.merchants - small.merchants)
        if large.merchants > small.merchants
        else 0.0
    )
    late_ok = large.late_max <= LATE_TARGET * interval
    rss_ok = slope <= RSS_TARGET_MIB
    clean = all(r.exit_code == 0 and r.failed == 0 for r in results)
    print_table(
        f"Fleet: idle merchants in one serve process, every {interval} s",
        [
            "merchants",
            "workers",
            "peak RSS",
            "threads",
            "CPU/cycle",
            "cycles",
            "of due",
            "late p50",
            "late p99",
            "late max",
            "late warn",
            "failed",
            "exit",
            "start-up",
            "drain",
        ],
        [
            [
                r.merchants,
                r.workers,
                f"{r.peak_rss_mib:.1f} MiB",
                r.threads,
                f"{r.cpu_ms_per_cycle:.1f} ms",
                r.cycles,
                f"{r.cycles / (r.merchants * steady):.0%}",
                f"{r.late_p50:.2f} s",
                f"{r.late_p99:.2f} s",
                f"{r.late_max:.2f} s",
                r.late_warnings,
                r.failed,
                r.exit_code,
                f"{r.startup_s:.1f} s",
                f"{r.drain_s:.1f} s",
            ]
            for r in results
        ],
    )
    print(
        f"\nRSS per idle merchant: {1024 * slope:.0f} KiB (target <= {RSS_TARGET_MIB:g} MiB):"
        f" {verdict(rss_ok)}; latest start at {large.merchants}: {large.late_max:.2f} s of"
        f" {interval} s (target <= {LATE_TARGET:.0%}): {verdict(late_ok)};"
        f" every run clean and exit 0: {verdict(clean)}"
    )
    if record:
        append_row(
            "fleet",
            [
                f"{interval} s",
                " / ".join(str(r.merchants) for r in results),
                " / ".join(f"{r.peak_rss_mib:.0f}" for r in results) + " MiB",
                f"{1024 * slope:.0f} KiB",
                " / ".join(str(r.threads) for r in results),
                " / ".join(f"{r.cpu_ms_per_cycle:.0f}" for r in results) + " ms",
                " / ".join(f"{r.late_max:.2f}" for r in results) + " s",
                verdict(rss_ok and late_ok and clean),
            ],
        )
    return {"ok": rss_ok and late_ok and clean, "results": results, "slope_mib": slope}


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="merchants per run")
    p.add_argument("--interval", type=int, default=30, help="schedule.every, seconds (>= 10)")
    p.add_argument("--steady", type=int, default=2, help="intervals measured after warm-up")
    p.add_argument("--workers", type=int, default=None, help="serve --workers (default: its)")
    p.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    result = run(sizes, args.interval, args.steady, args.workers, record=not args.no_record)
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
