"""What every stage and effect of one cycle shares: `CycleContext`, and the one test of
whether an error raised while handling one record is that record's own fault.

A context is built once per cycle by `loopsync.cycle.Engine`. Its helpers are the ways a
stage reports on a return: `event` (what happened, for the demo and the log), `problem` (a
problem row `loopsync status` lists), `report_for_person` (stage REPORTED, the run needs
attention) and `set_stage`. Remote text may hold lone surrogates, which neither SQLite nor a
log line takes: `problem` passes it through `models.printable` first.

The stages and effects read and write the store through its typed repositories
(`loopsync.state`): rows are its dataclasses, stages and effect statuses its enums.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from structlog.typing import FilteringBoundLogger

from loopsync.config import MerchantConfig
from loopsync.connectors.base import NotReady, PollStopped, WarehouseConnector
from loopsync.errors import AuthError, DryRunViolation, LockHeld, StateError
from loopsync.models import printable, safe_numeric_id
from loopsync.ports import LoopApi
from loopsync.state import ReturnAction, Stage, Store
from loopsync.timeutil import Clock, parse_timestamp

if TYPE_CHECKING:  # cycle.py builds the context and imports the stages: no runtime import
    from loopsync.cycle import CycleCounts, CycleResult


# What one return's handling may raise that is no fault of that return, so it is not
# recorded against it and the stage stops: control-flow signals (not ready, stop, dry
# run, lock) and local faults that would hit every return alike (disk full, database
# I/O, memory). Anything else one return raises is recorded against it; the batch goes on.
NOT_ONE_RECORDS_FAULT: tuple[type[BaseException], ...] = (
    NotReady,
    PollStopped,
    DryRunViolation,
    LockHeld,
    AuthError,
    StateError,
    MemoryError,
    OSError,
    sqlite3.OperationalError,
)


def one_records_fault(exc: BaseException) -> bool:
    """Is `exc`, raised while handling one record, that record's own trouble?"""
    return isinstance(exc, Exception) and not isinstance(exc, NOT_ONE_RECORDS_FAULT)


def unexpected(exc: BaseException) -> str:
    """An error no one raised on purpose, for a problem row: its type and message."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a message that cannot be built says nothing
        text = ""
    return printable(f"unexpected {type(exc).__name__}: {text}", 500)


def raw_id(raw: Any) -> str | None:
    """The id of a raw remote record, when it has a readable one (for a problem row)."""
    return safe_numeric_id(raw.get("id")) if isinstance(raw, dict) else None


@dataclass
class CycleContext:
    """One cycle's world: who it works for, with what, and what it has done so far."""

    cfg: MerchantConfig
    store: Store
    loop: LoopApi
    connector: WarehouseConnector
    clock: Clock
    run_id: str
    stop: threading.Event
    dry_run: bool
    result: CycleResult
    log: FilteringBoundLogger

    @property
    def counts(self) -> CycleCounts:
        return self.result.counts

    def now(self) -> datetime:
        return self.clock.now()

    def too_soon(self, since: str, wait: timedelta) -> bool:
        """Is `since` (an ISO time the store wrote) less than `wait` ago?"""
        return self.clock.now() - parse_timestamp(since) < wait

    def event(self, kind: str, rid: str, **info: Any) -> None:
        self.result.events.append({"event": kind, "return_id": rid, **info})
        self.log.info(f"return.{kind}", return_id=rid, **info)

    def problem(self, rid: str | None, stage: str, message: str) -> None:
        # Remote text may hold lone surrogates, which neither SQLite nor a log line takes.
        rid, message = (printable(rid, 40) if rid else rid), printable(message)
        self.store.runs.add_problem(rid, stage, message, self.run_id)
        self.log.warning("return.problem", return_id=rid, stage=stage, problem=message)

    def set_stage(
        self,
        rid: str,
        stage: Stage,
        reason: str | None = None,
        *,
        action: ReturnAction | None = None,
    ) -> None:
        self.store.returns.move(rid, stage, reason, action=action)

    def report_for_person(self, rid: str, stage: str, reason: str) -> None:
        """Stop acting on a return that loopsync cannot settle without guessing: stage
        REPORTED with the reason (`loopsync status` shows it), and the run says so."""
        self.counts.reported += 1
        self.set_stage(rid, Stage.REPORTED, reason)
        self.problem(rid, stage, f"needs a person: {reason}")
        self.result.attention.append(f"return {rid}: {reason}")
        self.event("reported", rid, reason=reason)
