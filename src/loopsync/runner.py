"""Runs one cycle for one merchant: lock, store, clients, engine, run record, summary.
`loopsync run`, `serve` and `import` all come through here, so they share one code path."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from loopsync import logs, refusals
from loopsync.config import MerchantConfig
from loopsync.connectors import connector_class
from loopsync.connectors.base import ConnectorContext, WarehouseConnector
from loopsync.cycle import CycleCounts, CycleResult, Engine
from loopsync.errors import AuthError, NotFound, StopRequested, UnknownReturn
from loopsync.http import LIMIT_HISTORY_NAMESPACE, LimitHistory, RetryPolicy
from loopsync.loop_client import LoopClient
from loopsync.state import MerchantLock, Store, state_error
from loopsync.state.folder import check_state_folder
from loopsync.state.runs import NEXT_DUE_KEY, NEXT_DUE_NAMESPACE
from loopsync.timeutil import Clock, SystemClock, iso

log = structlog.get_logger("loopsync.run")


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def build_loop_client(
    cfg: MerchantConfig,
    clock: Clock,
    *,
    dry_run: bool = False,
    policy: RetryPolicy | None = None,
    stop: threading.Event | None = None,
) -> LoopClient:
    return LoopClient(
        cfg.loop.base_url,
        cfg.loop.api_key.value,
        clock=clock,
        policy=policy,
        requests_per_minute=cfg.loop.requests_per_minute,
        page_size=cfg.loop.page_size,
        timeout=(5.0, cfg.loop.timeout),
        dry_run=dry_run,
        stop=stop,
        deadline=cfg.loop.deadline,
        max_body=cfg.loop.max_body,
    )


def build_connector(
    cfg: MerchantConfig,
    clock: Clock,
    store: Store,
    *,
    stop: threading.Event,
    dry_run: bool = False,
    policy: RetryPolicy | None = None,
) -> WarehouseConnector:
    cls = connector_class(cfg.warehouse.kind)
    ctx = ConnectorContext(
        merchant=cfg.merchant,
        clock=clock,
        stop=stop,
        policy=policy or RetryPolicy(),
        kv=store.kv(cfg.warehouse.kind),
        dry_run=dry_run,
    )
    return cls(cfg.warehouse, ctx)


def open_store(cfg: MerchantConfig, clock: Clock, *, dry_run: bool) -> Store:
    if dry_run:
        return Store(":memory:", clock, memory_copy_of=Path(cfg.state_path))
    return Store(cfg.state_path, clock)


@dataclass(frozen=True)
class RunRequest:
    """What one run was asked to do, carried whole through the run's steps."""

    clock: Clock
    stop: threading.Event
    dry_run: bool
    mode: str
    run_id: str
    import_from: datetime | None
    import_to: datetime | None
    import_return_id: str | None
    policy: RetryPolicy | None
    next_due: Callable[[], datetime | None] | None


def run_merchant(
    cfg: MerchantConfig,
    *,
    clock: Clock | None = None,
    stop: threading.Event | None = None,
    dry_run: bool = False,
    mode: str = "run",
    import_from: datetime | None = None,
    import_to: datetime | None = None,
    import_return_id: str | None = None,
    policy: RetryPolicy | None = None,
    next_due: Callable[[], datetime | None] | None = None,
) -> CycleResult:
    """One cycle (or one manual import) for one merchant. Raises LockHeld when another
    process works this merchant, StateError when its state file cannot be used (named,
    with a sysexits code). Dry runs take no lock and write nothing anywhere.

    A shutdown (`stop`) ends the cycle as `stopped`; credentials refused end it at once
    as `refused` and later cycles wait (loopsync.refusals). `next_due` (serve): when the
    scheduler runs this merchant next, asked at the end and kept for `status`."""
    stop = stop or threading.Event()
    clock = clock or SystemClock(stop)
    for secret in cfg.secrets():
        logs.register_secret(secret)
    run_id = new_run_id()
    log.info("cycle.start", merchant=cfg.merchant, run_id=run_id, mode=mode)
    # Which state file this run uses, absolute: a run against an unexpected (empty) one
    # is then plain to see in the log.
    log.info("state", merchant=cfg.merchant, path=str(cfg.state_path))
    bound = structlog.contextvars.bound_contextvars(merchant=cfg.merchant, run_id=run_id)
    if not dry_run:  # a missing volume or a read-only folder: one line, 73, nothing created
        check_state_folder(cfg.state_path, cfg.file)
    try:
        lock = None if dry_run else MerchantLock(cfg.state_path).acquire()
    except OSError as exc:  # its folder cannot be created or written
        raise state_error(cfg.state_path, exc) from None
    try:
        with bound:
            return _run_locked(
                cfg,
                RunRequest(
                    clock,
                    stop,
                    dry_run,
                    mode,
                    run_id,
                    import_from,
                    import_to,
                    import_return_id,
                    policy,
                    next_due,
                ),
            )
    finally:
        if lock is not None:
            lock.release()


