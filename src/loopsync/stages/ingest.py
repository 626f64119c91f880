"""The ingest stage: Loop's returns list (and its ASN report) into the store.

Every state pass is read up to one fixed end instant (the signpost), window by window
(`windows.plan_windows`), page by page; each page and its checkpoint commit in one
transaction, so a killed run resumes at the page after the last one stored. A window's
cursor moves only when its last page is stored (`complete_window`), never past Loop's own
clock (`windows.completed_until` with the page's `Date`). A poison record holds back only
itself: it is recorded as a problem and the page is still checkpointed, so it is not
re-read forever.

Clock trouble is kept for `loopsync status` in the kv namespace CURSOR_EVENTS: a cursor
found beyond our clock is pulled back (`windows.check_cursor`), and a disagreement with
Loop's `Date` is logged (`windows.clock_skew`).

Manual imports (`import_window`, `import_return`) store returns the same way but move no
live cursor.

Progress (`loopsync.progress`): Loop's cursor-paged list tells no total, so how far a pull
is counts windows (`planned_windows`, one pass per state), and the rate counts returns.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from loopsync.errors import (
    AuthError,
    PaginationStopped,
    PermanentError,
    UnknownReturn,
    Unreadable,
)
from loopsync.loop_client import LOOP_STATES, ReturnsPage
from loopsync.models import ReturnFacts, parse_asn_row, remote_timestamp, return_facts
from loopsync.paging import WalkEnd, WalkResult, record_walk
from loopsync.prefetch import read_ahead_when_waiting
from loopsync.progress import Progress
from loopsync.stages.asn import asn_parts, refused_text
from loopsync.stages.context import CycleContext, one_records_fault, raw_id, unexpected
from loopsync.state import LOOKUP, Cursor, Lookup, ReturnHead, Upserted
from loopsync.timeutil import iso, parse_timestamp
from loopsync.windows import (
    Window,
    check_cursor,
    clock_skew,
    completed_until,
    ingest_start,
    plan_windows,
)

RETURNS, ASN = "returns", "asn"  # cursor streams
# kv namespace of clock trouble (cursors pulled back from the future, skew against Loop's
# `Date`), read by `loopsync status`.
CURSOR_EVENTS = "cursors"
# The ASN report only feeds tracking numbers of returns still to push, which are recent:
# the first run reads this far back rather than from loop.start_at, day by day.
ASN_BACKFILL = timedelta(days=30)

# A page's stored heads by return id; LOOKUP for an id seen earlier in the same page.
Heads = dict[str, ReturnHead | Lookup]


class WindowEnd(StrEnum):
    """How reading one window ended."""

    COMPLETE = "complete"  # every page stored; the cursor moved past it
    STOPPED = "stopped"  # shutdown; the checkpoint is saved
    INCOMPLETE = "incomplete"  # pagination broke off; pages read are kept, the window stays


def planned_windows(ctx: CycleContext, end: datetime) -> int:
    """How many windows a pull up to `end` reads, from the stored cursors (an estimate
    for progress only: a cursor pulled back from the future reads more)."""
    total = 0
    for state in ctx.cfg.loop.states:
        cur = ctx.store.cursors.get(RETURNS, state)
        resumed = cur.window_from is not None and cur.window_to is not None
        start = ingest_start(
            cur.window_to if resumed else cur.done_until,
            ctx.cfg.loop.start_at,
            ctx.cfg.loop.lookback,
        )
        total += int(resumed) + len(plan_windows(start, end, ctx.cfg.loop.window))
    return total


def ingest(ctx: CycleContext, progress: Progress | None = None) -> None:
    """Pull every state pass up to one fixed end instant (the signpost), window by
    window, page by page; each page and its checkpoint commit together."""
    end = ctx.now()
    if progress is not None:
        progress.grow(planned_windows(ctx, end))
    for state in ctx.cfg.loop.states:
        if ctx.stop.is_set():
            return
        cur = _checked_cursor(ctx, RETURNS, state, end)
        if cur.window_from is not None and cur.window_to is not None:
            # The window a previous run left open is finished first.
            ctx.log.info(
                "ingest.resume",
                state=state,
                window_from=iso(cur.window_from),
                window_to=iso(cur.window_to),
                has_cursor=bool(cur.page_cursor),
            )
            outcome = _ingest_window(
                ctx,
                state,
                Window(cur.window_from, cur.window_to),
                cur.page_cursor,
                progress=progress,
            )
            if outcome == WindowEnd.STOPPED:
                return
            if outcome == WindowEnd.INCOMPLETE:
                continue
            cur = ctx.store.cursors.get(RETURNS, state)
        if _new_windows(ctx, state, cur, end, progress) == WindowEnd.STOPPED:
            return


def _new_windows(
    ctx: CycleContext, state: str, cur: Cursor, end: datetime, progress: Progress | None
) -> WindowEnd:
    """Read the windows from the last completed one (less lookback) to `end`."""
    start = ingest_start(cur.done_until, ctx.cfg.loop.start_at, ctx.cfg.loop.lookback)
    ctx.log.info("ingest.state", state=state, start=iso(start), end=iso(end))
    for window in plan_windows(start, end, ctx.cfg.loop.window):
        outcome = _ingest_window(ctx, state, window, None, progress=progress)
        if outcome != WindowEnd.COMPLETE:
            return outcome  # stopped; or the cursor cannot pass this window: others go on
    return WindowEnd.COMPLETE


def _checked_cursor(ctx: CycleContext, stream: str, state: str, now: datetime) -> Cursor:
    """The stored cursor, pulled back first if it lies beyond `now` (written while our
    clock ran ahead): logged, and kept in kv for `status`."""
    cur = ctx.store.cursors.get(stream, state)
    if not any(t is not None and t > now for t in (cur.done_until, cur.window_to)):
        return cur
    window = (
        Window(cur.window_from, cur.window_to)
        if cur.window_from is not None and cur.window_to is not None
        else None
    )
    check = check_cursor(
        cur.done_until,
        window,
        cur.page_cursor,
        now=now,
        lookback=ctx.cfg.loop.lookback,
        # Nothing stored for this stream: no record ever read tells
        # where the truth was, so read again from the configured start.
        last_seen=ctx.store.cursors.last_updated_at(stream, state) or ctx.cfg.loop.start_at,
    )
    ctx.log.warning(
        "ingest.cursor_pulled_back",
        stream=stream,
        state=state,
        was=iso(cur.done_until),
        now=iso(check.done_until),
        reason=check.reason,
    )
    if not ctx.dry_run:
        with ctx.store.atomic():
            ctx.store.cursors.set_done_until(stream, state, check.done_until)
            ctx.store.kv(CURSOR_EVENTS).set(
                f"pulled_back:{stream}/{state}",
                {
                    "at": iso(now),
                    "from": iso(cur.done_until),
                    "to": iso(check.done_until),
                    "reason": check.reason,
                },
            )
    return Cursor(stream, state, check.done_until, None, None, None)


def _server_now(ctx: CycleContext, local: datetime, remote: datetime | None) -> None:
    """Compare our clock with the remote's `Date`; a disagreement beyond the threshold
    is logged and kept for `status` (cleared when they agree again)."""
    if remote is None:
        return
    skew = clock_skew(local, remote)
    kv = ctx.store.kv(CURSOR_EVENTS)
    if skew is None:
        if kv.get("clock_skew") is not None:
            kv.set("clock_skew", None)
        return
    ctx.log.warning(
        "clock.skew",
        local=iso(local),
        loop=iso(remote),
        ahead_seconds=round(skew.total_seconds(), 1),
    )
    kv.set(
        "clock_skew",
        {"at": iso(local), "loop": iso(remote), "ahead_seconds": round(skew.total_seconds(), 1)},
    )


class _WindowRead:
    """One window's pages as they are stored: what was read, and Loop's clock when the
    reading began (kept across a resumed walk)."""

    def __init__(
        self,
        ctx: CycleContext,
        state: str,
        window: Window,
        cursor: str | None,
        progress: Progress | None = None,
    ) -> None:
        self.ctx, self.state, self.window, self.cursor = ctx, state, window, cursor
        self.progress = progress
        self.date_key = f"window_date:{RETURNS}/{state}"
        self.pages = 0
        self.first_date: datetime | None = None
        if cursor is not None:
            saved = ctx.store.kv(CURSOR_EVENTS).get(self.date_key)
            self.first_date = parse_timestamp(saved) if saved else None

    def read(self) -> WindowEnd:
        """Store every page; STOPPED when a shutdown comes between two pages."""
        ctx, window = self.ctx, self.window
        pages = ctx.loop.iter_returns(window.start, window.end, self.state, cursor=self.cursor)
        for page in read_ahead_when_waiting(pages, name="loop-pages"):
            self.store_page(page)
            if ctx.stop.is_set() and page.next_cursor:
                return WindowEnd.STOPPED
        return WindowEnd.COMPLETE

    def store_page(self, page: ReturnsPage) -> None:
        ctx, window = self.ctx, self.window
        date = getattr(page, "server_date", None)
        first_page = self.pages == 0
        self.pages += 1
        if first_page and date is not None:
            _server_now(ctx, ctx.now(), date)
            self.first_date = date if self.first_date is None else min(self.first_date, date)
        with ctx.store.atomic():
            ingest_page(ctx, page.returns)
            ctx.store.cursors.save_page(
                RETURNS, self.state, window.start, window.end, page.next_cursor
            )
            if first_page and self.first_date is not None and page.next_cursor:
                ctx.store.kv(CURSOR_EVENTS).set(self.date_key, iso(self.first_date))
        if self.progress is not None:
            self.progress.add(0, items=len(page.returns))


def _ingest_window(
    ctx: CycleContext,
    state: str,
    window: Window,
    cursor: str | None,
    *,
    retried: bool = False,
    progress: Progress | None = None,
) -> WindowEnd:
    """Read one window: COMPLETE, STOPPED (shutdown; checkpoint saved) or INCOMPLETE
    (pagination broke off; the pages read are kept, the window stays open)."""
    outcome = _read_window(ctx, state, window, cursor, retried=retried, progress=progress)
    if progress is not None and outcome != WindowEnd.STOPPED:
        progress.add(1, items=0)  # this window is behind us, read or not
    return outcome


def _read_window(
    ctx: CycleContext,
    state: str,
    window: Window,
    cursor: str | None,
    *,
    retried: bool,
    progress: Progress | None,
) -> WindowEnd:
    reading = _WindowRead(ctx, state, window, cursor, progress)
    try:
        outcome = reading.read()
    except PaginationStopped as exc:
        if exc.reason == "stopped":
            return WindowEnd.STOPPED
        if not retried and exc.reason != "page_cap":
            # A repeated or missing cursor may be a one-off: read the window again.
            ctx.log.warning("ingest.window_retry", state=state, reason=exc.reason)
            return _read_window(ctx, state, window, None, retried=True, progress=progress)
        return _walk_broke_off(ctx, reading, exc)
    except PermanentError as exc:
        if cursor is None or reading.pages or isinstance(exc, AuthError):
            raise
        # A saved page cursor the API no longer accepts: re-read the window from its start.
        ctx.log.warning("ingest.cursor_rejected", state=state, error=str(exc))
        return _read_window(ctx, state, window, None, retried=retried, progress=progress)
    if outcome == WindowEnd.STOPPED:
        return outcome
    _record_walk(ctx, f"loop.returns.{state}", None)
    _complete_window(ctx, state, window, reading.first_date)
    return WindowEnd.COMPLETE


def _walk_broke_off(ctx: CycleContext, reading: _WindowRead, exc: PaginationStopped) -> WindowEnd:
    """A walk a retry did not finish: recorded for `status`; the window stays open, or is
    ended where Loop gave nothing to follow."""
    state, window = reading.state, reading.window
    _record_walk(ctx, f"loop.returns.{state}", exc)
    where = f"{state} window {iso(window.start)} -> {iso(window.end)}"
    if exc.reason == "next_page_url_without_cursor":
        # Nothing to follow, twice: waiting cannot finish this window, and holding it
        # open would stop this state's cursor for good. End it, and say so.
        ctx.problem(
            None,
            "ingest",
            f"{where}: Loop gave a next page link without a cursor; the window was ended there",
        )
        _complete_window(ctx, state, window, reading.first_date)
        return WindowEnd.COMPLETE
    ctx.counts.errors += 1
    ctx.problem(None, "ingest", f"{where} not finished ({exc.reason}); it is read again next cycle")
    return WindowEnd.INCOMPLETE


def _complete_window(
    ctx: CycleContext, state: str, window: Window, server_date: datetime | None
) -> None:
    """Mark the window done, never past Loop's own clock when our clock runs ahead."""
    until = completed_until(window.end, server_date)
    if until < window.end:
        ctx.log.warning(
            "ingest.window_end_clamped",
            state=state,
            window_end=iso(window.end),
            loop_now=iso(server_date),
            done_until=iso(until),
        )
    with ctx.store.atomic():
        ctx.store.cursors.complete_window(RETURNS, state, until)
        kv = ctx.store.kv(CURSOR_EVENTS)
        if kv.get(f"window_date:{RETURNS}/{state}") is not None:
            kv.set(f"window_date:{RETURNS}/{state}", None)


