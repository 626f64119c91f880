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

`listener` (serve --http, loopsync.web): started before the first cycle, stopped after the
last; a scheduler job beats its heartbeat every HEARTBEAT_SECONDS, so /healthz fails when
the scheduler's threads stop running jobs, not only when the process is gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
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
    """After the last cycle: /readyz and the page answer while cycles drain."""
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
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=max(MAX_WORKERS, len(configs)))},
        job_defaults={
            "max_instances": 1,
            "coalesce": True,
            "misfire_grace_time": MISFIRE_GRACE_SECONDS,
        },
        timezone=UTC,
    )
    job = _guarded(run_cycle, lambda cfg: _next_due(scheduler, cfg))
    running: dict[str, MerchantConfig] = {}

    def schedule(cfg: MerchantConfig) -> None:
        seconds = int(cfg.every.total_seconds())
        scheduler.add_job(
            job,
            "interval",
            seconds=seconds,
            jitter=min(30, seconds // 10),
            id=_job_id(cfg),
            name=_job_id(cfg),
            replace_existing=True,
            next_run_time=datetime.now(UTC),
            args=[cfg, stop],
        )
        running[cfg.merchant] = cfg

    for cfg in configs:
        schedule(cfg)

    def apply(fresh: list[MerchantConfig]) -> None:
        wanted = {c.merchant: c for c in fresh}
        for merchant in sorted(set(running) - set(wanted)):
            scheduler.remove_job(_job_id(running.pop(merchant)))
            log.info("serve.merchant_removed", merchant=merchant)
        for merchant, cfg in wanted.items():
            if running.get(merchant) != cfg:
                log.info(
                    "serve.merchant_" + ("replaced" if merchant in running else "added"),
                    merchant=merchant,
                    file=cfg.file,
                )
                schedule(cfg)

    def on_event(event: Any) -> None:
        log.warning(
            "scheduler.event",
            code=event.code,
            job=event.job_id,
            error=str(getattr(event, "exception", "") or ""),
        )

    scheduler.add_listener(on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    def idle() -> bool:
        """True when it is time to stop; applies a reload on the way."""
        if stop.is_set():
            return True
        if shutdown.take_reload() and reload is not None:
            fresh = reload()
            if fresh is not None:
                apply(fresh)
            log.info("serve.reloaded", merchants=sorted(running))
        return False

    _start_listener(scheduler, listener)
    log.info("serve.start", merchants=[c.merchant for c in configs])
    scheduler.start()
    try:
        shutdown.watch(stop, until=idle)
        log.info("serve.shutdown", signal=shutdown.name or "stop")
    finally:
        stop.set()
        # Running cycles end at their current request: waited for up to `grace` seconds
        # in a helper thread, so the main thread still acts on a second signal.
        closing = threading.Thread(
            target=scheduler.shutdown, kwargs={"wait": True}, name="loopsync-drain", daemon=True
        )
        closing.start()
        if not shutdown.drain(closing, grace):
            log.warning("serve.left_running", grace=grace)
        _stop_listener(listener)
    log.info("serve.stopped")
    return 0
