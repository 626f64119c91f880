"""`loopsync serve`: the only module that imports APScheduler (3.x).

One interval job per merchant, max_instances=1, coalesced, misfire grace in minutes, the
first cycle at start. The scheduler runs in the background; the main thread watches for
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
the scheduler's threads stop running jobs, not only when the process is gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from loopsync.config import MerchantConfig
from loopsync.redaction import clip
from loopsync.shutdown import Shutdown

log = structlog.get_logger("loopsync.serve")
MISFIRE_GRACE_SECONDS = 600
# Threads are made only when needed; room for merchants added by a reload.
MAX_WORKERS = 64

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


def _guarded(run_cycle: Cycle, due: Callable[[MerchantConfig], NextDue]) -> Cycle:
    """The job: one merchant's exception is logged and contained (never a traceback)."""

    def job(cfg: MerchantConfig, stop: threading.Event) -> None:
        try:
            run_cycle(cfg, stop, next_due=due(cfg))
        except Exception as exc:  # noqa: BLE001 - one merchant must not stop the rest
            log.error(
                "serve.cycle_failed",
                merchant=cfg.merchant,
                error=clip(" ".join(f"{type(exc).__name__}: {exc}".split()), 500, ""),
            )

    return job


def _new_scheduler(merchants: int) -> BackgroundScheduler:
    return BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=max(MAX_WORKERS, merchants))},
        job_defaults={
            "max_instances": 1,
            "coalesce": True,
            "misfire_grace_time": MISFIRE_GRACE_SECONDS,
        },
        timezone=UTC,
    )


class _Jobs:
    """The merchants scheduled now: one interval job each, added, replaced or removed."""

    def __init__(self, scheduler: BackgroundScheduler, job: Cycle, stop: threading.Event) -> None:
        self.scheduler = scheduler
        self.job = job
        self.stop = stop
        self.running: dict[str, MerchantConfig] = {}

    def schedule(self, cfg: MerchantConfig) -> None:
        seconds = int(cfg.every.total_seconds())
        # APScheduler keeps its own wall-clock timeline: the first cycle is due at once.
        self.scheduler.add_job(
            self.job,
            "interval",
            seconds=seconds,
            jitter=min(30, seconds // 10),
            id=_job_id(cfg),
            name=_job_id(cfg),
            replace_existing=True,
            next_run_time=datetime.now(UTC),
            args=[cfg, self.stop],
        )
        self.running[cfg.merchant] = cfg

    def apply(self, fresh: list[MerchantConfig]) -> None:
        """Run exactly `fresh`: drop merchants no longer there, (re)schedule changed ones."""
        wanted = {c.merchant: c for c in fresh}
        for merchant in sorted(set(self.running) - set(wanted)):
            self.scheduler.remove_job(_job_id(self.running.pop(merchant)))
            log.info("serve.merchant_removed", merchant=merchant)
        for merchant, cfg in wanted.items():
            if self.running.get(merchant) != cfg:
                log.info(
                    "serve.merchant_" + ("replaced" if merchant in self.running else "added"),
                    merchant=merchant,
                    file=cfg.file,
                )
                self.schedule(cfg)

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
) -> int:
    """Run every merchant on its schedule until `stop` is set or a signal arrives (the
    `shutdown` handlers must be installed by the caller to see signals). `reload`: the
    configurations to run after a SIGHUP (None: keep the current ones)."""
    stop = stop or threading.Event()
    shutdown = shutdown or Shutdown()
    scheduler = _new_scheduler(len(configs))
    jobs = _Jobs(scheduler, _guarded(run_cycle, lambda cfg: _next_due(scheduler, cfg)), stop)
    for cfg in configs:
        jobs.schedule(cfg)
    scheduler.add_listener(log_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    _start_listener(scheduler, listener)

    log.info("serve.start", merchants=[c.merchant for c in configs])
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
    code: int, job_id: str | None, *, scheduled: datetime | None = None, error: str = ""
) -> SchedulerEvent:
    """Pure: what an APScheduler event means for the merchant whose job it is."""
    merchant = _merchant_of(job_id)
    when = scheduled.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if scheduled else "?"
    if code == EVENT_JOB_MAX_INSTANCES:
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


def log_event(event: Any) -> None:
    """The scheduler's listener: one readable warning line per event."""
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
    )
    log.warning(described.event, merchant=described.merchant, message=described.message)
