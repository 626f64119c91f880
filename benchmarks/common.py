"""Shared pieces of the benchmarks: the in-process sandbox and its seeding, the worker
pieces, the printed table and the row appended to BENCHMARKS.md.

Everything talks HTTP on 127.0.0.1 only. Each benchmark module is runnable on its own
(`.venv/bin/python -m benchmarks.<name>`); `python -m benchmarks` runs them all.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopsync import logs
from loopsync.config import MerchantConfig, parse_config
from loopsync.cycle import Engine
from loopsync.http import HttpClient
from loopsync.loop_client import LoopClient
from loopsync.runner import build_connector, build_loop_client, new_run_id
from loopsync.sandbox import LOOP_KEY
from loopsync.sandbox.seed import FIRST_RETURN_ID, make_returns
from loopsync.state import Store
from loopsync.timeutil import Clock, iso
from loopsync.testing import FakeClock, Sandbox

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
NOW = "2026-06-01T12:00:00Z"  # the sandbox clock's start in every benchmark
ALL_STATES = ("open", "closed", "cancelled", "review", "expired")
HISTORY_DAYS = 365  # returns spread over a year: 4 windows of <= 120 days
# Finished returns (closed, cancelled, expired, review) in Loop's proportions.
FINISHED_STATES = (("closed", 8), ("cancelled", 4), ("expired", 4), ("review", 4))


# -- environment --------------------------------------------------------------------------


def machine() -> str:
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU, "
        f"Python {platform.python_version()}"
    )


def git_commit() -> str:
    """Short commit; '+dirty' when src/ differs from it (read-only git plumbing)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = (
        subprocess.run(
            ["git", "diff-index", "--quiet", "HEAD", "--", "src"],
            cwd=ROOT,
            capture_output=True,
            check=False,
        ).returncode
        != 0
    )
    return commit + ("+dirty" if dirty else "")


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")


def quiet_logs() -> None:
    """The worker logs as in production (JSON), but only warnings: the benchmarks print
    their own table."""
    logs.configure(json_output=True, level="warning")


# -- output -------------------------------------------------------------------------------


def cli(doc: str, run: Callable[..., Any], **options: int) -> None:
    """A benchmark's command line: `--<name> N` for each option (an int, with its default),
    and `--no-record`; then `run(<options in order>, record=not --no-record)`."""
    p = argparse.ArgumentParser(description=doc.split("\n", maxsplit=1)[0])
    for name, default in options.items():
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    args = p.parse_args()
    run(*(getattr(args, name) for name in options), record=not args.no_record)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}")
    print(line)
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print(line)
    print(line)


def append_row(section: str, cells: Sequence[Any]) -> None:
    """Add one row (date, machine, commit, figures...) to the table of `section` in
    BENCHMARKS.md: it goes just before the `<!-- rows:section -->` marker."""
    marker = f"<!-- rows:{section} -->"
    row = "| " + " | ".join([today(), machine(), git_commit(), *map(str, cells)]) + " |"
    text = BENCHMARKS_MD.read_text(encoding="utf-8") if BENCHMARKS_MD.exists() else ""
    if marker not in text:
        print(f"(BENCHMARKS.md has no {marker}; row not recorded)\n{row}", file=sys.stderr)
        return
    BENCHMARKS_MD.write_text(text.replace(marker, f"{row}\n{marker}", 1), encoding="utf-8")
    print(f"\nrecorded in {BENCHMARKS_MD.name} ({section})")


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s"


# -- the sandbox ------------------------------------------------------------------------


