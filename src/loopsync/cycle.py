"""One sync cycle for one merchant: ingest -> push -> poll -> act.

`Engine` runs the stages (`loopsync.stages`) in order, each under two guards:

- the stage guard (`_stage`): a stage that fails on a remote outage is recorded in
  `CycleResult.stage_errors` and the next stage still runs: a warehouse outage does not
  hold back ingest, and a Loop outage does not block polling. Refused credentials
  (`AuthError`) stop the whole cycle;
- the outage budget (`_each_return`, for the per-return stages push and act): one return's
  failure is recorded against it and the batch goes on (a poison record holds back only
  itself), but OUTAGE_AFTER transient failures in a row mean the remote is down, so the
  stage stops.

Push works through a backlog in batches (`push.batch` returns or `push.batch_time`); poll
(of the RMAs open before the push began) and act run between batches (when
`stages.push.poll_between` gives them their turn) and once more after the last (every
open RMA), so a return the warehouse received is not held up behind a backfill. A stage
that failed on a remote outage is not run again in the same cycle (the remote is down;
the next cycle tries again). Ingest and push report progress at info every
`progress_every` (`loopsync.progress`), and the run row's counts are checkpointed as
often, so `loopsync status` shows live numbers during a long cycle.

Each stage resumes where the last one stopped, from the store alone; every remote side
effect runs under the ledger (`loopsync.effects`). Returns loopsync refuses to guess about
are REPORTED for a person and listed in `CycleResult.attention` (`needs_attention`).

The class keeps its name `Engine` (the runner, the CLI's import paths, the benchmarks and
the tests build it by that name); it holds no stage logic, only the order and the guards.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import structlog

from loopsync.config import MerchantConfig
from loopsync.connectors.base import WarehouseConnector
from loopsync.errors import (
    AuthError,
    PermanentError,
    RateLimited,
    RemoteError,
    TransientError,
    Unreadable,
)
from loopsync.logs import stage_context
from loopsync.models import printable
from loopsync.ports import LoopApi
from loopsync.progress import Progress, ProgressReport
from loopsync.stages import act as act_stage
from loopsync.stages import ingest as ingest_stage
from loopsync.stages import poll as poll_stage
from loopsync.stages import push as push_stage
from loopsync.stages.context import CycleContext, one_records_fault, unexpected
from loopsync.state import Store
from loopsync.timeutil import Clock

log = structlog.get_logger("loopsync.engine")

# Give up on a stage after this many consecutive transient failures: the remote is down,
# and hammering it helps nobody. The next cycle tries again.
OUTAGE_AFTER = 3


@dataclass
class CycleCounts:
    pulled: int = 0  # return objects read from Loop (with overlap re-reads)
    new: int = 0  # returns seen for the first time
    changed: int = 0  # known returns whose snapshot changed
    asn_rows: int = 0
    malformed: int = 0
    skipped: int = 0  # not for the warehouse, with a reason
    waiting: int = 0  # warehouse not ready yet
    pushed: int = 0  # RMAs created
    linked: int = 0  # RMAs found (reconciled, or created by the warehouse itself)
    rejected: int = 0
    polled: int = 0
    processed: int = 0
    flagged: int = 0
    ignored: int = 0
    reported: int = 0
    settled: int = 0
    notes: int = 0
    graded: int = 0
    errors: int = 0


@dataclass
class CycleResult:
    merchant: str
    run_id: str
    counts: CycleCounts
    duration: float = 0.0
    stage_errors: dict[str, str] = field(default_factory=dict)
    planned: list[str] = field(default_factory=list)  # dry run: what would have been done
    events: list[dict[str, Any]] = field(default_factory=list)  # what happened, for the demo
    stopped: bool = False
    # Returns loopsync refused to guess about this run (an action whose outcome cannot be
    # established, an ambiguous match): "return <id>: why". Each is REPORTED in the store
    # and listed by `loopsync status`; a run with any should not exit as plainly "ok".
    attention: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.counts.errors == 0

    @property
    def needs_attention(self) -> bool:
        return bool(self.attention)


class Engine:
    """One merchant's cycle: the stages in order, under the stage guard and the outage
    budget. `ctx` is what every stage shares; the attributes below read it."""

    def __init__(
        self,
        cfg: MerchantConfig,
        store: Store,
        loop: LoopApi,
        connector: WarehouseConnector,
        *,
        clock: Clock,
        run_id: str,
        stop: threading.Event | None = None,
        dry_run: bool = False,
    ) -> None:
        self.ctx = CycleContext(
            cfg=cfg,
            store=store,
            loop=loop,
            connector=connector,
            clock=clock,
            run_id=run_id,
            stop=stop or threading.Event(),
            dry_run=dry_run,
            result=CycleResult(cfg.merchant, run_id, CycleCounts()),
            log=log.bind(merchant=cfg.merchant, run_id=run_id),
        )
        self._checkpointed: float | None = None  # clock.monotonic() of the last checkpoint

    @property
    def cfg(self) -> MerchantConfig:
        return self.ctx.cfg

    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def loop(self) -> LoopApi:
        return self.ctx.loop

    @property
    def connector(self) -> WarehouseConnector:
        return self.ctx.connector

    @property
    def result(self) -> CycleResult:
        return self.ctx.result

    @property
    def counts(self) -> CycleCounts:
        return self.ctx.result.counts

    # -- the cycle ------------------------------------------------------------------------
    def run_cycle(self, only: set[str] | None = None, *, ingest: bool = True) -> CycleResult:
        started = time.monotonic()
        if ingest:
            self._stage("ingest", self.ingest)
            if self.ctx.cfg.loop.asn_enabled:
                self._stage("asn", self.ingest_asn)
        self._work_through(only)
        self.result.duration = time.monotonic() - started
        self.result.stopped = self.ctx.stop.is_set()
        return self.result

    def _stage(self, name: str, fn: Callable[[], None]) -> None:
        """The stage guard: a remote failure ends this stage only (recorded)."""
        if self.ctx.stop.is_set():
            return
        try:
            with stage_context(name):  # `stage` on every log line of the stage
                fn()
        except AuthError:
            raise  # credentials refused: the whole cycle stops (runner records why, once)
        except RemoteError as exc:
            self.counts.errors += 1
            self.result.stage_errors[name] = printable(str(exc))  # remote text: no surrogates
            self.ctx.log.error("stage.failed", stage=name, error=self.result.stage_errors[name])
            record_stage_failure(self.store, self.ctx.run_id, name, exc)

    def _work_through(self, only: set[str] | None) -> None:
        """Push the backlog batch by batch, poll and act between batches (when due) and
        after the last one."""
        batches = _Batches(self, only)
        # Between batches only the RMAs open before this push are polled: one created
        # minutes ago has not been received yet, and polling thousands of fresh RMAs would
        # spend the warehouse's budget the backlog needs. The last poll reads them all.
        watched = {
            row.return_id for row in self.store.rmas.open() if only is None or row.return_id in only
        }
        poll_took = 0.0
        while True:
            self._stage("push", batches.next_batch)
            if batches.backlog is None or batches.backlog.done or self.ctx.stop.is_set():
                break
            if push_stage.poll_between(batches.pushed_for(), poll_took):
                poll_took = self._poll_and_act(watched, only)
                batches.polled()
        self._poll_and_act(only, only)
        batches.finish()

    def _poll_and_act(self, poll_only: set[str] | None, only: set[str] | None) -> float:
        """Poll (`poll_only`), then act; a stage that already failed this cycle is not run
        again. How long they took (seconds, by the clock)."""
        started = self.ctx.clock.monotonic()
        for name, fn, ids in (("poll", self.poll, poll_only), ("act", self.act, only)):
            if name not in self.result.stage_errors:
                self._stage(name, functools.partial(fn, ids))
        self.checkpoint()
        return self.ctx.clock.monotonic() - started

    def progress(self, task: str, *, total: int | None, unit: str = "returns") -> Progress:
        """A `Progress` for long work of this cycle: its lines are logged and checkpoint
        the run's counts."""
        return Progress(
            task,
            clock=self.ctx.clock,
            report=self._report,
            total=total,
            unit=unit,
            every=self.cfg.progress_every.total_seconds(),
        )

    def _report(self, report: ProgressReport) -> None:
        self.ctx.log.info(f"{report.task}.progress", **report.fields())
        self.checkpoint()

    def checkpoint(self) -> None:
        """The run row's counts so far (at most every `progress_every`), for `status`."""
        now = self.ctx.clock.monotonic()
        if (
            self._checkpointed is not None
            and now - self._checkpointed < self.cfg.progress_every.total_seconds()
        ):
            return
        self._checkpointed = now
        self.store.runs.checkpoint(self.ctx.run_id, asdict(self.counts))

    def _each_return(
        self,
        stage: str,
        ids: Iterable[str],
        work: Callable[[str], None],
        only: set[str] | None,
        streak: list[int] | None = None,
    ) -> None:
        """The outage budget: run `work` per return; one return's failure is recorded and
        the batch goes on, but a run of transient failures means the remote is down, so
        the stage stops. `streak` carries the run of failures from one batch to the next."""
        streak = [0] if streak is None else streak
        for rid in ids:
            if self.ctx.stop.is_set():
                return
            if only is not None and rid not in only:
                continue
            try:
                work(rid)
                streak[0] = 0
            except AuthError:
                raise  # not this return's fault: every other one would be refused too
            except TransientError as exc:
                streak[0] += 1
                self._transient(rid, stage, exc)
                if streak[0] >= OUTAGE_AFTER:
                    raise
            except Exception as exc:
                text = _failure_text(exc)
                if text is None:
                    raise
                self._failed(rid, stage, text)

    def _transient(self, rid: str, stage: str, exc: TransientError) -> None:
        if isinstance(exc, RateLimited):
            # The remote pacing us is no problem of this return (nor an error of the
            # cycle): it is tried again next cycle; a run of them still ends the stage.
            self.ctx.log.info("return.throttled", return_id=rid, stage=stage, reason=str(exc))
        else:
            self._failed(rid, stage, str(exc))

    def _failed(self, rid: str, stage: str, message: str) -> None:
        self.counts.errors += 1
        self.ctx.problem(rid, stage, message)

    def _problem(self, rid: str | None, stage: str, message: str) -> None:
        """A problem row about a return (kept for callers of the old engine API)."""
        self.ctx.problem(rid, stage, message)

    # -- the stages -----------------------------------------------------------------------
    def ingest(self) -> None:
        progress = self.progress("ingest", total=None, unit="windows")
        try:
            ingest_stage.ingest(self.ctx, progress)
        finally:
            progress.finish()

    def ingest_asn(self) -> None:
        ingest_stage.ingest_asn(self.ctx)

    def import_window(self, start: datetime, end: datetime) -> set[str]:
        """Manual import of a date range: every state, no live cursor moves."""
        progress = self.progress("import", total=None, unit="windows")
        try:
            return ingest_stage.import_window(self.ctx, start, end, progress)
        finally:
            progress.finish(always=True)  # a person is waiting: say how it ended

    def import_return(self, return_id: str) -> set[str]:
        """Manual import of one return (see stages.ingest.import_return)."""
        return ingest_stage.import_return(self.ctx, return_id)

    def push(self, only: set[str] | None = None) -> None:
        """The whole backlog in one pass, no batches (`run_cycle` pushes in batches)."""
        ids = [i for i in push_stage.return_ids(self.ctx, only) if only is None or i in only]
        ahead = push_stage.looked_ahead(self.ctx, ids)
        self._each_return("push", ahead, lambda rid: push_stage.push_one(self.ctx, rid), only)

    def poll(self, only: set[str] | None = None) -> None:
        poll_stage.poll(self.ctx, only)

    def act(self, only: set[str] | None = None) -> None:
        """Carry out every planned or interrupted effect, return by return, in plan order."""
        ids = act_stage.return_ids(self.ctx)
        self._each_return("act", ids, lambda rid: act_stage.run_effects(self.ctx, rid), only)


