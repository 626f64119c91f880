"""The push stage: every open, mapped Loop return becomes one RMA in the warehouse.

Each return in stage NEW, WAITING or PUSHING is decided by two pure functions over typed
values, and the I/O around them only carries the decision out:

- `decide_push` (before any remote call): relink after a crash, wait for a lost create to
  land, skip with the reason (`rules.plan_push`), or push;
- `decide_found` (after the connector's look-up): create, link the RMA found, wait for a
  watch-only warehouse's own RMA, or report an RMA another return already holds.

Exactly once: the RMA is looked up (`find_rma`) before every first create too, not only
before a repeat, so a lost or moved state file creates nothing twice; the create itself is
`effects.CreateRma` under the ledger. The link, the ledger's `succeeded` and the RMA note's plan
commit in one transaction; the note is then written at once (`act.run_effects`).

A connector matching by something weaker than the Loop return id (`weak_matching`) never
links two open returns to one RMA: both are reported for a person, neither is acted on.

A backlog (a backfill of thousands of returns) is worked through in batches (`Backlog`,
`batch_over`: `push.batch` returns or `push.batch_time`, whichever comes first); the cycle
runs poll and act between batches when `poll_between` says so, so a return the warehouse
has received is processed while the backlog is still being pushed.

Look-ups are batched: before pushing the next `LOOKAHEAD` returns, the stage hands the
connector those never tried (no create intent) as one `prepare` call, so a connector can
look up many orders and RMAs per request (ShipHero: 50 aliased look-ups a document).
`prepare` is read-only and best effort; a return it did not settle is looked up alone, and
a return with a create intent (a lost create) is always looked up afresh.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from loopsync import rules
from loopsync.config import PushSettings
from loopsync.connectors.base import NotReady, PushRequest
from loopsync.effects import (
    CreateRma,
    call_under_ledger,
    create_rma_key,
    first_attempt,
    rma_note_key,
)
from loopsync.errors import Ambiguous, Rejected, RemoteError, Unreadable
from loopsync.models import LoopReturn, MalformedReturn, RmaRef
from loopsync.stages.act import run_effects
from loopsync.stages.context import CycleContext
from loopsync.state import Effect, EffectKind, EffectStatus, ReturnRow, Stage
from loopsync.timeutil import parse_timestamp

# A warehouse create whose answer was lost may still be running there (ShipHero has no
# idempotency key): look it up only this many warehouse read timeouts later.
CREATE_SETTLE = 2  # warehouse read timeouts


# Returns whose look-ups are handed to the connector's `prepare` at once: a ShipHero
# document of 50 aliased order look-ups stays far under its 1,001-credit cap per query
# (about 400), and 50 makes look-ups 2 requests per 50 RMAs (BENCHMARKS.md, push cost).
LOOKAHEAD = 50

# A create in one of these ledger statuses has finished: the RMA exists.
_FINISHED = (EffectStatus.SUCCEEDED, EffectStatus.SETTLED)


# -- pure decisions ------------------------------------------------------------------------


class PushStep(StrEnum):
    RELINK = "relink"  # created and linked before a crash: only the stage moves on
    LATER = "later"  # a lost create may still land: looking now could miss it
    SKIP = "skip"  # not for the warehouse; the reason says why
    PUSH = "push"  # look the RMA up, then create or link it


@dataclass(frozen=True)
class PushFacts:
    """What the store knows about one return, for `decide_push`."""

    ret: LoopReturn
    stage: Stage  # the return's stage now
    plan: rules.PushPlan  # rules.plan_push for this return
    create: EffectStatus | None = None  # the create_rma ledger status (None: never planned)
    linked: bool = False  # an RMA is linked (looked at only after a finished create)
    settling: bool = False  # the last create attempt is under CREATE_SETTLE old


@dataclass(frozen=True)
class PushDecision:
    step: PushStep
    reason: str | None = None  # SKIP: why not
    destination: str = ""  # PUSH: the mapped warehouse id ("" for a watch-only one)
    newly_skipped: bool = False  # SKIP: first time, so counted
    problem: str | None = None  # a problem row to record about the return


def decide_push(facts: PushFacts) -> PushDecision:
    """What to do with a return before any remote call."""
    if facts.create in _FINISHED and facts.linked:
        return PushDecision(PushStep.RELINK)
    unknown_outcome = facts.create == EffectStatus.INTENT
    if unknown_outcome and facts.settling:
        return PushDecision(PushStep.LATER)
    plan, ret = facts.plan, facts.ret
    if not plan.push and not unknown_outcome:
        first = facts.stage != Stage.SKIPPED
        # Not a closed return: bad data or configuration, worth a problem row.
        problem = (
            f"not sent to the warehouse: {plan.skip_reason}"
            if first and ret.state == "open"
            else None
        )
        return PushDecision(PushStep.SKIP, plan.skip_reason, newly_skipped=first, problem=problem)
    skuless = [li.line_item_id for li in ret.line_items if not li.sku]
    problem = (
        (f"line item {', '.join(skuless)} has no SKU: the warehouse gets the other lines only")
        if skuless and facts.stage == Stage.NEW
        else None
    )
    return PushDecision(PushStep.PUSH, destination=plan.destination or "", problem=problem)


class FoundStep(StrEnum):
    CREATE = "create"  # no RMA yet: create it
    LINK = "link"  # the RMA exists (made by us earlier, or by the warehouse)
    WAIT = "wait"  # watch-only warehouse: its own RMA is not there yet
    AMBIGUOUS = "ambiguous"  # matched weakly to an RMA another return already holds


def decide_found(ref: RmaRef | None, *, creates_rmas: bool, other_owners: list[str]) -> FoundStep:
    """What the look-up's answer means. `other_owners`: returns other than this one
    already linked to `ref` (asked only of weakly matching connectors)."""
    if ref is None:
        return FoundStep.CREATE if creates_rmas else FoundStep.WAIT
    return FoundStep.AMBIGUOUS if other_owners else FoundStep.LINK


# -- batches (pure) -----------------------------------------------------------------------


def batch_over(handled: int, elapsed: float, limits: PushSettings) -> bool:
    """Does a batch end after `handled` returns and `elapsed` seconds?"""
    return handled >= limits.batch or elapsed >= limits.batch_time.total_seconds()


def poll_between(pushed_for: float, last_poll_took: float) -> bool:
    """Do poll and act run before the next batch? Only once the push since the last poll
    has taken at least as long as that poll and act did: polling thousands of open RMAs
    can take many minutes (ShipHero: about 21 min for 5,000, BENCHMARKS.md), and without
    this share it could crowd out the backlog it waits on. So polling takes at most about
    half of a backlog's time, and a received return waits at most about one poll plus
    one batch."""
    return pushed_for >= last_poll_took


class Backlog:
    """The returns one cycle's push works through, taken once at its start (a return left
    waiting is not tried again in the same cycle), handed out batch by batch."""

    def __init__(
        self, ids: list[str], prepare: Callable[[Sequence[str]], None] | None = None
    ) -> None:
        self.ids = ids
        self.position = 0
        self.abandoned = False  # the stage stopped (an outage): the rest waits a cycle
        self.prepare = prepare  # called with the next LOOKAHEAD ids as they come up
        self._prepared_to = 0

    @property
    def total(self) -> int:
        return len(self.ids)

    @property
    def done(self) -> bool:
        return self.abandoned or self.position >= len(self.ids)

    def take(self) -> str:
        if self.prepare is not None and self.position >= self._prepared_to:
            self._prepared_to = self.position + LOOKAHEAD
            self.prepare(self.ids[self.position : self._prepared_to])
        rid = self.ids[self.position]
        self.position += 1
        return rid


def looked_ahead(ctx: CycleContext, ids: list[str]) -> Iterator[str]:
    """`ids` in order, each next LOOKAHEAD of them prepared as they come up (the push
    without batches)."""
    backlog = Backlog(ids, prepare=lambda window: prepare(ctx, window))
    while not backlog.done:
        yield backlog.take()


# -- the stage -----------------------------------------------------------------------------


def return_ids(ctx: CycleContext, only: set[str] | None) -> list[str]:
    """The returns this push handles, in order: the ambiguous ones are reported first
    and left out."""
    ids = ctx.store.returns.ids_in_stage(Stage.NEW, Stage.WAITING, Stage.PUSHING)
    ambiguous = _refuse_ambiguous(ctx, ids, only)
    return [i for i in ids if i not in ambiguous]


def _refuse_ambiguous(ctx: CycleContext, ids: list[str], only: set[str] | None) -> set[str]:
    """Open Loop returns that a connector matching by something weaker than the Loop
    return id (Xoro by order number) cannot tell apart: each is reported for a person
    and none is linked or acted on. Returns the ids refused."""
    if not ctx.connector.weak_matching:
        return set()  # matched by the Loop return id: one RMA per return by construction
    in_play = ids + ctx.store.returns.ids_in_stage(Stage.OPEN, Stage.ACTING)
    # Returns already left for a person (reported, stale, rejected) and still open in
    # Loop keep their claim on the order: a later return on it is just as ambiguous.
    held = ctx.store.returns.ids_in_stage(Stage.REPORTED, Stage.STALE, Stage.REJECTED)
    held_ids = set(held)
    refused: set[str] = set()
    for key, rids in _by_match_key(ctx, in_play + held).items():
        if len(rids) < 2 or (only is not None and not only & set(rids)):
            continue
        for rid in rids:
            if rid in held_ids:
                continue  # already with a person (or not in play): not reported again
            ctx.report_for_person(
                rid,
                "push",
                rules.ambiguous_reason(ctx.connector.kind, key, [r for r in rids if r != rid]),
            )
            refused.add(rid)
    return refused


def _by_match_key(ctx: CycleContext, rids: list[str]) -> dict[str, list[str]]:
    """Open returns grouped by the connector's match key."""
    keys: dict[str, list[str]] = {}
    for rid in rids:
        snap = ctx.store.returns.snapshot(rid)
        try:
            ret = LoopReturn.from_api(snap)
        except MalformedReturn:
            continue
        key = ctx.connector.match_key(ret) if ret.state == "open" else None
        if key is not None:
            keys.setdefault(key, []).append(rid)
    return keys


