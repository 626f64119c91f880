"""Benchmark 1, ingest: a first pull of 100,000 returns against the floor.

    .venv/bin/python -m benchmarks.ingest [--returns N] [--rounds R] [--server fast|sandbox]
        [--no-record]

Loop runs in a process of its own (`benchmarks.loop_server`) holding N returns (default
100,000) updated over the last year in Loop's usual mix of the five states, with no rate
limit. `--server fast` (the default) serves pages encoded once at start-up
(`benchmarks.fast_loop`), so the server is not what is measured; `--server sandbox` is
the full emulator, which builds each page on request. Measured in this process,
alternately, R rounds each (default 3):

- floor: a bare loop that requests the same pages (the same five state passes, the same
  <=120-day windows, the same page size, following `nextPageUrl` cursors) with one
  keep-alive `requests.Session`, JSON-decodes each page and stores nothing;
- loopsync: `Engine.ingest()` -- the ingest stage only (no ASN, push, poll or act) -- with
  the real `LoopClient` and a real SQLite `Store`, fresh in a temporary directory for
  each round (so each round is a first pull).

One untimed floor pass first warms both sides (and collects the ids Loop lists), and the
floor runs once more at the end, so each loopsync round sits between two floor rounds.
Best and median of the rounds are both reported, each as a ratio. After every loopsync
round the store is checked: every listed id stored exactly once, nothing else, every
state's cursor past the end. loopsync's client-side limiter (280 requests a minute) runs on
a FakeClock, so its waits are simulated, not in the wall time: Loop's own limit makes any
client take at least requests / 300 minutes, which is reported separately.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
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
    close_engine,
    fmt_s,
    loop_http,
    print_table,
    quiet_logs,
    verdict,
    worker_config,
)
from benchmarks.fast_loop import worker_query
from benchmarks.loop_server import loop_server
from loopsync.config import MerchantConfig
from loopsync.loop_client import RETURN_LIST_PATH, extract_cursor
from loopsync.sandbox import LOOP_KEY
from loopsync.testing import FakeClock
from loopsync.timeutil import iso
from loopsync.windows import Window, ingest_start, plan_windows

TARGET = 1.3


def planned(cfg: MerchantConfig, end: dt.datetime) -> list[Window]:
    """The windows a first pull reads (the same for every state)."""
    start = ingest_start(None, cfg.loop.start_at, cfg.loop.lookback)
    return plan_windows(start, end, cfg.loop.window)


def floor_pull(
    loop_url: str, cfg: MerchantConfig, end: dt.datetime, ids: set[str] | None = None
) -> tuple[int, int]:
    """(returns, requests): the pages loopsync reads, fetched and decoded, nothing kept
    (`ids`, when given, collects the ids listed: the untimed pass only)."""
    session = requests.Session()
    session.headers["X-Authorization"] = LOOP_KEY
    url = loop_url.rstrip("/") + RETURN_LIST_PATH
    returns = pages = 0
    for state in cfg.loop.states:
        for window in planned(cfg, end):
            params = worker_query(window, state, cfg.loop.page_size)
            cursor = None
            while True:
                query = params if cursor is None else {**params, "cursor": cursor}
                resp = session.get(url, params=query, timeout=30)
                resp.raise_for_status()
                body = resp.json()
                pages += 1
                returns += len(body["returns"])
                if ids is not None:
                    ids.update(str(r["id"]) for r in body["returns"])
                next_url = body.get("nextPageUrl")
                cursor = extract_cursor(next_url) if next_url else None
                if cursor is None:
                    break
    session.close()
    return returns, pages


def loopsync_pull(cfg: MerchantConfig, clock: FakeClock, listed: set[str]) -> dict[str, Any]:
    """One first pull through Engine.ingest(), built as runner.run_merchant builds it;
    then the store is checked against the ids Loop lists (`listed`)."""
    engine = build_engine(cfg, clock)
    slept = sum(clock.slept)
    end = clock.now()
    started, cpu = time.perf_counter(), time.process_time()
    engine.ingest()
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    db = engine.store.db
    stored = db.execute("select count(*) from returns").fetchone()[0]
    stored_ids = {str(r[0]) for r in db.execute("select id from returns")}
    behind = [
        state
        for state in cfg.loop.states
        if (done := engine.store.cursors.get("returns", state).done_until) is None or done < end
    ]
    out = {
        "seconds": seconds,
        "cpu": cpu,
        "requests": loop_http(engine).requests_sent,
        "stored": stored,
        "complete": stored == len(stored_ids) == len(listed) and stored_ids == listed,
        "cursors_behind": behind,
        "pulled": engine.counts.pulled,
        "new": engine.counts.new,
        "malformed": engine.counts.malformed,
        "errors": engine.counts.errors,
        "limiter_wait": sum(clock.slept) - slept,
    }
    close_engine(engine)
    return out


def timed_floor(
    loop_url: str, cfg: MerchantConfig, end: dt.datetime
) -> tuple[float, int, int, float]:
    """(wall seconds, returns, requests, CPU seconds of this process)."""
    started, cpu = time.perf_counter(), time.process_time()
    returns, pages = floor_pull(loop_url, cfg, end)
    return time.perf_counter() - started, returns, pages, time.process_time() - cpu


def run(
    n: int = 100_000, rounds: int = 3, record: bool = True, server: str = "fast"
) -> dict[str, Any]:
    quiet_logs()
    clock = FakeClock(NOW)
    end = clock.now()
    start = end - dt.timedelta(days=HISTORY_DAYS)
    with tempfile.TemporaryDirectory(prefix="loopsync-bench-") as tmp:
        cfg = worker_config("http://127.0.0.1:9", Path(tmp) / "warm.sqlite", start=start)
        plan = {
            "windows": [[iso(w.start), iso(w.end)] for w in planned(cfg, end)],
            "states": list(cfg.loop.states),
            "page_size": cfg.loop.page_size,
        }
        with loop_server(n, days=HISTORY_DAYS, kind=server, plan=plan) as (url, seed_s):
            print(f"{server} Loop (own process) seeded {n:,} returns in {fmt_s(seed_s)}")
            cfg = worker_config(url, Path(tmp) / "warm.sqlite", start=start)
            assert set(cfg.loop.states) == set(ALL_STATES)
            listed: set[str] = set()
            warm_started = time.perf_counter()
            floor_pull(url, cfg, end, listed)
            print(f"warm-up floor pass: {fmt_s(time.perf_counter() - warm_started)} (not counted)")
            floors: list[tuple[float, int, int, float]] = []
            pulls: list[dict[str, Any]] = []
            for r in range(rounds):
                floors.append(timed_floor(url, cfg, end))
                clock.set(end)  # the same windows every round
                state_path = Path(tmp) / f"round{r}.sqlite"
                pulls.append(
                    loopsync_pull(worker_config(url, state_path, start=start), clock, listed)
                )
                for leftover in Path(tmp).glob(f"round{r}.sqlite*"):
                    leftover.unlink()  # a round's store is checked; the disk is not a cache
            floors.append(timed_floor(url, cfg, end))
    return report(n, server, cfg, floors, pulls, listed, record)


def report(
    n: int,
    server: str,
    cfg: MerchantConfig,
    floors: list[tuple[float, int, int, float]],
    pulls: list[dict[str, Any]],
    listed: set[str],
    record: bool,
) -> dict[str, Any]:
    floor_s = [f[0] for f in floors]
    ls_s = [p["seconds"] for p in pulls]
    best_floor, med_floor = min(floor_s), statistics.median(floor_s)
    best, med = min(ls_s), statistics.median(ls_s)
    r_best, r_med = best / best_floor, med / med_floor
    first = pulls[0]
    # CPU of this process (every thread): less moved by other load on the machine than
    # wall time, which is what the target is about.
    cpu_floor, cpu_ls = min(f[3] for f in floors), min(p["cpu"] for p in pulls)
    stored_ok = all(p["complete"] and not p["cursors_behind"] for p in pulls)
    clean = all(p["errors"] == 0 and p["malformed"] == 0 for p in pulls)
    ok = r_best <= TARGET and r_med <= TARGET and stored_ok and clean and len(listed) == n
    print_table(
        f"Ingest: first pull of {n:,} returns, 5 states, <=120-day windows, page size "
        f"{cfg.loop.page_size} ({server} Loop in its own process, no rate limit)",
        ["", "best", "median", "returns/s (best)", "requests", "returns read"],
        [
            [
                "floor: requests.Session + JSON decode",
                fmt_s(best_floor),
                fmt_s(med_floor),
                f"{n / best_floor:,.0f}",
                floors[0][2],
                f"{floors[0][1]:,}",
            ],
            [
                "loopsync: Engine.ingest() + SQLite",
                fmt_s(best),
                fmt_s(med),
                f"{n / best:,.0f}",
                first["requests"],
                f"{first['pulled']:,}",
            ],
        ],
    )
    print(
        "rounds (s): floor "
        + ", ".join(f"{f:.2f}" for f in floor_s)
        + "; loopsync "
        + ", ".join(f"{p:.2f}" for p in ls_s)
    )
    print(
        f"every round: {len(listed):,} ids listed, each stored once and nothing else: "
        f"{'yes' if stored_ok else 'NO'}; malformed/errors: "
        + ", ".join(f"{p['malformed']}/{p['errors']}" for p in pulls)
    )
    print(
        f"loopsync / floor = {r_best:.2f}x best, {r_med:.2f}x median "
        f"(target <= {TARGET}x: {verdict(ok)})"
    )
    print(
        f"CPU of this process (best): floor {cpu_floor:.2f} s, loopsync {cpu_ls:.2f} s "
        f"({cpu_ls / cpu_floor:.2f}x; {cpu_floor / n * 1e6:.0f} and {cpu_ls / n * 1e6:.0f} us "
        "a return)"
    )
    print(
        f"Loop's 300/min makes this pull take >= {first['requests'] / 300:.1f} min for any "
        f"client; loopsync's limiter (280/min) waited {first['limiter_wait']:.0f} s of "
        "simulated time"
    )
    if record:
        append_row(
            "ingest",
            [
                f"{n:,} ({server} server)",
                first["requests"],
                f"{fmt_s(best_floor)} / {fmt_s(med_floor)}",
                f"{fmt_s(best)} / {fmt_s(med)}",
                f"{n / best:,.0f}",
                f"{r_best:.2f}x / {r_med:.2f}x",
                f"{TARGET}x: {verdict(ok)}",
            ],
        )
    return {
        "returns": n,
        "server": server,
        "floor_s": best_floor,
        "loopsync_s": best,
        "ratio": r_best,
        "ratio_median": r_med,
        "ok": ok,
        "requests": first["requests"],
        "cpu_ratio": cpu_ls / cpu_floor,
        "floor_rounds": floor_s,
        "loopsync_rounds": ls_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    p.add_argument("--returns", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--server", choices=("fast", "sandbox"), default="fast")
    p.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    args = p.parse_args()
    run(args.returns, args.rounds, record=not args.no_record, server=args.server)


if __name__ == "__main__":
    main()
