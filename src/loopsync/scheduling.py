"""`loopsync serve`: the only module that imports APScheduler (3.x).

One interval job per merchant, max_instances=1, coalesced, misfire grace in minutes. The
merchants share a bounded pool of worker threads (loopsync.pacing.pool_size: `--workers`,
default 16), not a thread each: a cycle due while every worker is busy
waits in the pool's first-in-first-out queue, a slow merchant holds at most one worker,
and each cycle logs how late it started (`serve.cycle_started`, `late_s`; a warning
`serve.cycle_late` past 10 % of its interval). A cycle that was still queued when a stop
arrived does not start. First cycles are staggered (loopsync.pacing.first_run_delays):
one merchant starts at once, many spread over a ramp of at most one interval, each at a
point fixed by a hash of its name. The scheduler runs in the background; the main thread watches for
signals (loopsync.shutdown): SIGTERM/SIGINT set the stop event, which makes running
cycles finish their current request, checkpoint and return, then the process exits 0; a
second one forces the exit. SIGHUP re-reads the configuration: merchants are added,
removed or replaced (a running cycle of a replaced merchant finishes first).

A merchant's cycle never raises into the scheduler: `run_cycle` contains its own
failures (cli.cmd_serve), and anything that still escapes is logged here, one line, and
the merchant runs again on its schedule.

APScheduler 3.11 facts relied on (defaults, misfires, no signal handlers, the first run):
docs/api/design-notes.md, "Scheduling: APScheduler 3.x".

`listener` (serve --http, loopsync.web): started before the first cycle, stopped after the
last; a scheduler job beats its heartbeat every HEARTBEAT_SECONDS, so /healthz fails when
the scheduler stops running jobs, not only when the process is gone. The heartbeat has a
thread of its own: a pool busy with long cycles (a new merchant's backfill takes minutes)
is late, which `serve.cycle_late` says, not dead, which a liveness probe would act on
by restarting the pod (and its stagger).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from loopsync import pacing, telemetry
from loopsync.config import MerchantConfig
from loopsync.redaction import clip
from loopsync.shutdown import Shutdown
from loopsync.timeutil import Clock, SystemClock

log = structlog.get_logger("loopsync.serve")
# Checked when a queued job gets its worker (design-notes): minutes, so a job that waited
# behind a busy pool still runs; one that waited longer is reported missed and coalesced.
MISFIRE_GRACE_SECONDS = 600

HEARTBEAT_SECONDS = 5  # web.HEARTBEAT_SECONDS: /healthz allows three missed beats

# run_cycle(cfg, stop, next_due=...): `next_due()` is when the scheduler runs this merchant
# next, asked at the cycle's end (the scheduler has moved the job on by then), for `status`.
Cycle = Callable[..., Any]
NextDue = Callable[[], datetime | None]


class Listener(Protocol):
    """What serve needs of the HTTP listener (loopsync.web.Listener)."""

    def start(self) -> None: ...

    def beat(self) -> None: ...

    def draining(self) -> None: ...

    def stop(self) -> None: ...


def _job_id(cfg: MerchantConfig) -> str:
    return f"sync:{cfg.merchant}"


def _next_due(scheduler: BackgroundScheduler, cfg: MerchantConfig) -> NextDue:
    def next_due() -> datetime | None:
        when = getattr(scheduler.get_job(_job_id(cfg)), "next_run_time", None)
        return when if isinstance(when, datetime) else None

    return next_due


class Pool(ThreadPoolExecutor):  # type: ignore[misc]  # APScheduler 3.x ships no types
    """The merchants' bounded pool (APScheduler's thread pool, FIFO): it also remembers
    when each submitted cycle was due, so the cycle can tell how long it waited. One entry
    per merchant is enough: with max_instances=1 a merchant has at most one cycle queued
    or running, and the entry is written before the cycle is handed to a thread."""

    def __init__(self, workers: int, clock: Clock) -> None:
        super().__init__(max_workers=workers)
        self.workers = workers
        self.clock = clock
        self._lock = threading.Lock()
        self._due: dict[str, datetime] = {}
        self.busy = 0
        self.peak = 0  # the most cycles that ever ran at once (<= workers)

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        self.expect(job.id, run_times[-1])  # coalesced: the latest is the one that runs
        super()._do_submit_job(job, run_times)

    def expect(self, job_id: str, due: datetime) -> None:
        """A cycle of `job_id`, due at `due`, is about to be queued."""
        with self._lock:
            self._due[job_id] = due

    def begin(self, job_id: str) -> timedelta | None:
        """A cycle got its worker: how late it is (None: not submitted by the scheduler)."""
        with self._lock:
            due = self._due.pop(job_id, None)
            self.busy += 1
            self.peak = max(self.peak, self.busy)
        return None if due is None else pacing.lateness(due, self.clock.now())

    def end(self) -> None:
        with self._lock:
            self.busy -= 1

    def queued(self, job_id: str) -> bool:
        """A cycle of `job_id` waits for a worker (queued, not begun)."""
        with self._lock:
            return job_id in self._due


def _guarded(run_cycle: Cycle, due: Callable[[MerchantConfig], NextDue], pool: Pool) -> Cycle:
    """The job: one merchant's exception is logged and contained (never a traceback)."""

    def job(cfg: MerchantConfig, stop: threading.Event) -> None:
        late = pool.begin(_job_id(cfg))
        try:
            if stop.is_set():  # queued when the stop came: the drain waits for none of these
                return
            _log_start(cfg, late)
            run_cycle(cfg, stop, next_due=due(cfg))
        except Exception as exc:  # noqa: BLE001 - one merchant must not stop the rest
            log.error(
                "serve.cycle_failed",
                merchant=cfg.merchant,
                error=clip(" ".join(f"{type(exc).__name__}: {exc}".split()), 500, ""),
            )
        finally:
            pool.end()

    return job