def push_one(ctx: CycleContext, rid: str) -> None:
    """Decide one return and carry the decision out."""
    read = _read(ctx, rid)
    if read is None:
        return
    row, ret, effect, decision = read
    if decision.step == PushStep.RELINK:
        ctx.set_stage(rid, Stage.OPEN)  # a crash after linking, before the stage moved
    elif decision.step == PushStep.SKIP:
        if decision.newly_skipped:
            ctx.counts.skipped += 1
        if decision.problem:
            ctx.problem(rid, "push", decision.problem)
        ctx.set_stage(rid, Stage.SKIPPED, decision.reason)
    elif decision.step == PushStep.PUSH:
        if decision.problem:
            ctx.problem(rid, "push", decision.problem)
        _push(ctx, rid, _request(ctx, rid, ret, decision), row, planned=effect is not None)


def prepare(ctx: CycleContext, rids: Sequence[str]) -> None:
    """Hand the connector the coming returns that will be looked up and were never tried
    (no create intent), so it can batch their look-ups. Best effort: whatever goes wrong
    here only means each return is looked up alone, as without it."""
    reqs: list[PushRequest] = []
    for rid in rids:
        read = _read(ctx, rid, quiet=True)
        if read is not None and read[2] is None and read[3].step == PushStep.PUSH:
            reqs.append(_request(ctx, rid, read[1], read[3]))
    if not reqs:
        return
    try:
        ctx.connector.prepare(reqs)
    except (RemoteError, Unreadable) as exc:
        ctx.log.info("push.prepare_failed", returns=len(reqs), reason=str(exc))