def _record_walk(ctx: CycleContext, name: str, exc: PaginationStopped | None) -> None:
    """Keep an unfinished walk (or clear it once it completes) for `status`."""
    if ctx.dry_run:
        return
    if exc is None:
        result = WalkResult(name, WalkEnd.COMPLETE, 0)
    elif isinstance(exc.walk, WalkResult):
        result = exc.walk
    else:  # raised by something other than a PageWalk: its reason names the end
        result = WalkResult(
            name,
            WalkEnd.REPEATED
            if "repeat" in exc.reason
            else WalkEnd.NO_CURSOR
            if "cursor" in exc.reason
            else WalkEnd.CAPPED,
            0,
        )
    record_walk(ctx.store.kv("loop"), WalkResult(name, result.outcome, result.pages), ctx.now())


def ingest_page(ctx: CycleContext, returns: list[Any]) -> list[str]:
    """Store a page of list objects (in the caller's transaction); their ids.

    Returns seen for the first time (not stored, once in the page) are inserted together
    (`ReturnRepository.insert_new`); the others one by one, in page order."""
    # One query for the page's known returns instead of one per return.
    ids = [rid for raw in returns if isinstance(raw, dict) and (rid := raw_id(raw))]
    heads: Heads = dict(ctx.store.returns.heads(ids))
    repeated = {rid for rid, n in Counter(ids).items() if n > 1}
    now = ctx.store.now()  # one page, one transaction, one time (per return: ~2 us each)
    stored: list[str] = []
    fresh: list[ReturnFacts] = []
    for raw in returns:
        facts = _checked(ctx, raw)
        if facts is None:
            continue
        if facts.id in heads or facts.id in repeated:
            if _stored(ctx, facts, heads, now):
                stored.append(facts.id)
        else:
            fresh.append(facts)
    return stored + _insert_fresh(ctx, fresh, now)


