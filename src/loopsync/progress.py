"""Progress of long work (ingest, push, `import`): done / total, rate and ETA, reported at
most once a period by the injected clock.

`estimate` is pure arithmetic over plain numbers; `Progress` counts and hands a typed
`ProgressReport` to a callback (the cycle logs it at info and checkpoints the run's counts)
when the period has passed, and once more at `finish`. Time is read only through the
clock given (`Clock.monotonic`), so tests drive it with `FakeClock`.

Units: `done`/`total` measure how far the work is (returns for push; windows for ingest and
`import`, whose totals Loop's cursor-paged list cannot tell); `items` counts what was
handled (returns), and the rate is items per second. The ETA assumes the remaining units
go at the average pace so far: a rough figure, never a promise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from loopsync.timeutil import Clock

# How often a progress line is logged unless the config says otherwise (`progress_every`).
DEFAULT_EVERY = 10.0  # seconds


@dataclass(frozen=True)
class ProgressReport:
    """One progress line: `task` ("ingest", "push", "import"), how far, how fast."""

    task: str
    done: int
    total: int | None
    unit: str  # what done/total count: "returns", "windows"
    items: int  # returns handled so far
    elapsed: float  # seconds since the work began
    rate: float | None  # items per second; None before any time has passed
    eta: float | None  # seconds left at the pace so far; None when unknown
    final: bool = False  # the last line: the work ended (finished, stopped or failed)

    def fields(self) -> dict[str, object]:
        """The report as log fields (rounded for a person)."""
        return {
            "task": self.task,
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
            "items": self.items,
            "elapsed_s": round(self.elapsed, 1),
            "rate_per_s": None if self.rate is None else round(self.rate, 1),
            "eta_s": None if self.eta is None else round(self.eta),
            "final": self.final,
        }


def estimate(
    task: str,
    *,
    done: int,
    total: int | None,
    unit: str,
    items: int,
    elapsed: float,
    final: bool = False,
) -> ProgressReport:
    """The report for work `done` of `total` after `elapsed` seconds (pure)."""
    elapsed = max(0.0, elapsed)
    rate = items / elapsed if elapsed > 0 else None
    eta: float | None = None
    if total is not None and done > 0 and elapsed > 0:
        eta = elapsed * max(0, total - done) / done
    elif total is not None and done >= total:
        eta = 0.0
    return ProgressReport(task, done, total, unit, items, elapsed, rate, eta, final)


def due(last: float, now: float, every: float) -> bool:
    """Has a period passed since the last report (pure)?"""
    return now - last >= every


class Progress:
    """Counts one piece of long work and reports it every `every` seconds."""

    def __init__(
        self,
        task: str,
        *,
        clock: Clock,
        report: Callable[[ProgressReport], None],
        total: int | None = None,
        unit: str = "returns",
        every: float = DEFAULT_EVERY,
    ) -> None:
        self.task, self.unit, self.total = task, unit, total
        self.clock, self.report, self.every = clock, report, every
        self.started = self.last = clock.monotonic()
        self.done = 0
        self.items = 0
        self.reported = False  # a line was logged: the work was long enough to show

    def add(self, done: int = 1, *, items: int | None = None) -> None:
        """`done` more units (and `items` more handled; as many as `done` by default);
        reports when the period has passed."""
        self.done += done
        self.items += done if items is None else items
        now = self.clock.monotonic()
        if due(self.last, now, self.every):
            self.last = now
            self.reported = True
            self.report(self.snapshot(now))

    def grow(self, more: int) -> None:
        """The total grew (a window resumed, a batch found more work)."""
        self.total = (self.total or 0) + more

    def snapshot(self, now: float | None = None, *, final: bool = False) -> ProgressReport:
        now = self.clock.monotonic() if now is None else now
        return estimate(
            self.task,
            done=self.done,
            total=self.total,
            unit=self.unit,
            items=self.items,
            elapsed=now - self.started,
            final=final,
        )

    def finish(self, *, always: bool = False) -> None:
        """The last line, whatever the period: the work ended. Only for work long enough
        to have shown progress, unless `always` (a person waits on `import`)."""
        if self.reported or always:
            self.report(self.snapshot(final=True))