def _read(
    ctx: CycleContext, rid: str, *, quiet: bool = False
) -> tuple[ReturnRow, LoopReturn, Effect | None, PushDecision] | None:
    """The stored return, its create's ledger row and the decision; None when it is gone
    or malformed (rejected with the reason, unless `quiet`: a look-ahead only reads)."""
    row = ctx.store.returns.get(rid)
    if row is None or row.snapshot is None:
        assert quiet, f"return {rid} has no stored row"  # every stored return has one
        return None
    try:
        ret = LoopReturn.from_api(json.loads(row.snapshot))
    except MalformedReturn as exc:
        if not quiet:
            ctx.set_stage(rid, Stage.REJECTED, f"malformed Loop return: {exc}")
        return None
    effect = ctx.store.ledger.get(create_rma_key(rid))
    return row, ret, effect, decide_push(_facts(ctx, rid, ret, row, effect))


def _request(ctx: CycleContext, rid: str, ret: LoopReturn, decision: PushDecision) -> PushRequest:
    return PushRequest(ret, decision.destination, tuple(ctx.store.asn.rows_for(rid)))


def _facts(
    ctx: CycleContext, rid: str, ret: LoopReturn, row: ReturnRow, effect: Effect | None
) -> PushFacts:
    """The store's facts about a return; the extra reads only where they can matter."""
    status = effect.status if effect else None
    plan = rules.plan_push(
        ret, ctx.cfg.warehouse.destinations, needs_destination=ctx.connector.creates_rmas
    )
    linked = status in _FINISHED and ctx.store.rmas.get(rid) is not None
    settle = timedelta(seconds=CREATE_SETTLE * ctx.cfg.warehouse.timeout)
    settling = (
        effect is not None
        and status == EffectStatus.INTENT
        and ctx.too_soon(effect.updated_at, settle)
    )
    return PushFacts(ret, row.stage, plan, status, linked, settling)


