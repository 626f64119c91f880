"""Benchmark 5, rate compliance: a long first cycle with the sandbox's limits ON.

    .venv/bin/python -m benchmarks.rate [--history N] [--open N] [--no-record]

The sandbox (emulated Loop and ShipHero on 127.0.0.1) enforces Loop's 300 requests a
minute per API key (a token bucket: a request over it gets 429) and keeps ShipHero's
credit accounting (1001 credits, 15 a second) in the mode that lets a client overdraw
and records the lowest balance, so an overdraft shows as a negative figure. It holds
N finished returns from the past year (default 50,000) and 1,000 open ones whose orders
are in ShipHero. One full first cycle (`runner.run_merchant`, as `loopsync run --once`)
then pulls everything (every state pass, window and page, and the ASN report), pushes
the 1,000 open returns to ShipHero (order look-up, `return_create`, and a note on each
Loop return) and polls the new RMAs.

Waiting is simulated: the worker's rate limiter, its ShipHero credit bucket, the Loop
token bucket and the ShipHero credit meter all run on one FakeClock, so minutes of
waiting take no real time. Checked afterwards from the emulators' own records:
`LoopEmulator.busiest_window(key)` (most Loop requests in any 60 seconds of that clock)
<= 300, no 429 from Loop, ShipHero's lowest credit balance >= 0 and no throttle answer.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import (
    FINISHED_STATES,
    Bench,
    append_row,
    cli,
    fmt_s,
    print_table,
    quiet_logs,
    verdict,
)
from loopsync.sandbox import LOOP_KEY
from loopsync.sandbox.shiphero import CreditMeter

LOOP_LIMIT = 300


def run(history: int = 50_000, open_returns: int = 1_000, record: bool = True) -> dict[str, Any]:
    quiet_logs()
    with Bench.start("shiphero", rate_limits=True) as b:
        b.seed(history, until_days=2, states=FINISHED_STATES)
        b.seed(open_returns, days=14, states=(("open", 1),), warehouse_knows=True)
        cfg = b.config("rate")
        sh = b.warehouse
        sh.credits = CreditMeter(
            b.clock,
            cfg.warehouse.connector.credits_max,
            cfg.warehouse.connector.credits_per_second,
            enforce=False,
        )
        assert b.loop.rate_limit_enabled and sh.credits.enabled
        b.reset_calls()
        simulated = b.clock.monotonic()
        wall = time.perf_counter()
        result = b.sb.run_cycle(cfg)
        wall = time.perf_counter() - wall
        simulated = b.clock.monotonic() - simulated
        loop_calls = b.sb.recorder.calls("loop")
        sh_calls = b.sb.recorder.calls("shiphero")
        busiest = b.loop.busiest_window(LOOP_KEY, 60.0)
        loop_429 = sum(1 for c in loop_calls if c.status == 429)
        res = {
            "wall": wall,
            "simulated": simulated,
            "loop_requests": len(loop_calls),
            "loop_429": loop_429,
            "busiest": busiest,
            "client_limit": cfg.loop.requests_per_minute,
            "sh_requests": len(sh_calls),
            "credits_spent": sh.credits.spent,
            "min_balance": sh.credits.min_balance,
            "sh_throttled": sh.credits.throttled,
            "counts": result.counts,
            "ok_cycle": result.ok,
            "errors": result.stage_errors,
        }
    ok = (
        res["busiest"] <= LOOP_LIMIT
        and res["loop_429"] == 0
        and res["min_balance"] >= 0
        and res["sh_throttled"] == 0
        and res["ok_cycle"]
    )
    c = res["counts"]
    print_table(
        f"Rate compliance: first cycle over {history + open_returns:,} returns, "
        f"{open_returns:,} pushed to ShipHero, limits on (waiting simulated on a FakeClock)",
        ["", "requests", "limit", "busiest 60 s / lowest balance", "refused", "result"],
        [
            [
                "Loop (one API key)",
                res["loop_requests"],
                f"{LOOP_LIMIT}/min (loopsync: {res['client_limit']}/min)",
                res["busiest"],
                f"{loop_429} x 429",
                verdict(res["busiest"] <= LOOP_LIMIT and loop_429 == 0),
            ],
            [
                "ShipHero credits",
                res["sh_requests"],
                "1001, +15/s",
                f"{res['min_balance']:.0f} (spent {res['credits_spent']:,})",
                f"{res['sh_throttled']} throttled",
                verdict(res["min_balance"] >= 0),
            ],
        ],
    )
    print(
        f"cycle: pulled {c.pulled:,}, pushed {c.pushed:,}, notes {c.notes:,}, polled "
        f"{c.polled:,}, errors {c.errors} {res['errors'] or ''}"
    )
    print(
        f"simulated time {res['simulated'] / 60:.1f} min, real time {fmt_s(res['wall'])}: "
        f"{verdict(ok)}"
    )
    if record:
        append_row(
            "rate",
            [
                f"{history + open_returns:,}",
                res["loop_requests"],
                res["busiest"],
                loop_429,
                res["sh_requests"],
                f"{res['credits_spent']:,}",
                f"{res['min_balance']:.0f}",
                f"{res['simulated'] / 60:.1f} min",
                fmt_s(res["wall"]),
                verdict(ok),
            ],
        )
    return {**res, "ok": ok}


def main() -> None:
    cli(__doc__, run, history=50_000, open=1_000)


if __name__ == "__main__":
    main()