def _checked(ctx: CycleContext, raw: Any) -> ReturnFacts | None:
    """A list object's facts; None when it cannot be read (recorded as a problem)."""
    ctx.counts.pulled += 1
    try:
        return return_facts(raw)
    except Unreadable as exc:
        ctx.counts.malformed += 1
        ctx.problem(raw_id(raw), "ingest", f"malformed Loop return: {exc}")
    except Exception as exc:
        if not one_records_fault(exc):
            raise
        _not_stored(ctx, raw_id(raw), exc)
    return None


def _not_stored(ctx: CycleContext, rid: str | None, exc: Exception) -> None:
    # Held with its reason; the page is still checkpointed, so the poison record is not
    # re-read forever and the good ones beside it are kept.
    ctx.counts.errors += 1
    ctx.problem(rid, "ingest", f"Loop return not stored: {unexpected(exc)}")


def _insert_fresh(ctx: CycleContext, fresh: list[ReturnFacts], now: str) -> list[str]:
    """Insert the page's new returns in one go; if that fails for a reason one record
    may cause, each alone, so only the record at fault is held back."""
    if not fresh:
        return []
    try:
        with ctx.store.atomic():  # a savepoint: a failed batch leaves nothing behind
            ctx.store.returns.insert_new(fresh, now)
    except Exception as exc:
        if not one_records_fault(exc):
            raise
        heads: Heads = {}
        return [facts.id for facts in fresh if _stored(ctx, facts, heads, now)]
    ctx.counts.new += len(fresh)
    return [facts.id for facts in fresh]


