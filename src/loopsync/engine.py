"""One sync cycle for one merchant: ingest -> push -> poll -> act.

Each stage resumes where the last one stopped, from the store alone. A stage that fails
on a remote outage is recorded and the next stage still runs: a warehouse outage does not
hold back ingest, and a Loop outage does not block polling. Within a stage a poison
record holds back only itself: its unreadable data (`errors.Unreadable`) or an error no
one raised on purpose is recorded against that return and the next one goes on; an
ingest page is checkpointed with the poison record recorded, so it is not re-read forever.

Exactly once: every remote side effect is a row in the `effects` ledger. It is planned
(`pending`) in the same transaction as the decision that calls for it, marked `intent`
(committed) just before the call, and `done`/`settled`/`failed` after. A row found in
`intent` had an unknown outcome, so the remote is checked before the call is repeated.

At the edges (lost state, lost answers, remotes that answer in unknown words):
- every push looks the RMA up (`find_rma`) before its first create, and every note is
  looked for in Loop's notes before it is written, so a lost or moved state file repeats
  nothing; a create refused in words that may still have created it is looked up first;
- a process or flag whose answer was lost is repeated only on positive evidence (two
  `open` reads PROCESS_SETTLE apart that agree); an action error in unknown words is
  settled from the return's state; what stays in doubt is REPORTED for a person and
  listed in `CycleResult.attention` (`needs_attention`);
- a connector matching by something weaker than the Loop return id (`weak_matching`)
  never links two open returns to one RMA: both are reported, neither is acted on.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from loopsync import rules
from loopsync import store as st
from loopsync.config import MerchantConfig
from loopsync.connectors.base import NotReady, PollStopped, PushRequest, WarehouseConnector
from loopsync.errors import (Ambiguous, AuthError, DryRunViolation, LockHeld, OutcomeUnknown,
                             StateError,
                             PermanentError, Rejected, RemoteError, StateConflict, TransientError,
                             Unreadable)
from loopsync.loop_client import DISPOSITION_BATCH, LOOP_STATES, PaginationStopped, batched
from loopsync.models import (LoopReturn, MalformedReturn, RmaRef, RmaStatus, parse_asn_row,
                             printable, remote_timestamp, safe_numeric_id)
from loopsync.prefetch import prefetched
from loopsync.store import Store
from loopsync.timeutil import Clock, iso, parse_timestamp
from loopsync.paging import WalkEnd, WalkResult, record_walk
from loopsync.windows import (Window, check_cursor, clock_skew, completed_until, ingest_start,
                              plan_windows)

log = structlog.get_logger("loopsync.engine")

RETURNS, ASN = "returns", "asn"
COMPLETE, STOPPED, INCOMPLETE = "complete", "stopped", "incomplete"  # window outcomes
# Give up on a stage after this many consecutive transient failures: the remote is down,
# and hammering it helps nobody. The next cycle tries again.
OUTAGE_AFTER = 3
# After a process call whose answer was lost, Loop may still show the return open while
# it works through its queue. Wait this long before concluding the call did not land.
PROCESS_SETTLE = timedelta(minutes=10)
# A note whose answer was lost may still be being written by Loop: answered after our read
# timeout, or in flight when the worker was killed and restarted. Read the notes only this
# many Loop read timeouts after the attempt, or the look-up misses it and writes it twice.
NOTE_SETTLE = 2  # Loop read timeouts
# Likewise a warehouse create whose answer was lost may still be running there (ShipHero
# has no idempotency key): look it up only this many warehouse read timeouts later.
CREATE_SETTLE = 2  # warehouse read timeouts
# A flag whose answer was lost gets the same discipline as a process: a read of the return
# that still says `open` may be stale (a replica, a cache, a queue not yet worked), so
# before repeating either call loopsync wants two reads PROCESS_SETTLE apart that agree
# (state, updated_at, notes); anything less certain is reported for a person.
SETTLE_EVIDENCE = "engine.settle"  # kv namespace: the first `open` read after a lost action
# Two settle reads our clock puts PROCESS_SETTLE apart but Loop's `Date` does not: wait
# for Loop's clock at most this long (by ours) before reporting the return for a person.
CLOCK_DOUBT_AFTER = 6 * PROCESS_SETTLE
# kv namespace: returns whose RMA note was already in Loop before this state file wrote
# it, i.e. an earlier run whose state is lost worked on them, and may have processed or
# flagged them with Loop's queue still working on it: their first action waits
# PROCESS_SETTLE after that discovery and reads the return's state first.
FOUND_RMAS = "engine.found"
POLL_CHUNK = 500
# kv namespace of clock trouble (cursors pulled back from the future, skew against Loop's
# `Date`), read by `loopsync status`.
CURSOR_EVENTS = "cursors"
# The ASN report only feeds tracking numbers of returns still to push, which are recent:
# the first run reads this far back rather than from loop.start_at, day by day.
ASN_BACKFILL = timedelta(days=30)
# What one return's handling may raise that is no fault of that return, so it is not
# recorded against it and the stage stops: control-flow signals (not ready, stop, dry
# run, lock) and local faults that would hit every return alike (disk full, database
# I/O, memory). Anything else one return raises is recorded against it; the batch goes on.
NOT_ONE_RECORDS_FAULT: tuple[type[BaseException], ...] = (
    NotReady, PollStopped, DryRunViolation, LockHeld, AuthError, StateError, MemoryError,
    OSError, sqlite3.OperationalError)


def one_records_fault(exc: BaseException) -> bool:
    """Is `exc`, raised while handling one record, that record's own trouble?"""
    return isinstance(exc, Exception) and not isinstance(exc, NOT_ONE_RECORDS_FAULT)


class LoopApi(Protocol):
    """What the engine needs from loopsync.loop_client.LoopClient."""

    def iter_returns(self, start: datetime, end: datetime, state: str, *,
                     cursor: str | None = None) -> Iterable[Any]: ...

    def asn_report(self, start: datetime, end: datetime) -> list[dict[str, Any]]: ...

    def return_details(self, return_id: str) -> dict[str, Any]: ...

    def process(self, return_id: str) -> None: ...

    def flag(self, return_id: str) -> None: ...

    def add_note(self, return_id: str, content: str) -> None: ...

    def notes(self, return_id: str) -> list[dict[str, Any]]: ...

    def grade(self, items: list[dict[str, Any]]) -> Any: ...

    def assess(self, items: list[dict[str, Any]]) -> Any: ...


