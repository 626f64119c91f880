"""Runs one cycle for one merchant: lock, store, clients, engine, run record, summary.
`loopsync run`, `serve` and `import` all come through here, so they share one code path."""

from __future__ import annotations

import threading
import uuid
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from loopsync import logs
from loopsync.config import MerchantConfig
from loopsync.connectors import connector_class
from loopsync.connectors.base import ConnectorContext, WarehouseConnector
from loopsync.engine import CycleResult, Engine
from loopsync.http import LIMIT_HISTORY_NAMESPACE, LimitHistory, RetryPolicy
from loopsync.loop_client import LoopClient
from loopsync.store import MerchantLock, Store
from loopsync.timeutil import Clock, SystemClock

log = structlog.get_logger("loopsync.run")


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def build_loop_client(cfg: MerchantConfig, clock: Clock, *, dry_run: bool = False,
                      policy: RetryPolicy | None = None) -> LoopClient:
    return LoopClient(cfg.loop.base_url, cfg.loop.api_key.value, clock=clock, policy=policy,
                      requests_per_minute=cfg.loop.requests_per_minute,
                      page_size=cfg.loop.page_size, timeout=(5.0, cfg.loop.timeout),
                      dry_run=dry_run)


def build_connector(cfg: MerchantConfig, clock: Clock, store: Store, *,
                    stop: threading.Event, dry_run: bool = False,
                    policy: RetryPolicy | None = None) -> WarehouseConnector:
    cls = connector_class(cfg.warehouse.kind)
    ctx = ConnectorContext(merchant=cfg.merchant, clock=clock, stop=stop,
                           policy=policy or RetryPolicy(), kv=store.kv(cfg.warehouse.kind),
                           dry_run=dry_run)
    return cls(cfg.warehouse, ctx)


def open_store(cfg: MerchantConfig, clock: Clock, *, dry_run: bool) -> Store:
    if dry_run:
        return Store(":memory:", clock, memory_copy_of=Path(cfg.state_path))
    return Store(cfg.state_path, clock)


def run_merchant(cfg: MerchantConfig, *, clock: Clock | None = None,
                 stop: threading.Event | None = None, dry_run: bool = False, mode: str = "run",
                 import_from: datetime | None = None, import_to: datetime | None = None,
                 import_return_id: str | None = None,
                 policy: RetryPolicy | None = None) -> CycleResult:
    """One cycle (or one manual import) for one merchant. Raises LockHeld when another
    process works this merchant. Dry runs take no lock and write nothing anywhere."""
    stop = stop or threading.Event()
    clock = clock or SystemClock(stop)
    for secret in cfg.secrets():
        logs.register_secret(secret)
    run_id = new_run_id()
    # Which state file this run uses, absolute: a run against an unexpected (empty) one
    # is then plain to see in the log.
    log.info("state", merchant=cfg.merchant, path=str(cfg.state_path))
    bound = structlog.contextvars.bound_contextvars(merchant=cfg.merchant, run_id=run_id)
    lock = None if dry_run else MerchantLock(cfg.state_path).acquire()
    try:
        with bound:
            return _run_locked(cfg, clock=clock, stop=stop, dry_run=dry_run, mode=mode,
                               run_id=run_id, import_from=import_from, import_to=import_to,
                               import_return_id=import_return_id, policy=policy)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(cfg: MerchantConfig, *, clock: Clock, stop: threading.Event, dry_run: bool,
                mode: str, run_id: str, import_from: datetime | None,
                import_to: datetime | None, import_return_id: str | None,
                policy: RetryPolicy | None) -> CycleResult:
    store = open_store(cfg, clock, dry_run=dry_run)
    loop = build_loop_client(cfg, clock, dry_run=dry_run, policy=policy)
    connector = build_connector(cfg, clock, store, stop=stop, dry_run=dry_run, policy=policy)
    # rate limits hold across processes: the last run's recent sends count against ours
    limits = LimitHistory.load(store.kv(LIMIT_HISTORY_NAMESPACE), loop, connector)
    engine = Engine(cfg, store, loop, connector, clock=clock, run_id=run_id, stop=stop,
                    dry_run=dry_run)
    store.start_run(run_id, mode + (" (dry run)" if dry_run else ""))
    status, error = "ok", None
    try:
        if import_return_id or import_from:
            ids = _import(engine, import_return_id, import_from, import_to)
            result = engine.run_cycle(only=ids, ingest=False)
        else:
            result = engine.run_cycle()
        if result.counts.errors:
            status = "errors"
        if result.stopped:
            status = "stopped"
    except BaseException as exc:  # recorded in the run row, then re-raised
        status, error = "crashed", f"{type(exc).__name__}: {exc}"
        engine.result.counts.errors += 1
        raise
    finally:
        counts = asdict(engine.result.counts)
        store.finish_run(run_id, status, counts, engine.result.counts.errors, error)
        c = engine.result.counts
        log.info("cycle.summary", merchant=cfg.merchant, run_id=run_id, mode=mode,
                 dry_run=dry_run, status=status, pulled=c.pulled, new=c.new, pushed=c.pushed,
                 processed=c.processed, flagged=c.flagged, ignored=c.ignored,
                 reported=c.reported, errors=c.errors,
                 duration=round(engine.result.duration, 3))
        limits.save()
        connector.close()
        store.close()
    return result


def _import(engine: Engine, return_id: str | None, start: datetime | None,
            end: datetime | None) -> set[str]:
    if return_id:
        return engine.import_return(return_id)
    assert start is not None and end is not None
    return engine.import_window(start, end)


def summary_line(result: CycleResult) -> str:
    c = result.counts
    parts: dict[str, Any] = {"pulled": c.pulled, "new": c.new, "pushed": c.pushed,
                             "processed": c.processed, "flagged": c.flagged,
                             "ignored": c.ignored, "errors": c.errors}
    body = " ".join(f"{k}={v}" for k, v in parts.items())
    return f"{result.merchant}: {body} duration={result.duration:.1f}s"