def _stored(ctx: CycleContext, facts: ReturnFacts, heads: Heads, now: str) -> bool:
    """Store one checked return. `heads`: the page's stored heads
    (`ReturnRepository.heads`); an id missing from them is not stored."""
    head = heads.get(facts.id)
    heads[facts.id] = LOOKUP  # the same id again in this page: read it afresh
    try:
        outcome = ctx.store.returns.upsert(
            facts.id,
            facts.raw,
            state=facts.state,
            updated_at=facts.updated_at,
            created_at=facts.created_at,
            destination_id=facts.destination_id,
            order_name=facts.order_name,
            head=head,
            encoded=facts.encoded,
            now=now,
        )
    except Exception as exc:
        if not one_records_fault(exc):
            raise
        _not_stored(ctx, facts.id, exc)
        return False
    if outcome == Upserted.NEW:
        ctx.counts.new += 1
    elif outcome == Upserted.CHANGED:
        ctx.counts.changed += 1
    return True


def ingest_asn(ctx: CycleContext) -> None:
    """Loop's ASN report in small windows (it does not paginate)."""
    end = ctx.now()
    cur = _checked_cursor(ctx, ASN, "all", end)
    first_start = max(ctx.cfg.loop.start_at, end - ASN_BACKFILL)
    start = ingest_start(cur.done_until, first_start, ctx.cfg.loop.lookback)
    for window in plan_windows(start, end, ctx.cfg.loop.asn_window):
        if ctx.stop.is_set():
            return
        for part in asn_parts(ctx.loop, window):  # a window past the body cap, in parts
            date = getattr(ctx.loop, "last_server_date", None)
            _server_now(ctx, ctx.now(), date)
            with ctx.store.atomic():
                if part.rows is None:  # too large even at the smallest part: said, passed
                    ctx.counts.errors += 1
                    ctx.problem(None, "asn", refused_text(part))
                for row in part.rows or ():
                    _ingest_asn_row(ctx, row)
                until = completed_until(part.window.end, date)
                ctx.store.cursors.complete_window(ASN, "all", until)
            if ctx.stop.is_set():
                return


