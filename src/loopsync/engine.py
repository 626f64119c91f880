"""One sync cycle for one merchant: ingest -> push -> poll -> act.

Each stage resumes where the last one stopped, from the store alone. A stage that fails
on a remote outage is recorded and the next stage still runs: a warehouse outage does not
hold back ingest, and a Loop outage does not block polling.

Exactly once: every remote side effect is a row in the `effects` ledger. It is planned
(`pending`) in the same transaction as the decision that calls for it, marked `intent`
(committed) just before the call, and `done`/`settled`/`failed` after. A row found in
`intent` had an unknown outcome, so the remote is checked before the call is repeated.
"""

from __future__ import annotations

import json
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
from loopsync.errors import (AuthError, OutcomeUnknown, PermanentError, Rejected, RemoteError,
                             StateConflict, TransientError)
from loopsync.loop_client import DISPOSITION_BATCH, PaginationStopped, batched
from loopsync.models import LoopReturn, MalformedReturn, RmaRef, RmaStatus, asn_row_problem
from loopsync.prefetch import prefetched
from loopsync.store import Store
from loopsync.timeutil import Clock, iso, parse_timestamp
from loopsync.windows import Window, ingest_start, plan_windows

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
POLL_CHUNK = 500
# The ASN report only feeds tracking numbers of returns still to push, which are recent:
# the first run reads this far back rather than from loop.start_at, day by day.
ASN_BACKFILL = timedelta(days=30)


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

    @property
    def ok(self) -> bool:
        return self.counts.errors == 0


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
            self.result.stage_errors[name] = str(exc)
            self.log.error("stage.failed", stage=name, error=str(exc))

    def _event(self, kind: str, rid: str, **info: Any) -> None:
        self.result.events.append({"event": kind, "return_id": rid, **info})
        self.log.info(f"return.{kind}", return_id=rid, **info)

    def _problem(self, rid: str | None, stage: str, message: str) -> None:
        self.store.add_problem(rid, stage, message, self.run_id)
        self.log.warning("return.problem", return_id=rid, stage=stage, problem=message)

    # -- ingest ---------------------------------------------------------------------------
    def ingest(self) -> None:
        """Pull every state pass up to one fixed end instant (the signpost), window by
        window, page by page; each page and its checkpoint commit together."""
        end = self.clock.now()
        for state in self.cfg.loop.states:
            if self.stop.is_set():
                return
            cur = self.store.cursor(RETURNS, state)
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

    def _ingest_window(self, state: str, window: Window, cursor: str | None,
                       *, retried: bool = False) -> str:
        """Read one window: COMPLETE, STOPPED (shutdown; checkpoint saved) or INCOMPLETE
        (pagination broke off; the pages read are kept, the window stays open)."""
        last = None
        try:
            pages = self.loop.iter_returns(window.start, window.end, state, cursor=cursor)
            for page in prefetched(pages, name="loop-pages"):
                last = page
                with self.store.atomic():
                    self._ingest_page(page.returns)
                    self.store.save_page(RETURNS, state, window.start, window.end,
                                         page.next_cursor)
                if self.stop.is_set() and page.next_cursor:
                    return STOPPED
        except PaginationStopped as exc:
            if not retried and exc.reason != "page_cap":
                # A repeated or missing cursor may be a one-off: read the window again.
                self.log.warning("ingest.window_retry", state=state, reason=exc.reason)
                return self._ingest_window(state, window, None, retried=True)
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
        with self.store.atomic():
            self.store.complete_window(RETURNS, state, window.end)
        return COMPLETE

    def _ingest_page(self, returns: list[Any]) -> list[str]:
        """Store a page of list objects (in the caller's transaction); their ids."""
        # One query for the page's known returns instead of one per return.
        heads = self.store.return_heads([str(raw.get("id")).strip() for raw in returns
                                         if isinstance(raw, dict)])
        return [rid for raw in returns if (rid := self._ingest_return(raw, heads))]

    def _ingest_return(self, raw: Any, heads: dict[str, Any]) -> str | None:
        """`heads`: Store.return_heads of the page."""
        self.counts.pulled += 1
        try:
            ret = LoopReturn.from_api(raw)
        except MalformedReturn as exc:
            self.counts.malformed += 1
            rid = _raw_id(raw)
            self._problem(rid, "ingest", f"malformed Loop return: {exc}")
            return None
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
        cur = self.store.cursor(ASN, "all")
        first_start = max(self.cfg.loop.start_at, end - ASN_BACKFILL)
        start = ingest_start(cur.done_until, first_start, self.cfg.loop.lookback)
        for window in plan_windows(start, end, self.cfg.loop.asn_window):
            if self.stop.is_set():
                return
            rows = self.loop.asn_report(window.start, window.end)
            with self.store.atomic():
                for row in rows:
                    problem = asn_row_problem(row)
                    if problem is None:
                        self.store.upsert_asn_row(row)
                        self.counts.asn_rows += 1
                    else:
                        self._problem(_raw_id(row), "asn", f"malformed ASN row: {problem}")
                self.store.complete_window(ASN, "all", window.end)

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
        updated = parse_timestamp(str(details.get("updated_at") or details.get("created_at")),
                                  assume_utc=True)
        window_states = [str(details.get("state") or "")] + list(self.cfg.loop.states)
        for state in dict.fromkeys(s for s in window_states if s):
            for page in self.loop.iter_returns(updated - timedelta(seconds=1),
                                               updated + timedelta(seconds=1), state):
                for raw in page.returns:
                    if isinstance(raw, dict) and str(raw.get("id")) == str(return_id):
                        with self.store.atomic():
                            self._ingest_page([raw])
                        return {str(return_id)}
        raise PermanentError("loop", f"return {return_id} not found in the returns list "
                                     f"around its updated_at {iso(updated)}")

    # -- push -----------------------------------------------------------------------------
    def push(self, only: set[str] | None = None) -> None:
        ids = self.store.return_ids_in_stage(st.NEW, st.WAITING, st.PUSHING)
        self._each_return("push", ids, self._push_one, only)

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
            if unknown_outcome or not self.connector.creates_rmas:
                ref = self.connector.find_rma(req, located)
        except NotReady as exc:
            self._wait(rid, row, exc.reason)
            return
        except Rejected as exc:
            self.counts.rejected += 1
            self._set_stage(rid, st.REJECTED, exc.message)
            self._problem(rid, "push", exc.message)
            return
        if ref is None and not self.connector.creates_rmas:
            self._wait(rid, row, f"no {self.connector.kind} RMA for this return yet")
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
            if self.connector.creates_rmas:
                # Planned with the link, so a crash before the note still leaves it to do.
                self.store.plan_effect(f"note_rma:{rid}", rid, "note",
                                       {"text": rules.rma_note(self.connector.rma_label(ref))})
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
            self.counts.polled += len(chunk)
            with self.store.atomic():
                for rid, status in result.statuses.items():
                    self._record_status(rid, status)
                for rid, error in result.errors.items():
                    self._problem(rid, "poll", error)
                for message in result.problems:  # about no one RMA (a rejected file, ...)
                    self._problem(None, "poll", message)
            result.commit()  # only now may a connector archive what it read

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
        for effect in self.store.pending_effects(rid):
            if effect["kind"] == "create_rma":
                continue  # owned by the push stage
            if not self._run_effect(effect):
                if effect["kind"] == "note":
                    continue  # a note waits alone: nothing after it depends on it
                return  # deferred: keep plan order, try again next cycle

    def _run_effect(self, effect: dict[str, Any]) -> bool:
        """Carry out one effect; False when it must wait for a later cycle."""
        key, rid, kind = effect["key"], effect["return_id"], effect["kind"]
        payload = effect["payload"] or {}
        if effect["status"] == st.INTENT:
            verdict = self._reconcile(kind, rid, payload, effect)
            if verdict == "wait":
                return False
            if verdict == "done":
                self._settle(key, rid, kind, st.SETTLED, "already done in Loop")
                return True
        if self.dry_run:
            self.result.planned.append(f"return {rid}: would {_describe(kind, payload)}")
            return True
        self.store.effect_intent(key, rid, kind)
        try:
            self._perform(kind, rid, payload)
        except StateConflict as exc:
            self._settle(key, rid, kind, st.SETTLED, exc.message)
            return True
        except OutcomeUnknown as exc:
            self.store.effect_error(key, str(exc))
            raise
        except AuthError as exc:  # refused before it ran: try again once credentials work
            self.store.effect_not_sent(key, str(exc))
            raise
        except PermanentError as exc:
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
            if self._too_soon(effect, timedelta(seconds=NOTE_SETTLE * self.cfg.loop.timeout)):
                return "wait"  # the lost request may still be being written: look later
            # Compared with white space folded: Loop may store the text reformatted.
            texts = {_fold(n.get("content")) for n in self.loop.notes(rid) if isinstance(n, dict)}
            return "done" if _fold(payload["text"]) in texts else "repeat"
        if kind in ("process", "flag"):
            state = str(self.loop.return_details(rid).get("state", "")).lower()
            if kind == "process" and state == "closed" or kind == "flag" and state == "review":
                return "done"
            if state != "open":
                return "done"  # the return left 'open' some other way; do not fire again
            if kind == "process" and self._too_soon(effect, PROCESS_SETTLE):
                return "wait"  # Loop processes asynchronously; give the first call time
            return "repeat"
        return "repeat"  # grade/assess: re-sending the same grades is harmless

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
    if isinstance(raw, dict) and raw.get("id") is not None:
        text = str(raw["id"])[:40]
        return text if text.strip().isdigit() else None
    return None