@dataclass
class CycleCounts:
    pulled: int = 0        # return objects read from Loop (with overlap re-reads)
    new: int = 0           # returns seen for the first time
    changed: int = 0       # known returns whose snapshot changed
    asn_rows: int = 0
    malformed: int = 0
    skipped: int = 0       # not for the warehouse, with a reason
    waiting: int = 0       # warehouse not ready yet
    pushed: int = 0        # RMAs created
    linked: int = 0        # RMAs found (reconciled, or created by the warehouse itself)
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
    planned: list[str] = field(default_factory=list)   # dry run: what would have been done
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
    def __init__(self, cfg: MerchantConfig, store: Store, loop: LoopApi,
                 connector: WarehouseConnector, *, clock: Clock, run_id: str,
                 stop: threading.Event | None = None, dry_run: bool = False) -> None:
        self.cfg = cfg
        self.store = store
        self.loop = loop
        self.connector = connector
        self.clock = clock
        self.run_id = run_id
        self.stop = stop or threading.Event()
        self.dry_run = dry_run
        self.result = CycleResult(cfg.merchant, run_id, CycleCounts())
        self.log = log.bind(merchant=cfg.merchant, run_id=run_id)

    @property
    def counts(self) -> CycleCounts:
        return self.result.counts

    # -- the cycle ------------------------------------------------------------------------
    def run_cycle(self, only: set[str] | None = None, *, ingest: bool = True) -> CycleResult:
        started = time.monotonic()
        if ingest:
            self._stage("ingest", self.ingest)
            if self.cfg.loop.asn_enabled:
                self._stage("asn", self.ingest_asn)
        self._stage("push", lambda: self.push(only))
        self._stage("poll", lambda: self.poll(only))
        self._stage("act", lambda: self.act(only))
        self.result.duration = time.monotonic() - started
        self.result.stopped = self.stop.is_set()
        return self.result

    def _stage(self, name: str, fn: Callable[[], None]) -> None:
        if self.stop.is_set():
            return
        try:
            fn()
        except AuthError:
            raise  # credentials refused: the whole cycle stops (runner records why, once)
        except RemoteError as exc:
            self.counts.errors += 1
            self.result.stage_errors[name] = printable(str(exc))  # remote text: no surrogates
            self.log.error("stage.failed", stage=name, error=self.result.stage_errors[name])

    def _event(self, kind: str, rid: str, **info: Any) -> None:
        self.result.events.append({"event": kind, "return_id": rid, **info})
        self.log.info(f"return.{kind}", return_id=rid, **info)

    def _problem(self, rid: str | None, stage: str, message: str) -> None:
        # Remote text may hold lone surrogates, which neither SQLite nor a log line takes.
        rid, message = (printable(rid, 40) if rid else rid), printable(message)
        self.store.add_problem(rid, stage, message, self.run_id)
        self.log.warning("return.problem", return_id=rid, stage=stage, problem=message)

    def _report_for_person(self, rid: str, stage: str, reason: str) -> None:
        """Stop acting on a return that loopsync cannot settle without guessing: stage
        REPORTED with the reason (`loopsync status` shows it), and the run says so."""
        self.counts.reported += 1
        self._set_stage(rid, st.REPORTED, reason)
        self._problem(rid, stage, f"needs a person: {reason}")
        self.result.attention.append(f"return {rid}: {reason}")
        self._event("reported", rid, reason=reason)

    # -- ingest ---------------------------------------------------------------------------
    def ingest(self) -> None:
        """Pull every state pass up to one fixed end instant (the signpost), window by
        window, page by page; each page and its checkpoint commit together."""
        end = self.clock.now()
        for state in self.cfg.loop.states:
            if self.stop.is_set():
                return
            cur = self._checked_cursor(RETURNS, state, end)
            if cur.window_from is not None and cur.window_to is not None:
                self.log.info("ingest.resume", state=state, window_from=iso(cur.window_from),
                              window_to=iso(cur.window_to), has_cursor=bool(cur.page_cursor))
                outcome = self._ingest_window(state, Window(cur.window_from, cur.window_to),
                                              cur.page_cursor)
                if outcome == STOPPED:
                    return
                if outcome == INCOMPLETE:
                    continue
                cur = self.store.cursor(RETURNS, state)
            start = ingest_start(cur.done_until, self.cfg.loop.start_at, self.cfg.loop.lookback)
            self.log.info("ingest.state", state=state, start=iso(start), end=iso(end))
            for window in plan_windows(start, end, self.cfg.loop.window):
                outcome = self._ingest_window(state, window, None)
                if outcome == STOPPED:
                    return
                if outcome == INCOMPLETE:
                    break  # the cursor cannot pass this window; other states go on

    def _checked_cursor(self, stream: str, state: str, now: datetime) -> st.Cursor:
        """The stored cursor, pulled back first if it lies beyond `now` (written while our
        clock ran ahead): logged, and kept in kv for `status`."""
        cur = self.store.cursor(stream, state)
        if not any(t is not None and t > now for t in (cur.done_until, cur.window_to)):
            return cur
        window = (Window(cur.window_from, cur.window_to)
                  if cur.window_from is not None and cur.window_to is not None else None)
        check = check_cursor(cur.done_until, window, cur.page_cursor, now=now,
                             lookback=self.cfg.loop.lookback,
                             # Nothing stored for this stream: no record ever read tells
                             # where the truth was, so read again from the configured start.
                             last_seen=self.store.last_updated_at(stream, state)
                             or self.cfg.loop.start_at)
        self.log.warning("ingest.cursor_pulled_back", stream=stream, state=state,
                         was=iso(cur.done_until), now=iso(check.done_until), reason=check.reason)
        if not self.dry_run:
            with self.store.atomic():
                self.store.set_done_until(stream, state, check.done_until)
                self.store.kv(CURSOR_EVENTS).set(f"pulled_back:{stream}/{state}", {
                    "at": iso(now), "from": iso(cur.done_until), "to": iso(check.done_until),
                    "reason": check.reason})
        return st.Cursor(stream, state, check.done_until, None, None, None)

    def _server_now(self, local: datetime, remote: datetime | None) -> None:
        """Compare our clock with the remote's `Date`; a disagreement beyond the threshold
        is logged and kept for `status` (cleared when they agree again)."""
        if remote is None:
            return
        skew = clock_skew(local, remote)
        kv = self.store.kv(CURSOR_EVENTS)
        if skew is None:
            if kv.get("clock_skew") is not None:
                kv.set("clock_skew", None)
            return
        self.log.warning("clock.skew", local=iso(local), loop=iso(remote),
                         ahead_seconds=round(skew.total_seconds(), 1))
        kv.set("clock_skew", {"at": iso(local), "loop": iso(remote),
                              "ahead_seconds": round(skew.total_seconds(), 1)})

    def _ingest_window(self, state: str, window: Window, cursor: str | None,
                       *, retried: bool = False) -> str:
        """Read one window: COMPLETE, STOPPED (shutdown; checkpoint saved) or INCOMPLETE
        (pagination broke off; the pages read are kept, the window stays open)."""
        last = None
        walk = f"loop.returns.{state}"
        date_key = f"window_date:{RETURNS}/{state}"
        # Loop's clock when this window's reading began (kept across a resumed walk).
        first_date = None
        if cursor is not None:
            saved = self.store.kv(CURSOR_EVENTS).get(date_key)
            first_date = parse_timestamp(saved) if saved else None
        try:
            pages = self.loop.iter_returns(window.start, window.end, state, cursor=cursor)
            for page in prefetched(pages, name="loop-pages"):
                date = getattr(page, "server_date", None)
                first_page, last = last is None, page
                if first_page and date is not None:
                    self._server_now(self.clock.now(), date)
                    first_date = date if first_date is None else min(first_date, date)
                with self.store.atomic():
                    self._ingest_page(page.returns)
                    self.store.save_page(RETURNS, state, window.start, window.end,
                                         page.next_cursor)
                    if first_page and first_date is not None and page.next_cursor:
                        self.store.kv(CURSOR_EVENTS).set(date_key, iso(first_date))
                if self.stop.is_set() and page.next_cursor:
                    return STOPPED
        except PaginationStopped as exc:
            if exc.reason == "stopped":
                return STOPPED
            if not retried and exc.reason != "page_cap":
                # A repeated or missing cursor may be a one-off: read the window again.
                self.log.warning("ingest.window_retry", state=state, reason=exc.reason)
                return self._ingest_window(state, window, None, retried=True)
            self._record_walk(walk, exc)
            if exc.reason == "next_page_url_without_cursor":
                # Nothing to follow, twice: waiting cannot finish this window, and holding
                # it open would stop this state's cursor for good. End it, and say so.
                self._problem(None, "ingest", f"{state} window {iso(window.start)} -> "
                                              f"{iso(window.end)}: Loop gave a next page "
                                              "link without a cursor; the window was ended "
                                              "there")
                self._complete_window(state, window, first_date)
                return COMPLETE
            self.counts.errors += 1
            self._problem(None, "ingest", f"{state} window {iso(window.start)} -> "
                                          f"{iso(window.end)} not finished ({exc.reason}); "
                                          "it is read again next cycle")
            return INCOMPLETE
        except PermanentError as exc:
            if cursor is None or last is not None or isinstance(exc, AuthError):
                raise
            # A saved page cursor the API no longer accepts: re-read the window from its start.
            self.log.warning("ingest.cursor_rejected", state=state, error=str(exc))
            return self._ingest_window(state, window, None, retried=retried)
        self._record_walk(walk, None)
        self._complete_window(state, window, first_date)
        return COMPLETE

    def _complete_window(self, state: str, window: Window, server_date: datetime | None) -> None:
        """Mark the window done, never past Loop's own clock when our clock runs ahead."""
        until = completed_until(window.end, server_date)
        if until < window.end:
            self.log.warning("ingest.window_end_clamped", state=state, window_end=iso(window.end),
                             loop_now=iso(server_date), done_until=iso(until))
        with self.store.atomic():
            self.store.complete_window(RETURNS, state, until)
            kv = self.store.kv(CURSOR_EVENTS)
            if kv.get(f"window_date:{RETURNS}/{state}") is not None:
                kv.set(f"window_date:{RETURNS}/{state}", None)

    def _record_walk(self, name: str, exc: PaginationStopped | None) -> None:
        """Keep an unfinished walk (or clear it once it completes) for `status`."""
        if self.dry_run:
            return
        result = exc.walk if exc is not None else None
        if exc is not None and not isinstance(result, WalkResult):
            result = WalkResult(name, WalkEnd.REPEATED if "repeat" in exc.reason
                                else WalkEnd.NO_CURSOR if "cursor" in exc.reason
                                else WalkEnd.CAPPED, 0)
        if result is None:
            result = WalkResult(name, WalkEnd.COMPLETE, 0)
        record_walk(self.store.kv("loop"), WalkResult(name, result.outcome, result.pages),
                    self.clock.now())

    def _ingest_page(self, returns: list[Any]) -> list[str]:
        """Store a page of list objects (in the caller's transaction); their ids."""
        # One query for the page's known returns instead of one per return.
        heads = self.store.return_heads([rid for raw in returns if isinstance(raw, dict)
                                         and (rid := safe_numeric_id(raw.get("id")))])
        return [rid for raw in returns if (rid := self._ingest_return(raw, heads))]

    def _ingest_return(self, raw: Any, heads: dict[str, Any]) -> str | None:
        """`heads`: Store.return_heads of the page."""
        self.counts.pulled += 1
        try:
            return self._store_return(raw, heads)
        except Unreadable as exc:
            self.counts.malformed += 1
            self._problem(_raw_id(raw), "ingest", f"malformed Loop return: {exc}")
        except Exception as exc:
            if not one_records_fault(exc):
                raise
            # Held with its reason; the page is still checkpointed, so the poison record
            # is not re-read forever and the good ones beside it are kept.
            self.counts.errors += 1
            self._problem(_raw_id(raw), "ingest", f"Loop return not stored: {_unexpected(exc)}")
        return None

    def _store_return(self, raw: Any, heads: dict[str, Any]) -> str:
        ret = LoopReturn.from_api(raw)
        head = heads.get(ret.id)
        heads[ret.id] = st.LOOKUP  # the same id again in this page: read it afresh
        outcome = self.store.upsert_return(
            ret.id, raw, state=ret.state, updated_at=ret.updated_at, created_at=ret.created_at,
            destination_id=ret.destination_id, order_name=ret.order_name, head=head)
        if outcome == st.NEW_RETURN:
            self.counts.new += 1
        elif outcome == st.CHANGED_RETURN:
            self.counts.changed += 1
        return ret.id

    def ingest_asn(self) -> None:
        """Loop's ASN report in small windows (it does not paginate)."""
        end = self.clock.now()
        cur = self._checked_cursor(ASN, "all", end)
        first_start = max(self.cfg.loop.start_at, end - ASN_BACKFILL)
        start = ingest_start(cur.done_until, first_start, self.cfg.loop.lookback)
        for window in plan_windows(start, end, self.cfg.loop.asn_window):
            if self.stop.is_set():
                return
            rows = self.loop.asn_report(window.start, window.end)
            date = getattr(self.loop, "last_server_date", None)
            self._server_now(self.clock.now(), date)
            with self.store.atomic():
                for row in rows:
                    self._ingest_asn_row(row)
                self.store.complete_window(ASN, "all", completed_until(window.end, date))

    def _ingest_asn_row(self, row: Any) -> None:
        """One ASN row; a row that cannot be read or stored is recorded, the rest go on."""
        try:
            checked = parse_asn_row(row)
        except Unreadable as exc:
            self._problem(_raw_id(row), "asn", f"malformed ASN row: {exc}")
            return
        try:
            with self.store.atomic():
                self.store.upsert_asn_row(checked)
        except Exception as exc:
            if not one_records_fault(exc):
                raise
            self.counts.errors += 1
            self._problem(_raw_id(row), "asn", f"ASN row not stored: {_unexpected(exc)}")
            return
        self.counts.asn_rows += 1

    def import_window(self, start: datetime, end: datetime) -> set[str]:
        """Manual import of a date range: every state, no live cursor moves."""
        ids: set[str] = set()
        for state in self.cfg.loop.states:
            for window in plan_windows(start, end, self.cfg.loop.window):
                for page in self.loop.iter_returns(window.start, window.end, state):
                    with self.store.atomic():
                        ids.update(self._ingest_page(page.returns))
        return ids

    def import_return(self, return_id: str) -> set[str]:
        """Manual import of one return: its details give updated_at, and a one-second list
        window around it gives the list-shaped object the rest of loopsync uses."""
        details = self.loop.return_details(return_id)
        if not isinstance(details, dict):
            raise Unreadable(f"return details of {return_id} are not an object", field="details")
        updated = remote_timestamp(details.get("updated_at") or details.get("created_at"),
                                   "return details: updated_at", assume_utc=True)
        # Its own state first, when it is one the list filters on (anything else the
        # details say is not a state to ask for).
        own = details.get("state")
        own = own.strip().lower() if isinstance(own, str) else ""
        window_states = ([own] if own in LOOP_STATES else []) + list(self.cfg.loop.states)
        for state in dict.fromkeys(window_states):
            for page in self.loop.iter_returns(updated - timedelta(seconds=1),
                                               updated + timedelta(seconds=1), state):
                for raw in page.returns:
                    if isinstance(raw, dict) and _raw_id(raw) == str(return_id).strip():
                        with self.store.atomic():
                            self._ingest_page([raw])
                        return {str(return_id)}
        raise PermanentError("loop", f"return {return_id} not found in the returns list "
                                     f"around its updated_at {iso(updated)}")

    # -- push -----------------------------------------------------------------------------
    def push(self, only: set[str] | None = None) -> None:
        ids = self.store.return_ids_in_stage(st.NEW, st.WAITING, st.PUSHING)
        ambiguous = self._refuse_ambiguous(ids, only)
        self._each_return("push", [i for i in ids if i not in ambiguous], self._push_one, only)

    def _refuse_ambiguous(self, ids: list[str], only: set[str] | None) -> set[str]:
        """Open Loop returns that a connector matching by something weaker than the Loop
        return id (Xoro by order number) cannot tell apart: each is reported for a person
        and none is linked or acted on. Returns the ids refused."""
        if not self.connector.weak_matching:
            return set()  # matched by the Loop return id: one RMA per return by construction
        in_play = ids + self.store.return_ids_in_stage(st.OPEN, st.ACTING)
        # Returns already left for a person (reported, stale, rejected) and still open in
        # Loop keep their claim on the order: a later return on it is just as ambiguous.
        held = self.store.return_ids_in_stage(st.REPORTED, st.STALE, st.REJECTED)
        held_ids = set(held)
        keys: dict[str, list[str]] = {}
        for rid in in_play + held:
            snap = self.store.snapshot(rid)
            try:
                ret = LoopReturn.from_api(snap)
            except MalformedReturn:
                continue
            key = self.connector.match_key(ret) if ret.state == "open" else None
            if key is not None:
                keys.setdefault(key, []).append(rid)
        refused: set[str] = set()
        for key, rids in keys.items():
            if len(rids) < 2 or (only is not None and not only & set(rids)):
                continue
            for rid in rids:
                if rid in held_ids:
                    continue  # already with a person (or not in play): not reported again
                self._report_for_person(rid, "push", rules.ambiguous_reason(
                    self.connector.kind, key, [r for r in rids if r != rid]))
                refused.add(rid)
        return refused

    def _each_return(self, stage: str, ids: Iterable[str], work: Callable[[str], None],
                     only: set[str] | None) -> None:
        """Run `work` per return: one return's failure is recorded and the batch goes on,
        but a run of transient failures means the remote is down, so the stage stops."""
        outage = 0
        for rid in ids:
            if self.stop.is_set():
                return
            if only is not None and rid not in only:
                continue
            try:
                work(rid)
                outage = 0
            except AuthError:
                raise  # not this return's fault: every other one would be refused too
            except TransientError as exc:
                self.counts.errors += 1
                outage += 1
                self._problem(rid, stage, str(exc))
                if outage >= OUTAGE_AFTER:
                    raise
            except PermanentError as exc:
                self.counts.errors += 1
                self._problem(rid, stage, str(exc))
            except Unreadable as exc:  # the return, or the warehouse's answer about it
                self.counts.errors += 1
                self._problem(rid, stage, f"unreadable: {exc}")
            except Exception as exc:
                if not one_records_fault(exc):
                    raise
                # One return's unexpected trouble (a bug, data no parser foresaw) is
                # recorded against it; the other returns go on.
                self.counts.errors += 1
                self._problem(rid, stage, _unexpected(exc))

    def _push_one(self, rid: str) -> None:
        row = self.store.get_return_row(rid)
        assert row is not None
        try:
            ret = LoopReturn.from_api(json.loads(row["snapshot"]))
        except MalformedReturn as exc:
            self._set_stage(rid, st.REJECTED, f"malformed Loop return: {exc}")
            return
        key = f"create_rma:{rid}"
        effect = self.store.effect(key)
        if effect and effect["status"] in (st.SUCCEEDED, st.SETTLED) and self.store.rma(rid):
            self._set_stage(rid, st.OPEN)  # a crash after linking, before the stage moved
            return
        plan = rules.plan_push(ret, self.cfg.warehouse.destinations,
                               needs_destination=self.connector.creates_rmas)
        unknown_outcome = bool(effect and effect["status"] == st.INTENT)
        if unknown_outcome and self._too_soon(
                effect, timedelta(seconds=CREATE_SETTLE * self.cfg.warehouse.timeout)):
            return  # the lost create may still land; looking now could miss it
        if not plan.push and not unknown_outcome:
            if row["stage"] != st.SKIPPED:
                self.counts.skipped += 1
                if ret.state == "open":  # not a closed return: bad data or configuration
                    self._problem(rid, "push", f"not sent to the warehouse: {plan.skip_reason}")
            self._set_stage(rid, st.SKIPPED, plan.skip_reason)
            return
        skuless = [li.line_item_id for li in ret.line_items if not li.sku]
        if skuless and row["stage"] == st.NEW:
            self._problem(rid, "push", f"line item {', '.join(skuless)} has no SKU: the "
                                       "warehouse gets the other lines only")
        req = PushRequest(ret, plan.destination or "", tuple(self.store.asn_rows_for(rid)))
        ref: RmaRef | None = None
        try:
            located = self.connector.locate(req)
            # Looked up before the first create too, not only before a repeated one: state
            # that was lost or moved (another working directory, a new volume) must not
            # create a second RMA for a return the warehouse already has.
            ref = self.connector.find_rma(req, located)
        except NotReady as exc:
            self._wait(rid, row, exc.reason)
            return
        except Ambiguous as exc:
            self._report_for_person(rid, "push", exc.message)
            return
        except Rejected as exc:
            self.counts.rejected += 1
            self._set_stage(rid, st.REJECTED, exc.message)
            self._problem(rid, "push", exc.message)
            return
        if ref is None and not self.connector.creates_rmas:
            self._wait(rid, row, f"no {self.connector.kind} RMA for this return yet")
            return
        if ref is not None and self.connector.weak_matching:
            owners = [o for o in self.store.rma_owners(ref.rma_id) if o != rid]
            if owners:  # matched by order number to an RMA another return already has
                self._report_for_person(rid, "push", rules.ambiguous_reason(
                    self.connector.kind, f"{self.connector.rma_label(ref)}", owners))
                return
        if ref is None:
            ref = self._create_rma(rid, req, located, key)
            if ref is None:
                return
            self.counts.pushed += 1
            self._event("rma_created", rid, rma=ref.rma_id)
        else:
            self.counts.linked += 1
            self._event("rma_linked", rid, rma=ref.rma_id)
        with self.store.atomic():
            self.store.link_rma(rid, ref.rma_id, ref.extra)
            if effect or self.connector.creates_rmas:
                self.store.plan_effect(key, rid, "create_rma")
                self.store.effect_outcome(key, st.SUCCEEDED, result={"rma_id": ref.rma_id})
            # Planned with the link, so a crash before the note still leaves it to do. A
            # watch-only connector's match gets its note too (naming the matched ASN).
            label = self.connector.rma_label(ref)
            text = rules.rma_note(label) if self.connector.creates_rmas else \
                rules.link_note(label)
            self.store.plan_effect(f"note_rma:{rid}", rid, "note",
                                   {"text": text, "names": label})
            self._set_stage(rid, st.OPEN, None)
        self._run_effects(rid)

    def _create_rma(self, rid: str, req: PushRequest, located: dict[str, Any],
                    key: str) -> RmaRef | None:
        if self.dry_run:
            self.result.planned.append(
                f"return {rid}: would create a {self.connector.kind} RMA "
                f"(destination {req.destination}, {req.ret.expected_units} units)")
            return None
        with self.store.atomic():
            self.store.effect_intent(key, rid, "create_rma")
            self._set_stage(rid, st.PUSHING, None)
        try:
            return self.connector.create_rma(req, located)
        except Rejected as exc:
            # A refusal may still have created the record (ShipHero answers some GraphQL
            # errors after the return exists): look it up before the verdict.
            try:
                found = self.connector.find_rma(req, located)
            except (RemoteError, NotReady) as lookup:
                self.store.effect_error(key, f"{exc}; look-up failed: {lookup}")
                raise OutcomeUnknown(exc.system, f"create refused ({exc.message}) and the "
                                                 f"look-up failed: {lookup}") from None
            if found is not None:
                self.log.warning("push.refused_but_created", return_id=rid, error=exc.message)
                return found
            self.counts.rejected += 1
            with self.store.atomic():
                self.store.effect_outcome(key, st.FAILED, error=exc.message)
                self._set_stage(rid, st.REJECTED, exc.message)
            self._problem(rid, "push", f"warehouse rejected the RMA: {exc.message}")
            return None
        except OutcomeUnknown as exc:
            # The intent stays armed: the next attempt looks the RMA up before creating.
            self.store.effect_error(key, str(exc))
            raise
        except PermanentError as exc:
            if isinstance(exc, AuthError):
                with self.store.atomic():  # refused at the door: nothing was created
                    self.store.effect_not_sent(key, str(exc))
                    self._set_stage(rid, st.NEW, None)
                raise
            # An error whose meaning is not certain (an error body, an unexpected status)
            # is an unknown outcome: the intent stays armed and the RMA is looked up first.
            self.store.effect_error(key, str(exc))
            raise
        except RemoteError as exc:
            with self.store.atomic():  # certainly not sent: nothing to look up next time
                self.store.effect_not_sent(key, str(exc))
                self._set_stage(rid, st.NEW, None)
            raise

    def _wait(self, rid: str, row: dict[str, Any], reason: str) -> None:
        since = row.get("wait_since") if row["stage"] == st.WAITING else None
        waited = self.clock.now() - parse_timestamp(since) if since else timedelta(0)
        if waited > self.cfg.warehouse.order_wait:
            message = f"{reason}; gave up after waiting {waited.days}d"
            self._set_stage(rid, st.STALE, message)
            self._problem(rid, "push", message)
            return
        if row["stage"] != st.WAITING:
            self.counts.waiting += 1
        self.store.set_stage(rid, st.WAITING, reason, keep_wait_since=since is not None)

    def _set_stage(self, rid: str, stage: str, reason: str | None = None, *,
                   action: str | None = None) -> None:
        self.store.set_stage(rid, stage, reason, action=action)

    # -- poll -----------------------------------------------------------------------------
    def poll(self, only: set[str] | None = None) -> None:
        rows = [r for r in self.store.open_rmas() if only is None or r["return_id"] in only]
        refs: list[RmaRef] = []
        for row in rows:
            snap = self.store.snapshot(row["return_id"]) or {}
            if str(snap.get("state", "open")).lower() != "open":
                # Someone acted in Loop already (processed by hand, cancelled): nothing to do.
                self.counts.settled += 1
                self._set_stage(row["return_id"], st.DONE,
                                f"return is {snap.get('state')} in Loop", action="settled")
                continue
            refs.append(RmaRef(row["return_id"], row["rma_id"], row["extra"]))
        size = max(1, len(refs)) if self.connector.polls_all_at_once else POLL_CHUNK
        for i in range(0, len(refs), size):
            if self.stop.is_set():
                return
            chunk = refs[i:i + size]
            try:
                result = self.connector.poll(chunk)
            except PollStopped:
                return
            except PaginationStopped as exc:
                if exc.reason != "stopped":  # a walk cut short by shutdown is not a fault
                    raise
                return
            except Exception as exc:
                if isinstance(exc, RemoteError) or not one_records_fault(exc):
                    raise
                # An answer no parser foresaw: these RMAs wait, the next chunk goes on.
                self.counts.errors += 1
                self._problem(None, "poll", f"{self.connector.kind} poll of {len(chunk)} "
                                            f"RMA(s) unreadable: {_unexpected(exc)}")
                continue
            self.counts.polled += len(chunk)
            with self.store.atomic():
                for rid, status in result.statuses.items():
                    self._record_status_of_one(rid, status)
                for rid, error in result.errors.items():
                    self._problem(rid, "poll", error)
                for message in result.problems:  # about no one RMA (a rejected file, ...)
                    self._problem(None, "poll", message)
            result.commit()  # only now may a connector archive what it read

    def _record_status_of_one(self, rid: str, status: RmaStatus) -> None:
        """`_record_status` in a savepoint: one status that cannot be recorded (a stored
        snapshot older rules accepted, ...) is recorded as a problem; the chunk goes on."""
        try:
            with self.store.atomic():
                self._record_status(rid, status)
        except Unreadable as exc:
            self.counts.errors += 1
            self._set_stage(rid, st.REJECTED, f"malformed Loop return: {exc}")
            self._problem(rid, "poll", f"malformed Loop return: {exc}")
        except Exception as exc:
            if not one_records_fault(exc):
                raise
            self.counts.errors += 1
            self._problem(rid, "poll", _unexpected(exc))

    def _record_status(self, rid: str, status: RmaStatus) -> None:
        decision = rules.decide(status, self.cfg.warehouse.statuses)
        fingerprint = json.dumps(status.fingerprint())
        previous = self.store.record_poll(rid, status.status, json.dumps(asdict(status)),
                                          fingerprint, decision.action, decision.reason)
        first_poll, changed = previous is None, previous != fingerprint
        if decision.action in (rules.IGNORE, rules.WAIT):
            # A fresh RMA with nothing received is not news; a later ignore status is.
            quiet = first_poll and status.received_units == 0
            if changed and decision.action == rules.IGNORE and not quiet:
                self.counts.ignored += 1
                self._event("ignored", rid, reason=decision.reason)
            return
        if decision.action == rules.REPORT:
            self.counts.reported += 1
            self._set_stage(rid, st.REPORTED, decision.reason)
            self._problem(rid, "act", decision.reason)
            self.result.attention.append(f"return {rid}: {decision.reason}")
            self._event("reported", rid, reason=decision.reason)
            return
        ret = LoopReturn.from_api(self.store.snapshot(rid))
        grades, assessments = rules.grading_items(ret, status, self.cfg.warehouse.grading)
        # One effect per request Loop takes, so a retry re-sends only its own batch.
        for n, batch in enumerate(batched(grades, DISPOSITION_BATCH)):
            self.store.plan_effect(f"grade:{rid}:{n}", rid, "grade", {"items": batch})
        for n, batch in enumerate(batched(assessments, DISPOSITION_BATCH)):
            self.store.plan_effect(f"assess:{rid}:{n}", rid, "assess", {"items": batch})
        if decision.action == rules.PROCESS:
            self.store.plan_effect(f"process:{rid}", rid, "process", {"reason": decision.reason})
        else:
            self.store.plan_effect(f"flag:{rid}", rid, "flag", {"reason": decision.reason})
            self.store.plan_effect(f"note_flag:{rid}", rid, "note",
                                   {"text": rules.flag_note(status, decision)})
        self._set_stage(rid, st.ACTING, decision.reason)

    # -- act ------------------------------------------------------------------------------
    def act(self, only: set[str] | None = None) -> None:
        """Carry out every planned or interrupted effect, return by return, in plan order."""
        rids = dict.fromkeys(e["return_id"] for e in self.store.pending_effects())
        self._each_return("act", rids, self._run_effects, only)

    def _run_effects(self, rid: str) -> None:
        row = self.store.get_return_row(rid)
        reported = row is not None and row["stage"] == st.REPORTED
        for effect in self.store.pending_effects(rid):
            if effect["kind"] == "create_rma":
                continue  # owned by the push stage
            if reported and not effect["key"].startswith("note_rma:"):
                return  # left for a person: only the note naming its RMA still goes
            if not self._run_effect(effect):
                if effect["kind"] == "note":
                    continue  # a note waits alone: nothing after it depends on it
                return  # deferred: keep plan order, try again next cycle

    def _apply_verdict(self, verdict: str, key: str, rid: str, kind: str, *, done: str,
                       report: str) -> bool | None:
        """Act on a reconciliation's verdict: False (wait for a later cycle), True (settled
        as done, or reported for a person), None (repeat: the caller performs the call)."""
        if verdict == "wait":
            return False
        if verdict == "done":
            self._settle(key, rid, kind, st.SETTLED, done)
            return True
        if verdict == "report":
            self._report_action(key, rid, kind, report)
            return True
        return None

    def _run_effect(self, effect: dict[str, Any]) -> bool:
        """Carry out one effect; False when it must wait for a later cycle."""
        key, rid, kind = effect["key"], effect["return_id"], effect["kind"]
        payload = effect["payload"] or {}
        if effect["status"] == st.INTENT:
            outcome = self._apply_verdict(
                self._reconcile(kind, rid, payload, effect), key, rid, kind,
                done="already done in Loop",
                report=f"the {kind} call's answer was lost and Loop does not show for "
                       "certain whether it took effect")
            if outcome is not None:
                return outcome
        elif kind == "note" and self._note_in_loop(rid, payload):
            # Before the first write too: state that was lost or moved must not write the
            # note again (Loop keeps every copy).
            if key.startswith("note_rma:") and not self.dry_run:
                # An earlier run, whose state this file lacks, worked on this return.
                self.store.kv(FOUND_RMAS).set(rid, iso(self.clock.now()))
            self._settle(key, rid, kind, st.SETTLED, "note already in Loop")
            return True
        elif kind in ("process", "flag") and self.store.kv(FOUND_RMAS).get(rid):
            # A lost run may have sent this very call, its answer lost with the state: the
            # same discipline as a lost answer, timed from the discovery. One `open` read
            # (Loop's queue may still be working) is no proof it did not land.
            found_at = self.store.kv(FOUND_RMAS).get(rid)
            if self.clock.now() - parse_timestamp(found_at) < PROCESS_SETTLE:
                return False  # let Loop finish first; no reads needed yet
            outcome = self._apply_verdict(
                self._reconcile_action({**effect, "updated_at": found_at}), key, rid, kind,
                done="return is no longer open in Loop",
                report=f"a run whose state is lost worked on this return and Loop does not "
                       f"show for certain whether its {kind} took effect")
            if outcome is not None:
                return outcome
        if self.dry_run:
            self.result.planned.append(f"return {rid}: would {_describe(kind, payload)}")
            return True
        self.store.effect_intent(key, rid, kind)
        try:
            self._perform(kind, rid, payload)
        except StateConflict as exc:
            if kind in ("process", "flag") and not _LEFT_OPEN.search(exc.message):
                # Settled at its word only when it says the return left `open`: "Return is
                # open and cannot be processed" (or a bare code) means nothing happened to
                # it, so the return's state decides.
                return self._settle_from_state(key, rid, kind, exc)
            self._settle(key, rid, kind, st.SETTLED, exc.message)
            return True
        except OutcomeUnknown as exc:
            self.store.effect_error(key, str(exc))
            raise
        except AuthError as exc:  # refused before it ran: try again once credentials work
            self.store.effect_not_sent(key, str(exc))
            raise
        except PermanentError as exc:
            if kind in ("process", "flag") and not isinstance(exc, AuthError):
                # An error answer in a wording loopsync does not know ("Return has already
                # been processed", ...) is not a verdict: settle from the return's state.
                return self._settle_from_state(key, rid, kind, exc)
            if kind == "note" and not isinstance(exc, AuthError) and \
                    self._note_in_loop(rid, payload):
                self._settle(key, rid, kind, st.SETTLED, f"note already in Loop ({exc.message})")
                return True
            self._settle(key, rid, kind, st.FAILED, exc.message)
            self._problem(rid, "act", f"{kind} failed: {exc.message}")
            return True
        except TransientError as exc:  # certainly not sent (no connection, 429)
            self.store.effect_not_sent(key, str(exc))
            raise
        self._settle(key, rid, kind, st.SUCCEEDED, None)
        return True

    def _perform(self, kind: str, rid: str, payload: dict[str, Any]) -> None:
        if kind == "note":
            self.loop.add_note(rid, payload["text"])
        elif kind == "process":
            self.loop.process(rid)
        elif kind == "flag":
            self.loop.flag(rid)
        elif kind == "grade":
            self.loop.grade(payload["items"])
        elif kind == "assess":
            self.loop.assess(payload["items"])
        else:
            raise PermanentError("loopsync", f"unknown effect kind {kind!r}")

    def _reconcile(self, kind: str, rid: str, payload: dict[str, Any],
                   effect: dict[str, Any]) -> str:
        """After an unknown outcome: 'done' if Loop shows it happened, 'wait' if it cannot
        tell yet, 'repeat' if it certainly did not happen (or repeating is harmless)."""
        if kind == "note":
            settle = timedelta(seconds=NOTE_SETTLE * self.cfg.loop.timeout)
            if self._too_soon(effect, settle):
                return "wait"  # the lost request may still be being written: look later
            if self._note_in_loop(rid, payload):
                return "done"
            # One read without it may be stale (Loop keeps every copy of a note written
            # twice): repeat only when a second read, `settle` later, agrees.
            evidence = self.store.kv(SETTLE_EVIDENCE)
            slot = f"{effect['key']}#{effect.get('attempts') or 0}"
            first = evidence.get(slot)
            now = self.clock.now()
            if not isinstance(first, str):
                if not self.dry_run:
                    evidence.set(slot, iso(now))
                return "wait"
            return "wait" if now - parse_timestamp(first) < settle else "repeat"
        if kind in ("process", "flag"):
            return self._reconcile_action(effect)
        return "repeat"  # grade/assess: re-sending the same grades is harmless

    def _note_in_loop(self, rid: str, payload: dict[str, Any]) -> bool:
        """Does Loop already hold this note, or a loopsync note naming the same RMA?"""
        notes = [_fold(n.get("content")) for n in self.loop.notes(rid) if isinstance(n, dict)]
        return rules.note_present(notes, _fold(payload.get("text")),
                                  _fold(payload.get("names")) or None)

    def _action_read(self, rid: str) -> rules.ActionRead:
        """One read of what Loop shows about a return, for the settle rules."""
        details = self.loop.return_details(rid)
        notes = self.loop.notes(rid)
        loop_at = getattr(self.loop, "details_server_date", None)
        return rules.ActionRead(state=str(details.get("state", "")).lower(),
                                updated_at=str(details.get("updated_at") or ""),
                                notes=len(notes), at=iso(self.clock.now()),
                                loop_at=iso(loop_at) if isinstance(loop_at, datetime) else "")

    def _reconcile_action(self, effect: dict[str, Any]) -> str:
        """A process or flag whose answer was lost: done, wait, repeat or report.

        Any state but `open` settles it at once. An `open` read counts only from
        PROCESS_SETTLE after the attempt (Loop may still be working on it); the first such
        read is kept as evidence, and a second one at least PROCESS_SETTLE later decides
        (rules.settle_action). A stale `open` never causes a second call."""
        key, rid, kind = effect["key"], effect["return_id"], effect["kind"]
        read = self._action_read(rid)
        if read.state != "open":
            return "done"
        if self._too_soon(effect, PROCESS_SETTLE):
            return "wait"  # Loop may still be working on the call: an early `open` is no news
        evidence = self.store.kv(SETTLE_EVIDENCE)
        slot = f"{key}#{effect.get('attempts') or 0}"  # one record per attempt
        first_raw = evidence.get(slot)
        first = rules.ActionRead(**first_raw) if isinstance(first_raw, dict) else None
        if first is not None and self.clock.now() - parse_timestamp(first.at) < \
                PROCESS_SETTLE:
            return "wait"
        if first is not None and first.loop_at and read.loop_at and \
                parse_timestamp(read.loop_at) - parse_timestamp(first.loop_at) < PROCESS_SETTLE:
            # Our clock says a settle delay passed, Loop's does not: ours jumped. Wait for
            # Loop's clock; if it never moves on (a `Date` that lies), ask a person.
            if self.clock.now() - parse_timestamp(first.at) < CLOCK_DOUBT_AFTER:
                return "wait"
            return "report"
        verdict = rules.settle_action(kind, first, read, attempted_at=effect["updated_at"])
        if verdict == "wait" and not self.dry_run:
            evidence.set(slot, asdict(read))
        return verdict

    def _settle_from_state(self, key: str, rid: str, kind: str, exc: PermanentError) -> bool:
        """An action refused in words loopsync does not know: the return's state says
        whether it is done; an `open` return is reported rather than guessed about."""
        try:
            state = str(self.loop.return_details(rid).get("state", "")).lower()
        except RemoteError as read_exc:
            self.store.effect_error(key, f"{exc}; state read failed: {read_exc}")
            raise
        if state != "open":
            self._settle(key, rid, kind, st.SETTLED, f"{exc.message} (return is {state})")
            return True
        self._report_action(key, rid, kind, f"Loop answered the {kind} call with an error "
                                            f"loopsync does not know ({exc.message}) and "
                                            "the return is still open")
        return True

    def _report_action(self, key: str, rid: str, kind: str, reason: str) -> None:
        with self.store.atomic():
            self.store.effect_outcome(key, st.FAILED, error=reason)
            self._report_for_person(rid, "act", reason)

    def _too_soon(self, effect: dict[str, Any], wait: timedelta) -> bool:
        """Is the effect's last attempt (or its failure) less than `wait` ago?"""
        return self.clock.now() - parse_timestamp(effect["updated_at"]) < wait

    def _settle(self, key: str, rid: str, kind: str, status: str, message: str | None) -> None:
        reason = message or payload_reason(self.store, key)
        with self.store.atomic():
            self.store.effect_outcome(key, status, error=message)
            if kind in ("process", "flag"):
                outcome = _action_outcome(kind, status)
                if outcome != "failed":
                    setattr(self.counts, outcome, getattr(self.counts, outcome) + 1)
                stage = st.REJECTED if status == st.FAILED else st.DONE
                self._set_stage(rid, stage, reason, action=outcome)
            elif kind == "note" and status == st.SUCCEEDED:
                self.counts.notes += 1
            elif kind in ("grade", "assess") and status == st.SUCCEEDED:
                self.counts.graded += 1
        if kind in ("process", "flag"):
            self._event(_action_outcome(kind, status), rid, reason=reason)


