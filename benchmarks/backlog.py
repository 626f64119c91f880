"""Benchmark 7, a backlog does not hold back processing: how long a return the warehouse
has received waits to be processed while a large backfill is being pushed.

    .venv/bin/python -m benchmarks.backlog [--returns N] [--no-record]

A ShipHero sandbox on a FakeClock, rate limits on (Loop's 280 requests a minute and
ShipHero's credit bucket are waited out on the sandbox clock, never slept), so the sandbox
clock reads what the remotes' limits would impose. One open return is pushed in a first
cycle; then the warehouse receives it, and N more open returns (default 5,000, orders
known to the warehouse) arrive in Loop at once: a backfill. Cycles run every schedule
interval (15 min) until the received return is processed and the backlog is pushed.

Measured twice, side by side: *before* (one unbounded batch: push runs to the end of the
backlog before poll and act, the order before issue 10) and *after* (the default
`push: {batch: 200, batch_time: 60s}`, poll of the RMAs open before the push and act
between batches). Reported: the time
from receipt to the Loop process call (sandbox-clock seconds, and in which cycle after the
receipt), the sandbox-clock time to push the whole backlog, how many polls ran, and the
wall time. Target: processed within one schedule interval of the receipt.
"""

from __future__ import annotations

import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import append_row, cli, print_table, quiet_logs, verdict
from loopsync.config import parse_config
from loopsync.runner import run_merchant
from loopsync.testing import FakeClock, Sandbox
from loopsync.testing.sandbox import SANDBOX_POLICY

EVERY = timedelta(minutes=15)  # the schedule interval
MAX_CYCLES = 40  # a safety cap only
VARIANTS = (
    ("before (unbounded batch)", {"batch": 1_000_000, "batch_time": "1d"}),
    ("after (batch 200, 60s)", {"batch": 200, "batch_time": "60s"}),
)


def measure(name: str, push: dict[str, Any], n: int, root: Path) -> dict[str, Any]:
    clock = FakeClock("2026-06-01T12:00:00Z")
    with Sandbox("shiphero", clock=clock, rate_limits=True) as sb:
        early = str(sb.seed(1, days=0.01, states_weights=[("open", 1)])[0]["id"])
        data = sb.config_dict(state_path=root / f"{len(name)}.sqlite", every="15m")
        data["push"] = push
        cfg = parse_config(data, file=f"<{name}>", env=sb.env(), base_dir=root)
        run_merchant(cfg, clock=clock, policy=SANDBOX_POLICY)
        clock.advance(EVERY)
        backlog = [str(r["id"]) for r in sb.seed(n, days=0.01, states_weights=[("open", 1)])]
        assert sb.warehouse.receive(early, "full")
        received = clock.now()
        seen: dict[str, Any] = {}
        handle, polls = sb.loop.handle, [0]

        def watching(req: Any) -> Any:
            if req.method == "POST" and req.path.endswith(f"/return/{early}/process"):
                seen.setdefault("at", clock.now())
                seen.setdefault("rmas", sum(sb.warehouse.rma_count(i) for i in backlog))
            return handle(req)

        sb.loop.handle = watching
        wh_handle = sb.warehouse.handle

        def counting(req: Any) -> Any:
            if b"query LoopsyncPoll" in req.body:
                polls[0] += 1
            return wh_handle(req)

        sb.warehouse.handle = counting
        started, wall = clock.now(), time.perf_counter()
        cycles = pushed = 0
        backlog_done = None
        while cycles < MAX_CYCLES and ("at" not in seen or backlog_done is None):
            cycle_start = clock.now()
            result = run_merchant(cfg, clock=clock, policy=SANDBOX_POLICY)
            cycles += 1
            pushed += result.counts.pushed
            if backlog_done is None and pushed >= n:
                backlog_done = clock.now()
            if "at" in seen:
                seen.setdefault("cycle", cycles)
            # serve starts the next cycle on the next tick after this one ended
            ticks = max(1, int((clock.now() - cycle_start) / EVERY) + 1)
            clock.set(cycle_start + ticks * EVERY)
        wall = time.perf_counter() - wall
    waited = (seen["at"] - received).total_seconds() if "at" in seen else float("inf")
    return {
        "variant": name,
        "returns": n,
        "waited_s": waited,
        "cycle": seen.get("cycle"),
        "rmas_before": seen.get("rmas"),
        "backlog_s": (backlog_done - started).total_seconds() if backlog_done else None,
        "polls": polls[0],
        "wall_s": wall,
        "ok": waited <= EVERY.total_seconds(),
    }


def _fmt(seconds: float | None) -> str:
    if seconds is None or seconds == float("inf"):
        return "never"
    return f"{seconds:,.0f} s ({seconds / 60:.1f} min)"


def run(returns: int = 5000, *, record: bool) -> dict[str, Any]:
    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="loopsync-bench-") as tmp:
        rows = [measure(name, push, returns, Path(tmp)) for name, push in VARIANTS]
    print_table(
        f"A received return during a backfill of {returns:,} open returns "
        "(ShipHero sandbox, rate limits on, sandbox clock)",
        [
            "variant",
            "receipt -> process",
            "in cycle",
            "backlog RMAs by then",
            "backlog pushed in",
            "poll requests",
            "wall",
        ],
        [
            [
                r["variant"],
                _fmt(r["waited_s"]),
                r["cycle"],
                r["rmas_before"],
                _fmt(r["backlog_s"]),
                r["polls"],
                f"{r['wall_s']:.1f} s",
            ]
            for r in rows
        ],
    )
    if record:
        for r in rows:
            append_row(
                "backlog",
                [
                    r["variant"],
                    f"{returns:,}",
                    _fmt(r["waited_s"]),
                    r["cycle"],
                    r["rmas_before"],
                    _fmt(r["backlog_s"]),
                    r["polls"],
                    f"{r['wall_s']:.1f} s",
                    verdict(r["ok"]) if "after" in r["variant"] else "-",
                ],
            )
    return {"ok": rows[-1]["ok"], "rows": rows}


if __name__ == "__main__":
    cli(__doc__, run, returns=5000)