def _log_start(cfg: MerchantConfig, late: timedelta | None) -> None:
    if late is None:
        return
    late_s = round(late.total_seconds(), 3)
    log.info("serve.cycle_started", merchant=cfg.merchant, late_s=late_s)
    # for platforms (loopsync_cycle_start_lateness_seconds): a log line is no alert
    telemetry.emit(telemetry.CycleStarted(cfg.merchant, late.total_seconds()))
    if pacing.is_late(late, cfg.every):
        log.warning(
            "serve.cycle_late",
            merchant=cfg.merchant,
            late_s=late_s,
            every_s=cfg.every.total_seconds(),
            hint="every worker was busy: see `serve --workers` in the README",
        )


def _new_scheduler(pool: Pool) -> BackgroundScheduler:
    return BackgroundScheduler(
        # The heartbeat's own thread: see the module docstring.
        executors={"default": pool, "heartbeat": ThreadPoolExecutor(max_workers=1)},
        job_defaults={
            "max_instances": 1,
            "coalesce": True,
            "misfire_grace_time": MISFIRE_GRACE_SECONDS,
        },
        timezone=UTC,
    )


class _Jobs:
    """The merchants scheduled now: one interval job each, added, replaced or removed."""

    def __init__(
        self,
        scheduler: BackgroundScheduler,
        job: Cycle,
        stop: threading.Event,
        *,
        clock: Clock,
        stagger: bool = True,
    ) -> None:
        self.scheduler = scheduler
        self.job = job
        self.stop = stop
        self.clock = clock
        self.stagger = stagger
        self.running: dict[str, MerchantConfig] = {}

    def schedule_all(self, cfgs: list[MerchantConfig]) -> None:
        """Schedule `cfgs` together: their first cycles staggered among themselves."""
        delays = pacing.first_run_delays([pacing.Pace(c.merchant, c.every) for c in cfgs])
        # APScheduler keeps its own wall-clock timeline: the clock must be a real one.
        now = self.clock.now()
        for cfg in cfgs:
            self.schedule(cfg, now + (delays[cfg.merchant] if self.stagger else timedelta(0)))

    def schedule(self, cfg: MerchantConfig, first: datetime) -> None:
        seconds = int(cfg.every.total_seconds())
        self.scheduler.add_job(
            self.job,
            "interval",
            seconds=seconds,
            jitter=min(30, seconds // 10),
            id=_job_id(cfg),
            name=_job_id(cfg),
            replace_existing=True,
            next_run_time=first,
            args=[cfg, self.stop],
        )
        self.running[cfg.merchant] = cfg

    def apply(self, fresh: list[MerchantConfig]) -> None:
        """Run exactly `fresh`: drop merchants no longer there, (re)schedule changed ones."""
        wanted = {c.merchant: c for c in fresh}
        for merchant in sorted(set(self.running) - set(wanted)):
            self.scheduler.remove_job(_job_id(self.running.pop(merchant)))
            log.info("serve.merchant_removed", merchant=merchant)
        changed = [cfg for merchant, cfg in wanted.items() if self.running.get(merchant) != cfg]
        for cfg in changed:
            log.info(
                "serve.merchant_" + ("replaced" if cfg.merchant in self.running else "added"),
                merchant=cfg.merchant,
                file=cfg.file,
            )
        self.schedule_all(changed)  # one added merchant starts at once, many are staggered

    def idle(
        self, shutdown: Shutdown, reload: Callable[[], list[MerchantConfig] | None] | None
    ) -> bool:
        """True when it is time to stop; applies a reload on the way."""
        if self.stop.is_set():
            return True
        if shutdown.take_reload() and reload is not None:
            fresh = reload()
            if fresh is not None:
                self.apply(fresh)
            log.info("serve.reloaded", merchants=sorted(self.running))
        return False


def _drain(scheduler: BackgroundScheduler, shutdown: Shutdown, grace: float) -> None:
    """Running cycles end at their current request: waited for up to `grace` seconds in a
    helper thread, so the main thread still acts on a second signal."""
    closing = threading.Thread(
        target=scheduler.shutdown, kwargs={"wait": True}, name="loopsync-drain", daemon=True
    )
    closing.start()
    if not shutdown.drain(closing, grace):
        log.warning("serve.left_running", grace=grace)


def _start_listener(scheduler: Any, listener: Listener | None) -> None:
    """The heartbeat is a job: it beats only while the scheduler runs jobs."""
    if listener is None:
        return
    scheduler.add_job(
        listener.beat,
        "interval",
        seconds=HEARTBEAT_SECONDS,
        id="heartbeat",
        name="heartbeat",
        executor="heartbeat",
        next_run_time=datetime.now(UTC),
    )
    listener.start()


def _stop_listener(listener: Listener | None) -> None:
    """After the last cycle: the page answers (and /readyz says 503) while cycles drain."""
    if listener is not None:
        listener.stop()


def serve(
    configs: list[MerchantConfig],
    run_cycle: Cycle,
    stop: threading.Event | None = None,
    *,
    shutdown: Shutdown | None = None,
    reload: Callable[[], list[MerchantConfig] | None] | None = None,
    grace: float = 65.0,
    listener: Listener | None = None,
    workers: int | None = None,
    stagger: bool = True,
    clock: Clock | None = None,
) -> int:
    """Run every merchant on its schedule until `stop` is set or a signal arrives (the
    `shutdown` handlers must be installed by the caller to see signals). `reload`: the
    configurations to run after a SIGHUP (None: keep the current ones). `workers`: the
    pool's size (None: pacing.pool_size's default); `stagger=False` starts every first
    cycle at once (tests); `clock` must read the wall clock APScheduler runs on."""
    stop = stop or threading.Event()
    shutdown = shutdown or Shutdown()
    clock = clock or SystemClock()
    pool = Pool(pacing.pool_size(workers), clock)
    scheduler = _new_scheduler(pool)
    job = _guarded(run_cycle, lambda cfg: _next_due(scheduler, cfg), pool)
    jobs = _Jobs(scheduler, job, stop, clock=clock, stagger=stagger)
    jobs.schedule_all(configs)
    scheduler.add_listener(
        lambda event: log_event(event, pool),
        EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES,
    )
    _start_listener(scheduler, listener)

    log.info("serve.start", merchants=[c.merchant for c in configs], workers=pool.workers)
    scheduler.start()
    try:
        shutdown.watch(stop, until=lambda: jobs.idle(shutdown, reload))
        log.info("serve.shutdown", signal=shutdown.name or "stop")
    finally:
        stop.set()
        if listener is not None:
            listener.draining()  # /readyz fails from here; /healthz stays up while cycles end
        _drain(scheduler, shutdown, grace)
        _stop_listener(listener)
    log.info("serve.stopped")
    return 0


# -- scheduler events, in words ------------------------------------------------------------


@dataclass(frozen=True)
class SchedulerEvent:
    """One APScheduler event as a person reads it (not `code 65536`)."""

    event: str  # the log event name: scheduler.skipped, scheduler.job_failed, ...
    merchant: str
    message: str


def _merchant_of(job_id: str | None) -> str:
    job_id = job_id or ""
    return job_id.removeprefix("sync:") if job_id.startswith("sync:") else job_id


def describe_event(
    code: int,
    job_id: str | None,
    *,
    scheduled: datetime | None = None,
    error: str = "",
    queued: bool = False,
) -> SchedulerEvent:
    """Pure: what an APScheduler event means for the merchant whose job it is. `queued`:
    the previous cycle has not got a worker yet (the pool is full), which is not a slow
    merchant but a busy process, and is said so."""
    merchant = _merchant_of(job_id)
    when = scheduled.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if scheduled else "?"
    if code == EVENT_JOB_MAX_INSTANCES:
        if queued:
            return SchedulerEvent(
                "scheduler.skipped",
                merchant,
                f"skipped: the previous cycle of {merchant} is still waiting for a worker"
                " (every worker is busy: see `serve --workers` in the README)",
            )
        return SchedulerEvent(
            "scheduler.skipped",
            merchant,
            f"skipped: the previous cycle of {merchant} is still running",
        )
    if code == EVENT_JOB_MISSED:
        return SchedulerEvent(
            "scheduler.skipped",
            merchant,
            f"skipped: the cycle of {merchant} due at {when} could not start"
            f" within {MISFIRE_GRACE_SECONDS} s (the process was busy or"
            " asleep); the next one runs on schedule",
        )
    if code == EVENT_JOB_ERROR:
        return SchedulerEvent(
            "scheduler.job_failed",
            merchant,
            f"the cycle of {merchant} failed: {error or 'unknown error'};"
            " it runs again on its schedule",
        )
    return SchedulerEvent(
        "scheduler.event", merchant, f"scheduler event {code} for {merchant or 'no job'}"
    )


def log_event(event: Any, pool: Pool | None = None) -> None:
    """The scheduler's listener: one readable warning line per event (`pool`: serve's,
    which knows whether a skipped cycle's predecessor runs or waits for a worker)."""
    exception = getattr(event, "exception", None)
    error = (
        clip(" ".join(f"{type(exception).__name__}: {exception}".split()), 500, "")
        if exception is not None
        else ""
    )
    described = describe_event(
        event.code,
        getattr(event, "job_id", None),
        scheduled=getattr(event, "scheduled_run_time", None),
        error=error,
        queued=pool is not None and pool.queued(str(getattr(event, "job_id", ""))),
    )
    log.warning(described.event, merchant=described.merchant, message=described.message)
