"""Benchmark 1, ingest: a first pull of 100,000 returns against the floor.

    .venv/bin/python -m benchmarks.ingest [--returns N] [--rounds R] [--no-record]

The sandbox Loop runs in a process of its own (`benchmarks.loop_server`) holding N returns
(default 100,000) updated over the last year in Loop's usual mix of the five states, with
its rate limit off. Measured in this process, alternately, R rounds each (default 2):

- floor: a bare loop that requests the same pages (the same five state passes, the same
  <=120-day windows, the same page size, following `nextPageUrl` cursors) with one
  keep-alive `requests.Session`, JSON-decodes each page and stores nothing;
- loopsync: `Engine.ingest()` -- the ingest stage only (no ASN, push, poll or act) -- with
  the real `LoopClient` and a real SQLite `Store`, fresh in a temporary directory for
  each round (so each round is a first pull).

One untimed floor pass first warms the server (its per-window selections are cached), and
the floor runs once more at the end, so each loopsync round sits between two floor rounds.
Best-of is used for both (noise only ever adds time); every round is printed. loopsync's
client-side limiter (280 requests a minute) runs on a FakeClock, so its waits are
simulated, not in the wall time: Loop's own limit makes any client take at least
requests / 300 minutes, which is reported separately.
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from benchmarks.common import (
    ALL_STATES,
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
    verdict,
    worker_config,
)
from benchmarks.loop_server import loop_server
from loopsync.config import MerchantConfig
from loopsync.loop_client import RETURN_LIST_PATH, extract_cursor
from loopsync.sandbox import LOOP_KEY
from loopsync.testing import FakeClock
from loopsync.timeutil import loop_wire
from loopsync.windows import ingest_start, plan_windows

TARGET = 1.5


def floor_pull(loop_url: str, cfg: MerchantConfig, end: dt.datetime) -> tuple[int, int]:
    """(returns, requests): the pages loopsync reads, fetched and decoded, nothing kept."""
    session = requests.Session()
    session.headers["X-Authorization"] = LOOP_KEY
    url = loop_url.rstrip("/") + RETURN_LIST_PATH
    returns = pages = 0
    start = ingest_start(None, cfg.loop.start_at, cfg.loop.lookback)
    for state in cfg.loop.states:
        for window in plan_windows(start, end, cfg.loop.window):
            params = {
                "from": loop_wire(window.start),
                "to": loop_wire(window.end),
                "filter": "updated_at",
                "state": state,
                "paginate": "true",
                "pageSize": str(cfg.loop.page_size),
            }
            cursor = None
            while True:
                query = params if cursor is None else {**params, "cursor": cursor}
                resp = session.get(url, params=query, timeout=30)
                resp.raise_for_status()
                body = resp.json()
                pages += 1
                returns += len(body["returns"])
                next_url = body.get("nextPageUrl")
                cursor = extract_cursor(next_url) if next_url else None
                if cursor is None:
                    break
    session.close()
    return returns, pages


def loopsync_pull(cfg: MerchantConfig, clock: FakeClock) -> dict[str, Any]:
    """One first pull through Engine.ingest(), built as runner.run_merchant builds it."""
    engine = build_engine(cfg, clock)
    slept = sum(clock.slept)
    started = time.perf_counter()
    engine.ingest()
    seconds = time.perf_counter() - started
    stored = engine.store.db.execute("select count(*) from returns").fetchone()[0]
    out = {
        "seconds": seconds,
        "requests": loop_http(engine).requests_sent,
        "stored": stored,
        "pulled": engine.counts.pulled,
        "new": engine.counts.new,
        "malformed": engine.counts.malformed,
        "errors": engine.counts.errors,
        "limiter_wait": sum(clock.slept) - slept,
    }
    close_engine(engine)
    return out


def timed_floor(loop_url: str, cfg: MerchantConfig, end: dt.datetime) -> tuple[float, int, int]:
    started = time.perf_counter()
    returns, pages = floor_pull(loop_url, cfg, end)
    return time.perf_counter() - started, returns, pages


def run(n: int = 100_000, rounds: int = 2, record: bool = True) -> dict[str, Any]:
    quiet_logs()
    clock = FakeClock(NOW)
    end = clock.now()
    start = end - dt.timedelta(days=HISTORY_DAYS)
    with (
        loop_server(n, days=HISTORY_DAYS) as (url, seed_s),
        tempfile.TemporaryDirectory(prefix="loopsync-bench-") as tmp,
    ):
        print(f"sandbox Loop (own process) seeded {n:,} returns in {fmt_s(seed_s)}")
        cfg = worker_config(url, Path(tmp) / "warm.sqlite", start=start)
        assert set(cfg.loop.states) == set(ALL_STATES)
        warm = timed_floor(url, cfg, end)
        print(f"warm-up floor pass: {fmt_s(warm[0])} (not counted)")
        floors: list[tuple[float, int, int]] = []
        pulls: list[dict[str, Any]] = []
        for r in range(rounds):
            floors.append(timed_floor(url, cfg, end))
            clock.set(end)  # the same windows every round
            pulls.append(
                loopsync_pull(
                    worker_config(url, Path(tmp) / f"round{r}.sqlite", start=start), clock
                )
            )
        floors.append(timed_floor(url, cfg, end))
    floor = min(f[0] for f in floors)
    best = min(pulls, key=lambda p: p["seconds"])
    ls = best["seconds"]
    r = ls / floor
    floor_returns, floor_requests = floors[0][1], floors[0][2]
    ok = r <= TARGET and best["stored"] == n and best["errors"] == 0
    print_table(
        f"Ingest: first pull of {n:,} returns, 5 states, <=120-day windows, page size "
        f"{cfg.loop.page_size} (sandbox Loop in its own process, rate limit off)",
        ["", "wall time (best)", "returns/s", "requests", "returns read"],
        [
            [
                "floor: requests.Session + JSON decode",
                fmt_s(floor),
                f"{n / floor:,.0f}",
                floor_requests,
                f"{floor_returns:,}",
            ],
            [
                "loopsync: Engine.ingest() + SQLite",
                fmt_s(ls),
                f"{n / ls:,.0f}",
                best["requests"],
                f"{best['pulled']:,}",
            ],
        ],
    )
    print(
        "rounds (s): floor "
        + ", ".join(f"{f[0]:.2f}" for f in floors)
        + "; loopsync "
        + ", ".join(f"{p['seconds']:.2f}" for p in pulls)
    )
    print(
        f"stored {best['stored']:,} returns (new {best['new']:,}, malformed "
        f"{best['malformed']}, errors {best['errors']})"
    )
    print(f"loopsync / floor = {r:.2f}x (target <= {TARGET}x: {verdict(ok)})")
    print(
        f"Loop's 300/min makes this pull take >= {best['requests'] / 300:.1f} min for any "
        f"client; loopsync's limiter (280/min) waited {best['limiter_wait']:.0f} s of "
        "simulated time"
    )
    result = {
        "returns": n,
        "floor_s": floor,
        "loopsync_s": ls,
        "ratio": r,
        "ok": ok,
        "requests": best["requests"],
        "floor_rounds": [f[0] for f in floors],
        "loopsync_rounds": [p["seconds"] for p in pulls],
    }
    if record:
        append_row(
            "ingest",
            [
                f"{n:,}",
                best["requests"],
                fmt_s(floor),
                fmt_s(ls),
                f"{n / ls:,.0f}",
                f"{r:.2f}x",
                verdict(ok),
            ],
        )
    return result


def main() -> None:
    cli(__doc__, run, returns=100_000, rounds=2)


if __name__ == "__main__":
    main()