class _Batches:
    """One cycle's push backlog, handed to the push stage a batch at a time."""

    def __init__(self, engine: Engine, only: set[str] | None) -> None:
        self.engine, self.only = engine, only
        self.backlog: push_stage.Backlog | None = None
        self.progress: Progress | None = None
        self.streak = [0]  # transient failures in a row, across batches (outage budget)
        self.since_poll = engine.ctx.clock.monotonic()

    def next_batch(self) -> None:
        """Push one batch (the backlog is taken on the first call, under the stage guard)."""
        engine = self.engine
        if self.backlog is None:
            ids = push_stage.return_ids(engine.ctx, self.only)
            if self.only is not None:
                ids = [i for i in ids if i in self.only]
            ctx = engine.ctx
            self.backlog = push_stage.Backlog(ids, lambda ahead: push_stage.prepare(ctx, ahead))
            if ids:
                self.progress = engine.progress("push", total=len(ids))
        progress = self.progress

        def work(rid: str) -> None:
            try:
                push_stage.push_one(engine.ctx, rid)
            finally:
                if progress is not None:
                    progress.add()

        try:
            engine._each_return("push", self._batch(self.backlog), work, None, self.streak)
        except BaseException:
            self.backlog.abandoned = True  # the stage stops; the rest waits for a cycle
            raise
        engine.checkpoint()

    def _batch(self, backlog: push_stage.Backlog) -> Iterator[str]:
        """The next returns of the backlog, up to the batch's bounds."""
        clock, limits = self.engine.ctx.clock, self.engine.cfg.push
        started, handled = clock.monotonic(), 0
        while not backlog.done:
            if handled and push_stage.batch_over(handled, clock.monotonic() - started, limits):
                return
            handled += 1
            yield backlog.take()

    def pushed_for(self) -> float:
        return self.engine.ctx.clock.monotonic() - self.since_poll

    def polled(self) -> None:
        self.since_poll = self.engine.ctx.clock.monotonic()

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.finish()


def _failure_text(exc: Exception) -> str | None:
    """One return's non-transient failure, for its problem row; None for a fault of no
    one record (a local fault, a control-flow signal): the stage stops."""
    if isinstance(exc, PermanentError):
        return str(exc)
    if isinstance(exc, Unreadable):  # the return, or the warehouse's answer about it
        return f"unreadable: {exc}"
    if not one_records_fault(exc):
        return None
    # One return's unexpected trouble (a bug, data no parser foresaw) is recorded
    # against it; the other returns go on.
    return unexpected(exc)


def record_stage_failure(store: Store, run_id: str, stage: str, exc: RemoteError) -> None:
    """Keep a stage failure in the state file with its reason (`status` shows it). The
    remote pacing us (RateLimited) is no failure of ours: not recorded as a problem."""
    if not isinstance(exc, RateLimited):
        store.runs.add_stage_failure(run_id, stage, printable(str(exc)))
