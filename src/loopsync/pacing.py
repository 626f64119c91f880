"""How `serve` paces a fleet of merchants (pure: no threads, no clock, no I/O).

Three decisions, each a function of plain values, used by `scheduling.serve`:

- `pool_size`: how many cycles run at once. Merchants share a bounded pool of worker
  threads, not a thread each: a cycle is mostly waiting on HTTP (Loop, the warehouse) and
  on SQLite, and one interpreter runs one thread's Python at a time. The default is 16
  whatever the merchants at start (a reload may add many to a serve started with one; a
  thread is only made when a cycle finds none idle, so one merchant still uses one).
  `benchmarks/fleet.py` measured an idle cycle at 20-30 ms of CPU (500 merchants every
  30 s: 25-33 threads, latest start under 1.5 s), and against real remotes a cycle waits
  1-2 s, so 16 workers carry about 16 cycles every 2 s, 3,600 merchants at the default
  `every: 15m` kept half busy (docs/SCALING.md has the arithmetic). A thread each cost
  500 threads and 334 MiB at 500 merchants (140 MiB now).
  `--workers N` or $LOOPSYNC_WORKERS overrides it, 1..MAX_WORKERS.
- `first_run_delays`: staggered first cycles. Each merchant's first cycle is put at a
  fixed point of a ramp, its place given by a hash of its name (stable across restarts
  and reloads, independent of the other merchants), so 500 merchants do not all start at
  once. The ramp is (merchants - 1) * STAGGER_SLOT_SECONDS, at most one interval: one
  merchant starts at once (what an operator expects of `serve` with one file), ten spread
  over nine seconds, five hundred over their interval. Later cycles follow the first by
  whole intervals (plus the scheduler's jitter), so the spread lasts.
- `lateness` / `is_late`: how long after it was due a cycle got a worker; late beyond
  LATE_FRACTION of its interval is worth a warning (the fleet benchmark's target).

A job that finds every worker busy waits in the pool's first-in-first-out queue (fair:
no merchant is passed over twice), and a slow merchant holds at most one worker, since a
merchant never has two cycles queued or running (the scheduler's max_instances=1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from loopsync.errors import UsageError

DEFAULT_WORKERS = 16
MAX_WORKERS = 256  # a larger pool buys nothing on a few cores; a typo is caught early
WORKERS_ENV = "LOOPSYNC_WORKERS"
STAGGER_SLOT_SECONDS = 1.0  # one first cycle a second on average, well within capacity
LATE_FRACTION = 0.10


def pool_size(asked: int | None = None) -> int:
    """The pool's size: the operator's figure, else DEFAULT_WORKERS."""
    return DEFAULT_WORKERS if asked is None else asked


def read_workers(flag: str | None, env: Mapping[str, str]) -> int | None:
    """`--workers` (first) or $LOOPSYNC_WORKERS; None when neither is given. A value that
    is not a whole number in 1..MAX_WORKERS is a UsageError naming where it came from."""
    text, source = (flag, "--workers") if flag is not None else (env.get(WORKERS_ENV), WORKERS_ENV)
    if text is None or (source == WORKERS_ENV and not text.strip()):
        return None
    value = text.strip()
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_WORKERS:
        raise UsageError(
            f"{source} must be a whole number from 1 to {MAX_WORKERS}, not {value[:20]!r}"
        )
    return int(value)


def stagger_phase(merchant: str) -> float:
    """Where in [0, 1) of the ramp this merchant's first cycle falls: a hash of its name
    (sha256, not Python's per-process `hash`, so it is the same after a restart)."""
    digest = hashlib.sha256(b"loopsync-stagger\0" + merchant.encode("utf-8", "replace"))
    return int.from_bytes(digest.digest()[:8], "big") / 2**64


@dataclass(frozen=True)
class Pace:
    """One merchant as the stagger sees it: its name and its interval."""

    merchant: str
    every: timedelta


def first_run_delays(merchants: Sequence[Pace]) -> dict[str, timedelta]:
    """How long after start each merchant's first cycle runs (see the module docstring):
    0 for a lone merchant, else its phase of a ramp of (n - 1) slots, capped at its
    interval."""
    ramp = timedelta(seconds=max(0, len(merchants) - 1) * STAGGER_SLOT_SECONDS)
    return {p.merchant: min(ramp, p.every) * stagger_phase(p.merchant) for p in merchants}


def lateness(due: datetime, started: datetime) -> timedelta:
    """How long after it was due a cycle started (never negative: the scheduler fires a
    job a hair early as often as late)."""
    return max(timedelta(0), started - due)


def is_late(late: timedelta, every: timedelta) -> bool:
    return late > every * LATE_FRACTION