def _push(ctx: CycleContext, rid: str, req: PushRequest, row: ReturnRow, *, planned: bool) -> None:
    """Look the RMA up, then create or link it (`planned`: a create_rma row exists)."""
    key = create_rma_key(rid)
    try:
        located = ctx.connector.locate(req)
        # Looked up before the first create too, not only before a repeated one: state
        # that was lost or moved (another working directory, a new volume) must not
        # create a second RMA for a return the warehouse already has.
        ref = ctx.connector.find_rma(req, located)
    except NotReady as exc:
        _wait(ctx, rid, row, exc.reason)
        return
    except Ambiguous as exc:
        ctx.report_for_person(rid, "push", exc.message)
        return
    except Rejected as exc:
        ctx.counts.rejected += 1
        ctx.set_stage(rid, Stage.REJECTED, exc.message)
        ctx.problem(rid, "push", exc.message)
        return
    owners = (
        [o for o in ctx.store.rmas.owners(ref.rma_id) if o != rid]
        if ref is not None and ctx.connector.weak_matching
        else []
    )
    step = decide_found(ref, creates_rmas=ctx.connector.creates_rmas, other_owners=owners)
    if step == FoundStep.WAIT:
        _wait(ctx, rid, row, f"no {ctx.connector.kind} RMA for this return yet")
    elif step == FoundStep.AMBIGUOUS:
        assert ref is not None
        # Matched by order number to an RMA another return already has.
        ctx.report_for_person(
            rid,
            "push",
            rules.ambiguous_reason(ctx.connector.kind, f"{ctx.connector.rma_label(ref)}", owners),
        )
    elif step == FoundStep.CREATE:
        created = call_under_ledger(
            ctx, CreateRma(req, located), first_attempt(key, rid, EffectKind.CREATE_RMA)
        )
        if created is not None:
            ctx.counts.pushed += 1
            ctx.event("rma_created", rid, rma=created.rma_id)
            _link(ctx, rid, created, key, planned=planned)
    elif ref is not None:
        ctx.counts.linked += 1
        ctx.event("rma_linked", rid, rma=ref.rma_id)
        _link(ctx, rid, ref, key, planned=planned)


def _link(ctx: CycleContext, rid: str, ref: RmaRef, key: str, *, planned: bool) -> None:
    """Link the RMA, settle its create, plan its note, move the stage: one transaction;
    then write the note."""
    connector = ctx.connector
    with ctx.store.atomic():
        ctx.store.rmas.link(rid, ref.rma_id, ref.extra)
        if planned or connector.creates_rmas:
            ctx.store.ledger.plan(key, rid, EffectKind.CREATE_RMA)
            ctx.store.ledger.outcome(key, EffectStatus.SUCCEEDED, result={"rma_id": ref.rma_id})
        # Planned with the link, so a crash before the note still leaves it to do. A
        # watch-only connector's match gets its note too (naming the matched ASN).
        label = connector.rma_label(ref)
        text = rules.rma_note(label) if connector.creates_rmas else rules.link_note(label)
        ctx.store.ledger.plan(
            rma_note_key(rid), rid, EffectKind.NOTE, {"text": text, "names": label}
        )
        ctx.set_stage(rid, Stage.OPEN, None)
    run_effects(ctx, rid)


def _wait(ctx: CycleContext, rid: str, row: ReturnRow, reason: str) -> None:
    """The warehouse is not ready for this return: wait, or give up after order_wait."""
    since = row.wait_since if row.stage == Stage.WAITING else None
    waited = ctx.now() - parse_timestamp(since) if since else timedelta(0)
    if waited > ctx.cfg.warehouse.order_wait:
        message = f"{reason}; gave up after waiting {waited.days}d"
        ctx.set_stage(rid, Stage.STALE, message)
        ctx.problem(rid, "push", message)
        return
    if row.stage != Stage.WAITING:
        ctx.counts.waiting += 1
    ctx.store.returns.move(rid, Stage.WAITING, reason, keep_wait_since=since is not None)