def _run_locked(cfg: MerchantConfig, req: RunRequest) -> CycleResult:
    store = open_store(cfg, req.clock, dry_run=req.dry_run)
    try:
        result = _run_open(cfg, store, req)
        if req.next_due is not None and not req.dry_run:
            record_next_due(store, req.next_due())
        return result
    except sqlite3.Error as exc:  # the state file failed under us (disk full, ...)
        raise state_error(cfg.state_path, exc) from None
    finally:
        with contextlib.suppress(sqlite3.Error):
            store.close()


def _run_open(cfg: MerchantConfig, store: Store, req: RunRequest) -> CycleResult:
    clock, stop, dry_run, mode, run_id, policy = (
        req.clock,
        req.stop,
        req.dry_run,
        req.mode,
        req.run_id,
        req.policy,
    )
    manual = mode == "import" or dry_run  # a person is trying: no backoff in the way
    refusal = refusals.load(store.kv(refusals.KV_NAMESPACE))
    if not manual and not refusals.may_try(refusal, clock.now(), cfg.secrets()):
        assert refusal is not None
        return _refused_skip(cfg, run_id, refusal)
    loop = build_loop_client(cfg, clock, dry_run=dry_run, policy=policy, stop=stop)
    connector = build_connector(cfg, clock, store, stop=stop, dry_run=dry_run, policy=policy)
    # rate limits hold across processes: the last run's recent sends count against ours
    limits = LimitHistory.load(store.kv(LIMIT_HISTORY_NAMESPACE), loop, connector)
    engine = Engine(
        cfg, store, loop, connector, clock=clock, run_id=run_id, stop=stop, dry_run=dry_run
    )
    try:
        store.runs.start(run_id, mode + (" (dry run)" if dry_run else ""))
    except BaseException:  # no room even for the run row: nothing else was done
        connector.close()
        raise
    cycle = _Cycle(cfg, store, engine, clock, run_id, mode, dry_run, refusal)
    try:
        result = cycle.run(req.import_return_id, req.import_from, req.import_to)
    finally:
        unrecorded = cycle.finish()
        limits.save()
        connector.close()
    if unrecorded is not None:  # the cycle went well, but its record could not be kept
        raise unrecorded
    return result


