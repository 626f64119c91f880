"""Latency trials: how long the real worker takes from a return created in the emulated
Loop to its RMA in the warehouse, and from a warehouse receipt to Loop's process call,
with webhooks and with polling only. `loopsync demo --webhooks` and
`benchmarks/latency.py` run them.

One trial: a sandbox (emulated Loop and warehouse on 127.0.0.1, real time), the real worker
as a subprocess (`loopsync serve --http`, its scheduler every `every` seconds and, in
WEBHOOKS mode, its webhook intake, which the sandbox's sender posts to), and a driver:
a new open return every `spacing` seconds; the warehouse receives each one in full a
random 0.5 s to `every` s after its RMA exists; every WATCH_SECONDS the driver reads both
emulators. The figures are therefore accurate to WATCH_SECONDS, and they include the
worker's whole path (intake, inbox, Loop reads, the warehouse call), which is what a
merchant waits for.

Invariants checked as a side effect: one RMA per return, one process per return.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import requests

from loopsync.sandbox.webhooks import WebhookFaults
from loopsync.testing.sandbox import Sandbox
from loopsync.timeutil import Clock, SystemClock

WATCH_SECONDS = 0.02
READY_SECONDS = 60.0  # the worker's start-up (imports, first cycle) on a loaded machine
STOP_SECONDS = 70.0  # serve drains a running cycle for up to 65 s on SIGTERM
MERCHANT = "latency"
# The warehouses' client-side budgets, loosened as the soak loosens them: a trial measures
# how soon the worker hears of a change, not ShipHero's 15 credits a second (about 37 a
# pushed RMA: a new return every 2.5 s would already queue behind the bucket) or
# PeopleVox's 15 requests in 15 s. The sandbox's own limits are off too.
CLIENT_LIMITS: dict[str, dict[str, Any]] = {
    "shiphero": {"credits_max": 20000, "credits_per_second": 2000},
    "peoplevox": {"rate_limit": {"requests": 1000, "per": "1s"}},
    "xoro": {"requests_per_second": 10},
}


class Mode(StrEnum):
    WEBHOOKS = "webhooks"
    POLLING = "polling"


@dataclass(frozen=True)
class TrialSpec:
    mode: Mode
    warehouse: str = "shiphero"
    returns: int = 6
    every: int = 10  # seconds between scheduled cycles (the config's minimum is 10)
    spacing: float = 1.0  # seconds between new returns
    timeout: float = 60.0  # after the last new return, give up on what is still open
    faults: WebhookFaults = field(default_factory=WebhookFaults)
    seed: int = 7


@dataclass(frozen=True)
class TrialResult:
    spec: TrialSpec
    to_rma: tuple[float, ...]  # seconds, one per return that got its RMA
    to_process: tuple[float, ...]  # seconds from the receipt to Loop's process
    no_rma: int
    not_processed: int
    duplicate_rmas: int
    duplicate_actions: int
    webhooks: dict[str, int]
    worker_exit: int | None
    seconds: float
    problem: str | None = None  # the worker would not start: its log's last lines

    @property
    def ok(self) -> bool:
        return (
            self.problem is None
            and self.no_rma == self.not_processed == 0
            and self.duplicate_rmas == self.duplicate_actions == 0
            and self.worker_exit in (0, None)
        )

    def p(self, which: str, q: float) -> float:
        values = self.to_rma if which == "rma" else self.to_process
        return percentile(values, q)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q from 0 to 100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_trial(spec: TrialSpec, workdir: Path, *, clock: Clock | None = None) -> TrialResult:
    """Run one trial in `workdir` (config, state and the worker's log go there)."""
    clock = clock or SystemClock()
    workdir.mkdir(parents=True, exist_ok=True)
    started = clock.monotonic()
    with Sandbox(spec.warehouse, clock=clock, rate_limits=False, seed=spec.seed) as sb:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        extra = dict(CLIENT_LIMITS.get(spec.warehouse, {}))
        path = sb.write_config(
            workdir,
            merchant=MERCHANT,
            state_path=str(workdir / "state.sqlite"),
            every=f"{spec.every}s",
            start_days=1,
            warehouse_extra=extra,
            webhooks={} if spec.mode is Mode.WEBHOOKS else None,
        )
        worker = _start_worker(path, port, sb.env(), workdir / "worker.log")
        watch = _Watch()
        try:
            problem = _wait_ready(base, worker, workdir / "worker.log", clock)
            if problem is None and spec.mode is Mode.WEBHOOKS:
                sb.send_webhooks(
                    sb.webhook_targets(base, MERCHANT), faults=spec.faults, seed=spec.seed
                )
            if problem is None:
                watch = _drive(sb, spec, clock)
        finally:
            code = _stop_worker(worker)
        stats = dict(sb.webhook_sender.stats()) if sb.webhook_sender is not None else {}
        ids = list(watch.created)
        return TrialResult(
            spec=spec,
            to_rma=tuple(watch.rma[r] - watch.created[r] for r in ids if r in watch.rma),
            to_process=tuple(
                watch.processed[r] - watch.received[r] for r in ids if r in watch.processed
            ),
            no_rma=sum(r not in watch.rma for r in ids),
            not_processed=sum(r not in watch.processed for r in ids),
            duplicate_rmas=sum(sb.warehouse.rma_count(r) > 1 for r in ids),
            duplicate_actions=sum(len(sb.loop.actions_for(r)) > 1 for r in ids),
            webhooks=stats,
            worker_exit=code,
            seconds=clock.monotonic() - started,
            problem=problem,
        )


@dataclass
class _Watch:
    created: dict[str, float] = field(default_factory=dict)
    rma: dict[str, float] = field(default_factory=dict)
    received: dict[str, float] = field(default_factory=dict)
    processed: dict[str, float] = field(default_factory=dict)


def _drive(sb: Sandbox, spec: TrialSpec, clock: Clock) -> _Watch:
    """New returns every `spacing` s; each is received a while after its RMA shows (a
    random 0.5 s to `every` s, so receipts land anywhere in the schedule, not just after
    the cycle that pushed them); note the times."""
    watch = _Watch()
    rng = random.Random(spec.seed)
    due: dict[str, float] = {}  # return id -> when the warehouse receives it
    next_new = clock.monotonic()
    deadline = math.inf
    while clock.monotonic() < deadline and len(watch.processed) < spec.returns:
        now = clock.monotonic()
        if len(watch.created) < spec.returns and now >= next_new:
            (raw,) = sb.seed(1, days=1e-6, states_weights=[("open", 1)])
            watch.created[str(raw["id"])] = clock.monotonic()
            next_new = now + spec.spacing
            if len(watch.created) == spec.returns:
                deadline = now + spec.timeout
        for rid in [r for r in watch.created if r not in watch.rma]:
            if sb.warehouse.has_rma(rid):
                watch.rma[rid] = clock.monotonic()
                due[rid] = watch.rma[rid] + rng.uniform(0.5, spec.every)
        for rid in [r for r, at in due.items() if at <= now and r not in watch.received]:
            sb.warehouse.receive(rid, "full")
            watch.received[rid] = clock.monotonic()
        for rid in [r for r in watch.received if r not in watch.processed]:
            if "process" in sb.loop.actions_for(rid):
                watch.processed[rid] = clock.monotonic()
        clock.sleep(WATCH_SECONDS)
    return watch


def _start_worker(
    config: Path, port: int, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own CLI, arguments built here
            [
                sys.executable,
                "-m",
                "loopsync",
                "--log-format",
                "json",
                "--log-level",
                "warning",
                "serve",
                "--http",
                f"127.0.0.1:{port}",
                "-c",
                str(config),
            ],
            env={**os.environ, **env},
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            cwd=config.parent,
        )


def _wait_ready(base: str, worker: subprocess.Popen[bytes], log: Path, clock: Clock) -> str | None:
    """None once the worker answers /healthz; else why not (with its log's tail)."""
    deadline = clock.monotonic() + READY_SECONDS
    while clock.monotonic() < deadline:
        if worker.poll() is not None:
            return f"the worker exited {worker.returncode}: {_tail(log)}"
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                return None
        clock.sleep(0.1)
    return f"the worker did not answer /healthz in {READY_SECONDS:g}s: {_tail(log)}"


def _stop_worker(worker: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM and wait for serve's drain; the exit code (None if it had to be killed)."""
    if worker.poll() is None:
        worker.terminate()
        try:
            return worker.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
            return None
    return worker.returncode


def _tail(log: Path, lines: int = 5) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def summary(results: Sequence[TrialResult]) -> list[str]:
    """A small table: p50 and p95 of both latencies per trial, in seconds."""
    rows = [
        f"{'mode':<26}{'returns':>8}  {'created -> RMA':>18}  {'receipt -> process':>20}",
        f"{'':<26}{'':>8}  {'p50':>8}  {'p95':>8}  {'p50':>9}  {'p95':>9}",
    ]
    for r in results:
        label = r.spec.mode.value + (
            f" (every {r.spec.every}s)" if r.spec.mode is Mode.POLLING else ""
        )
        rma, process = (
            (fmt_seconds(r.p("rma", q)) for q in (50, 95)),
            (fmt_seconds(r.p("process", q)) for q in (50, 95)),
        )
        rows.append(
            f"{label:<26}{len(r.to_rma):>8}  "
            + "  ".join(f"{t:>8}" for t in rma)
            + "  "
            + "  ".join(f"{t:>9}" for t in process)
        )
    return rows


def fmt_seconds(seconds: float) -> str:
    """`1.2 s`, or `-` for NaN (no value)."""
    return "-" if math.isnan(seconds) else f"{seconds:.1f} s"