@dataclass
class Bench:
    """An in-process sandbox (emulated Loop + one warehouse on 127.0.0.1) on a FakeClock,
    and a merchant config for it. Returns are added to the emulated Loop directly; only
    the ones the warehouse must know (their orders) go through the warehouse hook, so
    seeding 100,000 returns stays a matter of seconds."""

    sb: Sandbox
    clock: FakeClock
    tmp: Path
    rng: random.Random
    next_id: int = FIRST_RETURN_ID
    server_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    @contextlib.contextmanager
    def start(
        cls, warehouse: str = "shiphero", *, rate_limits: bool = False, seed: int = 7
    ) -> Iterator[Bench]:
        clock = FakeClock(NOW)
        with (
            tempfile.TemporaryDirectory(prefix="loopsync-bench-") as tmp,
            Sandbox(warehouse, clock=clock, rate_limits=rate_limits, seed=seed) as sb,
        ):
            bench = cls(sb, clock, Path(tmp), random.Random(seed))
            for api in (sb.loop, sb.warehouse):
                bench._time_handler(api)
            yield bench

    def _time_handler(self, api: Any) -> None:
        """Add the time the emulator spends answering (in this process) to `server_s`, so
        it can be told apart from the worker's own time."""
        handle = api.handle

        def timed_handle(req: Any) -> Any:
            started = time.perf_counter()
            try:
                return handle(req)
            finally:
                with self._lock:
                    self.server_s += time.perf_counter() - started

        api.handle = timed_handle

    @property
    def loop(self) -> Any:
        return self.sb.loop

    @property
    def warehouse(self) -> Any:
        return self.sb.warehouse

    def seed(
        self,
        n: int,
        *,
        days: float = HISTORY_DAYS,
        until_days: float = 0,
        states: Sequence[tuple[str, int]] | None = None,
        warehouse_knows: bool = False,
    ) -> list[dict[str, Any]]:
        """n returns created and updated between `days` and `until_days` days before the
        sandbox clock's now."""
        now = self.clock.now() - dt.timedelta(days=until_days)
        kw: dict[str, Any] = {} if states is None else {"states_weights": list(states)}
        start = self.clock.now() - dt.timedelta(days=days)
        returns = ids_by_creation(
            make_returns(n, start=start, end=now, rng=self.rng, first_id=self.next_id, **kw),
            self.next_id,
        )
        self.next_id += n
        for raw in returns:
            self.loop.add_return(raw)
            if warehouse_knows:
                self.warehouse.on_loop_return(raw)
        return returns

    def config(
        self, name: str = "bench", *, start_days: float = HISTORY_DAYS, **loop_extra: Any
    ) -> MerchantConfig:
        data = self.sb.config_dict(
            merchant=name,
            state_path=self.tmp / f"{name}.sqlite",
            start_days=start_days,
            **loop_extra,
        )
        return parse_config(data, file=f"<{name}>", env=self.sb.env())

    def engine(self, cfg: MerchantConfig, clock: Clock | None = None) -> Engine:
        return build_engine(cfg, clock or self.clock)

    def calls(self, api: str | None = None) -> int:
        return len(self.sb.recorder.calls(api))

    def reset_calls(self) -> None:
        self.sb.recorder.clear()


# -- the worker ---------------------------------------------------------------------------


def worker_config(loop_url: str, state_path: Path, *, start: dt.datetime) -> MerchantConfig:
    """A merchant config on the sandbox Loop with every default (page size 250, five
    states, 120-day windows). The warehouse section is never contacted by ingest."""
    return parse_config(
        {
            "merchant": "bench",
            "state_path": str(state_path),
            "loop": {"base_url": loop_url, "api_key": "${LOOP_API_KEY}", "start_at": iso(start)},
            "warehouse": {
                "kind": "shiphero",
                "base_url": "http://127.0.0.1:9",
                "refresh_token": "${SHIPHERO_REFRESH_TOKEN}",
            },
        },
        file="<bench>",
        env={"LOOP_API_KEY": LOOP_KEY, "SHIPHERO_REFRESH_TOKEN": "unused-by-this-benchmark"},
    )


def build_engine(cfg: MerchantConfig, clock: Clock) -> Engine:
    """The worker's pieces exactly as `runner.run_merchant` builds them: a store, the Loop
    client, the connector and the engine. Undo with `close_engine`."""
    store = Store(cfg.state_path, clock)
    loop = build_loop_client(cfg, clock)
    connector = build_connector(cfg, clock, store, stop=threading.Event())
    return Engine(cfg, store, loop, connector, clock=clock, run_id=new_run_id())


def loop_http(engine: Engine) -> HttpClient:
    """The HTTP client of the engine's Loop client (a benchmark builds a real one)."""
    assert isinstance(engine.loop, LoopClient)
    return engine.loop.http


def close_engine(engine: Engine) -> None:
    engine.connector.close()
    loop_http(engine).session.close()
    engine.store.close()


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def ids_by_creation(returns: list[dict[str, Any]], first_id: int) -> list[dict[str, Any]]:
    """Renumber seeded returns so ids ascend with created_at, as Loop's (auto-increment)
    ids do; the seeder draws created_at independently of the id. Line item ids and the
    other id-derived fields follow."""
    returns = sorted(returns, key=lambda r: (r["created_at"], int(r["id"])))
    for rid, raw in enumerate(returns, start=first_id):
        old = raw["id"]
        raw["id"] = str(rid)
        for k, li in enumerate(raw["line_items"], start=1):
            line_id = rid * 10 + k
            li["line_item_id"] = str(line_id)
            li["provider_line_item_id"] = str(13_000_000_000_000 + line_id)
        for ex, li in zip(raw.get("exchanges") or [], raw["line_items"], strict=False):
            ex["exchange_id"] = str(int(li["line_item_id"]) + 500_000_000)
        for key in ("label_url", "status_page_url"):
            if raw.get(key):
                raw[key] = raw[key].replace(f"/{old}", f"/{rid}")
    return returns