class _Cycle:
    """One recorded cycle: runs the engine, maps how it ended to the run row's status,
    and records the row whatever happened."""

    def __init__(
        self,
        cfg: MerchantConfig,
        store: Store,
        engine: Engine,
        clock: Clock,
        run_id: str,
        mode: str,
        dry_run: bool,
        refusal: refusals.Refusal | None,
    ) -> None:
        self.cfg, self.store, self.engine, self.clock = cfg, store, engine, clock
        self.run_id, self.mode, self.dry_run, self.refusal = run_id, mode, dry_run, refusal
        self.status = "ok"
        self.error_text: str | None = None

    def run(
        self, import_return_id: str | None, import_from: datetime | None, import_to: datetime | None
    ) -> CycleResult:
        engine, cfg = self.engine, self.cfg
        result = engine.result
        try:
            if import_return_id or import_from:
                ids = _import(engine, import_return_id, import_from, import_to)
                result = engine.run_cycle(only=ids, ingest=False)
            else:
                result = engine.run_cycle()
            self._ran(result)
        except AuthError as exc:
            self._refused(result, exc)
        except UnknownReturn as exc:  # a mistyped id: said in one line, not a crash
            self.status, self.error_text = "failed", str(exc)
            raise
        except StopRequested:
            # Shutdown during a wait: the request is abandoned, what was stored stays stored
            # (ledger intents are looked up next cycle, as after a kill).
            result.stopped = True
            self.status = "stopped"
        except sqlite3.Error as exc:  # the state file itself: named by the caller, not a crash
            self.status, self.error_text = "failed", str(state_error(cfg.state_path, exc))
            engine.result.counts.errors += 1
            raise
        except BaseException as exc:  # recorded in the run row, then re-raised
            self.status = "crashed"
            self.error_text = _redacted(f"{type(exc).__name__}: {exc}")
            engine.result.counts.errors += 1
            raise
        return result

    def _ran(self, result: CycleResult) -> None:
        if result.counts.errors:
            self.status = "errors"
        if result.stopped:
            self.status = "stopped"
        if self.refusal is not None and not self.dry_run:
            refusals.save(self.store.kv(refusals.KV_NAMESPACE), None)  # accepted again
            log.info("credentials.accepted", merchant=self.cfg.merchant, system=self.refusal.system)

    def _refused(self, result: CycleResult, exc: AuthError) -> None:
        """Every other request would be refused too: stop the cycle, say why once, wait."""
        result.counts.errors += 1
        self.status = "refused"
        new = refusals.after_refusal(
            self.refusal, exc.system, _redacted(str(exc)), self.clock.now(), self.cfg.secrets()
        )
        self.error_text = f"{new.reason}: {new.message}"
        result.stage_errors["credentials"] = (
            f"{new.reason} ({new.failures} in a row); next try after {iso(new.retry_at)}"
        )
        if not self.dry_run:
            refusals.save(self.store.kv(refusals.KV_NAMESPACE), new)
        log.error(
            "credentials.refused",
            merchant=self.cfg.merchant,
            system=exc.system,
            failures=new.failures,
            retry_at=iso(new.retry_at),
            error=str(exc),
        )

    def finish(self) -> sqlite3.Error | None:
        """Record the run row and log the summary. Returns the error that kept the row from
        being recorded (disk full: it stays "running", shown as interrupted), for the caller
        to raise once the rest is closed."""
        engine = self.engine
        counts = asdict(engine.result.counts)
        unrecorded: sqlite3.Error | None = None
        try:
            self.store.runs.finish(
                self.run_id, self.status, counts, engine.result.counts.errors, self.error_text
            )
        except sqlite3.Error as exc:
            log.error("run.not_recorded", merchant=self.cfg.merchant, error=str(exc))
            unrecorded = exc
        c = engine.result.counts
        log.info(
            "cycle.summary",
            merchant=self.cfg.merchant,
            run_id=self.run_id,
            mode=self.mode,
            dry_run=self.dry_run,
            status=self.status,
            pulled=c.pulled,
            new=c.new,
            pushed=c.pushed,
            processed=c.processed,
            flagged=c.flagged,
            ignored=c.ignored,
            reported=c.reported,
            errors=c.errors,
            duration=round(engine.result.duration, 3),
        )
        return unrecorded


def _refused_skip(cfg: MerchantConfig, run_id: str, refusal: refusals.Refusal) -> CycleResult:
    """A cycle inside the wait after a refusal: no remote is contacted, one line says why."""
    result = CycleResult(cfg.merchant, run_id, CycleCounts(errors=1))
    result.stage_errors["credentials"] = (
        f"{refusal.reason} ({refusal.failures} in a row, last {iso(refusal.last_at)}); "
        f"not tried again before {iso(refusal.retry_at)}"
    )
    log.warning(
        "cycle.skipped",
        merchant=cfg.merchant,
        reason=refusal.reason,
        retry_at=iso(refusal.retry_at),
    )
    return result


def _redacted(text: str) -> str:
    """`text` with every registered secret masked (stored run errors, kv)."""
    return str(logs.redact_secrets(None, "", {"text": text})["text"])


def _import(
    engine: Engine, return_id: str | None, start: datetime | None, end: datetime | None
) -> set[str]:
    if return_id:
        try:
            return engine.import_return(return_id)
        except NotFound:
            raise UnknownReturn(f"return {return_id} not found in Loop") from None
    assert start is not None and end is not None
    return engine.import_window(start, end)


def record_next_due(store: Store, when: datetime | None) -> None:
    """When `serve` runs this merchant next (kv, read by `status`)."""
    store.kv(NEXT_DUE_NAMESPACE).set(NEXT_DUE_KEY, iso(when))


def summary_line(result: CycleResult) -> str:
    c = result.counts
    parts: dict[str, Any] = {
        "pulled": c.pulled,
        "new": c.new,
        "pushed": c.pushed,
        "processed": c.processed,
        "flagged": c.flagged,
        "ignored": c.ignored,
        "errors": c.errors,
    }
    body = " ".join(f"{k}={v}" for k, v in parts.items())
    return f"{result.merchant}: {body} duration={result.duration:.1f}s"
