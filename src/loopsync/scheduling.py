"""`loopsync serve`: the only module that imports APScheduler (3.x).

One interval job per merchant, max_instances=1, coalesced, misfire grace in minutes, the
first cycle at start. SIGTERM/SIGINT only raise in the main thread; the stop event then
makes running cycles finish their current page, checkpoint and return.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from loopsync.config import MerchantConfig

log = structlog.get_logger("loopsync.serve")
MISFIRE_GRACE_SECONDS = 600


class ShutdownRequested(Exception):  # noqa: N818 - a signal, not an error
    pass


def serve(configs: list[MerchantConfig], run_cycle: Callable[[MerchantConfig,
                                                                threading.Event], Any],
          stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    scheduler = BlockingScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=max(1, len(configs)))},
        job_defaults={"max_instances": 1, "coalesce": True,
                      "misfire_grace_time": MISFIRE_GRACE_SECONDS},
        timezone=UTC,
    )
    for cfg in configs:
        seconds = int(cfg.every.total_seconds())
        scheduler.add_job(run_cycle, "interval", seconds=seconds,
                          jitter=min(30, seconds // 10), id=f"sync:{cfg.merchant}",
                          name=f"sync:{cfg.merchant}", replace_existing=True,
                          next_run_time=datetime.now(UTC), args=[cfg, stop])

    def on_event(event: Any) -> None:
        log.warning("scheduler.event", code=event.code, job=event.job_id,
                    error=str(getattr(event, "exception", "") or ""))

    scheduler.add_listener(on_event, EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)

    def on_signal(signum: int, _frame: Any) -> None:
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)  # a second signal must not abort the drain
        raise ShutdownRequested(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    log.info("serve.start", merchants=[c.merchant for c in configs])
    try:
        scheduler.start()
    except ShutdownRequested as exc:
        log.info("serve.shutdown", signal=str(exc))
    finally:
        stop.set()
        if scheduler.running:
            scheduler.shutdown(wait=True)
        for s, handler in previous.items():
            signal.signal(s, handler)
    log.info("serve.stopped")
    return 0
