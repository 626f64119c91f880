"""The sandbox Loop in a process of its own, for benchmarks that must not share a
process (GIL, heap, RSS) with the worker they measure.

    python -m benchmarks.loop_server --returns N [--seed S] [--days D]
        [--server sandbox|fast] [--plan JSON]

Seeds N returns (`seed.make_returns`, deterministic) updated over the last D days of a
clock standing at `common.NOW`, serves Loop on 127.0.0.1 with no rate limit, prints one
line `READY <port> <seconds to seed>` and serves until stdin closes (the parent exits or
closes the pipe) or SIGTERM. `--server sandbox` (the default here) is the full emulator;
`--server fast` serves the same returns' list pages pre-encoded (`benchmarks.fast_loop`),
every page of `--plan` (`{"windows": [[from, to], ...], "states": [...], "page_size": n}`)
assembled before READY.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from loopsync.sandbox import LOOP_KEY
from loopsync.sandbox.loop import LoopEmulator
from loopsync.sandbox.seed import FIRST_RETURN_ID, make_returns
from loopsync.sandbox.server import ApiServer
from loopsync.testing import FakeClock


def serve(n: int, seed: int, days: float, kind: str = "sandbox", plan: str | None = None) -> None:
    from benchmarks.common import NOW

    started = time.perf_counter()
    clock = FakeClock(NOW)
    loop = LoopEmulator(clock=clock, api_keys={LOOP_KEY})
    loop.rate_limit_enabled = False
    now = clock.now()
    from benchmarks.common import ids_by_creation

    returns = make_returns(
        n,
        start=now - dt.timedelta(days=days),
        end=now,
        rng=random.Random(seed),
        first_id=FIRST_RETURN_ID,
    )
    returns = ids_by_creation(returns, FIRST_RETURN_ID)
    for raw in returns:
        loop.add_return(raw)
    gc.collect()
    gc.freeze()  # the seeded returns live for good: keep the collector off them
    if kind == "fast":
        port, stop_server = _serve_fast(loop, now, plan)
    else:
        api = ApiServer(loop).start()
        port, stop_server = api.port, api.stop
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def stop_at_end_of_input() -> None:  # the parent closing our stdin ends the server too
        sys.stdin.read()
        stop.set()

    threading.Thread(target=stop_at_end_of_input, daemon=True).start()
    print(f"READY {port} {time.perf_counter() - started:.2f}", flush=True)
    stop.wait()
    stop_server()


def _serve_fast(
    loop: LoopEmulator, now: dt.datetime, plan: str | None
) -> tuple[int, Callable[[], None]]:
    """Start the pre-encoded server, every page of `plan` assembled first: (port, stop)."""
    from benchmarks import fast_loop
    from loopsync.timeutil import parse_timestamp
    from loopsync.windows import Window

    book = fast_loop.PageBook(fast_loop.rows_of(loop))
    server = fast_loop.start(book, now)
    port = server.server_port
    if plan:
        spec = json.loads(plan)
        windows = [Window(parse_timestamp(a), parse_timestamp(b)) for a, b in spec["windows"]]
        book.prepare(f"127.0.0.1:{port}", windows, spec["states"], int(spec["page_size"]))
    gc.collect()
    gc.freeze()
    return port, server.shutdown


@contextmanager
def loop_server(
    n: int,
    *,
    seed: int = 7,
    days: float = 365,
    kind: str = "sandbox",
    plan: dict[str, Any] | None = None,
) -> Iterator[tuple[str, float]]:
    """Start the server process; yields (Loop base URL, seconds it took to seed)."""
    import subprocess

    extra = ["--server", kind] + (["--plan", json.dumps(plan)] if plan else [])
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.loop_server",
            "--returns",
            str(n),
            "--seed",
            str(seed),
            "--days",
            str(days),
            *extra,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line or line[0] != "READY":
            raise RuntimeError(f"the Loop server did not start: {line!r}")
        yield f"http://127.0.0.1:{line[1]}/api/v1", float(line[2])
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=10)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--returns", type=int, required=True)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--days", type=float, default=365)
    p.add_argument("--server", choices=("sandbox", "fast"), default="sandbox")
    p.add_argument("--plan", default=None)
    args = p.parse_args()
    serve(args.returns, args.seed, args.days, args.server, args.plan)


if __name__ == "__main__":
    main()