# A state-conflict wording naming a state the return left `open` for.
_LEFT_OPEN = re.compile(r"\breturn is (?:already )?(?:closed|cancell?ed|expired|review|flagged|"
                        r"processed)\b", re.IGNORECASE)


def _action_outcome(kind: str, status: str) -> str:
    """processed | flagged | settled | failed: what became of a process or flag call."""
    if status == st.SETTLED:
        return "settled"
    if status == st.FAILED:
        return "failed"
    return "processed" if kind == "process" else "flagged"


def payload_reason(store: Store, key: str) -> str | None:
    eff = store.effect(key)
    if not eff or not eff.get("payload"):
        return None
    return (json.loads(eff["payload"]) or {}).get("reason")


def _describe(kind: str, payload: dict[str, Any]) -> str:
    if kind == "note":
        return f"add the note {payload.get('text')!r}"
    if kind in ("process", "flag"):
        return f"{kind} it ({payload.get('reason')})"
    return f"send {len(payload.get('items', []))} item(s) to Loop {kind}"


def _fold(text: Any) -> str:
    return " ".join(str(text or "").split())


def _raw_id(raw: Any) -> str | None:
    return safe_numeric_id(raw.get("id")) if isinstance(raw, dict) else None


def _unexpected(exc: BaseException) -> str:
    """An error no one raised on purpose, for a problem row: its type and message."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a message that cannot be built says nothing
        text = ""
    return printable(f"unexpected {type(exc).__name__}: {text}", 500)