def _ingest_asn_row(ctx: CycleContext, row: Any) -> None:
    """One ASN row; a row that cannot be read or stored is recorded, the rest go on."""
    try:
        checked = parse_asn_row(row)
    except Unreadable as exc:
        ctx.problem(raw_id(row), "asn", f"malformed ASN row: {exc}")
        return
    try:
        with ctx.store.atomic():
            ctx.store.asn.upsert(checked)
    except Exception as exc:
        if not one_records_fault(exc):
            raise
        ctx.counts.errors += 1
        ctx.problem(raw_id(row), "asn", f"ASN row not stored: {unexpected(exc)}")
        return
    ctx.counts.asn_rows += 1


def import_window(
    ctx: CycleContext, start: datetime, end: datetime, progress: Progress | None = None
) -> set[str]:
    """Manual import of a date range: every state, no live cursor moves."""
    ids: set[str] = set()
    windows = plan_windows(start, end, ctx.cfg.loop.window)
    if progress is not None:
        progress.grow(len(windows) * len(ctx.cfg.loop.states))
    for state in ctx.cfg.loop.states:
        for window in windows:
            for page in ctx.loop.iter_returns(window.start, window.end, state):
                with ctx.store.atomic():
                    ids.update(ingest_page(ctx, page.returns))
                if progress is not None:
                    progress.add(0, items=len(page.returns))
            if progress is not None:
                progress.add(1, items=0)
    return ids


def import_return(ctx: CycleContext, return_id: str) -> set[str]:
    """Manual import of one return (and a webhook's): its details give updated_at, and a
    one-second list window around it gives the list-shaped object the rest of loopsync
    uses. A return updated again between the two reads is outside that window: the
    details are read once more. Still not listed: UnknownReturn (one line, not a crash;
    the cycle's own pull reads the return in its updated_at window)."""
    for _ in range(2):
        details = ctx.loop.return_details(return_id)
        if not isinstance(details, dict):
            raise Unreadable(f"return details of {return_id} are not an object", field="details")
        updated = remote_timestamp(
            details.get("updated_at") or details.get("created_at"),
            "return details: updated_at",
            assume_utc=True,
        )
        if _import_listed(ctx, str(return_id).strip(), details, updated):
            return {str(return_id)}
    raise UnknownReturn(
        f"return {return_id} is not in Loop's returns list around its updated_at "
        f"{iso(updated)} (it may have changed while being read); the next cycle reads it"
    )


def _import_listed(
    ctx: CycleContext, wanted: str, details: dict[str, Any], updated: datetime
) -> bool:
    """Store the list object of return `wanted` from a one-second window around
    `updated`; False when the window does not list it."""
    # Its own state first, when it is one the list filters on (anything else the
    # details say is not a state to ask for).
    own = details.get("state")
    own = own.strip().lower() if isinstance(own, str) else ""
    window_states = ([own] if own in LOOP_STATES else []) + list(ctx.cfg.loop.states)
    for state in dict.fromkeys(window_states):
        for page in ctx.loop.iter_returns(
            updated - timedelta(seconds=1), updated + timedelta(seconds=1), state
        ):
            for raw in page.returns:
                if isinstance(raw, dict) and raw_id(raw) == wanted:
                    with ctx.store.atomic():
                        ingest_page(ctx, [raw])
                    return True
    return False
