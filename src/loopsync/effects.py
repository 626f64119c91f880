"""Remote side effects, one class per kind, and the one place a call runs under the ledger.

Every remote side effect is a row in the store's `effects` ledger: planned (`pending`) in
the same transaction as the decision that calls for it, marked `intent` (committed) just
before the call, and `succeeded`/`settled`/`failed` after. `call_under_ledger` is the only code
that makes such a call; it maps what the remote answered to a ledger transition:

    answer                        ledger                         then
    success                       kind.on_success (succeeded)    -
    StateConflict (Loop's "200    kind.on_conflict               settled, or settled from
      with an error body")                                       the return's state
    OutcomeUnknown (sent, answer  error noted, intent stays      raised: the next attempt
      lost)                       armed                          reconciles first
    AuthError                     kind.not_sent (pending)        raised: the cycle stops
    other PermanentError          kind.on_refused                failed, or settled, or
                                                                 (create) unknown outcome
    other RemoteError (transient: kind.not_sent (pending)        raised: the stage's outage
      certainly not sent)                                        budget counts it

An effect found in `intent` had an unknown outcome: `reconcile` asks the remote before the
call is repeated and gives a `Verdict` (wait, done, repeat, report). Before a first call,
`precheck` may settle it from what the remote already shows (a note already in Loop; an
action on a return a run whose state is lost worked on).

At the edges (lost state, lost answers, remotes that answer in unknown words):
- every note is looked for in Loop's notes before it is written, so a lost or moved state
  file repeats nothing; a create refused in words that may still have created it is looked
  up first (`CreateRma`);
- a process or flag whose answer was lost is repeated only on positive evidence (two `open`
  reads PROCESS_SETTLE apart that agree); an action error in unknown words is settled from
  the return's state; what stays in doubt is REPORTED for a person.

Adding an effect kind: one `LoopEffect` subclass and one line in `EFFECTS` (and a value in
`state.EffectKind`). `CreateRma` is run by the push stage (it needs the connector's look-up), the
others by the act stage in plan order.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import asdict, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

from loopsync import rules
from loopsync.connectors.base import NotReady, PushRequest
from loopsync.errors import (
    AuthError,
    OutcomeUnknown,
    PermanentError,
    Rejected,
    RemoteError,
    StateConflict,
)
from loopsync.models import RmaRef
from loopsync.stages.context import CycleContext
from loopsync.state import Effect, EffectKind, EffectStatus, ReturnAction, Stage
from loopsync.timeutil import iso, parse_timestamp

# After a process call whose answer was lost, Loop may still show the return open while
# it works through its queue. Wait this long before concluding the call did not land.
# (Read at call time: the soak's clean phase sets it to 0 on this module.)
PROCESS_SETTLE = timedelta(minutes=10)
# A note whose answer was lost may still be being written by Loop: answered after our read
# timeout, or in flight when the worker was killed and restarted. Read the notes only this
# many Loop read timeouts after the attempt, or the look-up misses it and writes it twice.
NOTE_SETTLE = 2  # Loop read timeouts
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

# A state-conflict wording naming a state the return left `open` for.
_LEFT_OPEN = re.compile(
    r"\breturn is (?:already )?(?:closed|cancell?ed|expired|review|flagged|"
    r"processed)\b",
    re.IGNORECASE,
)


class Verdict(StrEnum):
    """What a reconciliation concluded about an effect whose outcome was unknown (the
    words of `rules.settle_action`)."""

    WAIT = rules.WAIT_READ  # cannot tell yet: look again next cycle
    DONE = rules.DONE  # it happened: settle it
    REPEAT = rules.REPEAT  # it certainly did not happen, or repeating is harmless
    REPORT = rules.REPORT_ACTION  # in doubt: a person decides


# Ledger keys are stored: a key names one effect for good, so its spelling never changes.
_RMA_NOTE = "note_rma:"


def create_rma_key(rid: str) -> str:
    """The ledger key of a return's RMA create."""
    return f"create_rma:{rid}"


def rma_note_key(rid: str) -> str:
    """The ledger key of the note naming a return's RMA (the push stage plans it)."""
    return f"{_RMA_NOTE}{rid}"


def is_rma_note(effect: Effect) -> bool:
    return effect.key.startswith(_RMA_NOTE)


def first_attempt(key: str, rid: str, kind: EffectKind) -> Effect:
    """An effect about to be attempted for the first time (no ledger row needed yet)."""
    return Effect(key, rid, kind, EffectStatus.PENDING, 0, None, None, {}, "", "", 0)


def evidence_slot(effect: Effect) -> str:
    """The kv key of an effect's settle evidence: one record per attempt."""
    return f"{effect.key}#{effect.attempts}"


R = TypeVar("R")


class EffectType(ABC, Generic[R]):
    """How one kind of effect is performed, checked and settled. `R` is what a call under
    the ledger gives its caller (the RMA for a create; for Loop effects, True when the
    effect is finished for this cycle, False when it must wait)."""

    kind: ClassVar[EffectKind | str]  # a str for UnknownKind alone
    dry_run_result: R

    @abstractmethod
    def perform(self, ctx: CycleContext, effect: Effect) -> Any:
        """Make the remote call (raises the remote's errors)."""

    @abstractmethod
    def describe(self, ctx: CycleContext, effect: Effect) -> str:
        """What the call would do, for a dry run's plan ("add the note ...")."""

    def begin(self, ctx: CycleContext, effect: Effect) -> None:
        """Mark the attempt (`intent`, committed) just before the call."""
        ctx.store.ledger.intent(effect.key, effect.return_id, effect.kind)

    def not_sent(self, ctx: CycleContext, effect: Effect, exc: RemoteError) -> None:
        """The call certainly did not reach the remote: back to pending."""
        ctx.store.ledger.not_sent(effect.key, str(exc))

    @abstractmethod
    def on_success(self, ctx: CycleContext, effect: Effect, answer: Any) -> R: ...

    @abstractmethod
    def on_conflict(self, ctx: CycleContext, effect: Effect, exc: StateConflict) -> R: ...

    @abstractmethod
    def on_refused(self, ctx: CycleContext, effect: Effect, exc: PermanentError) -> R: ...


def call_under_ledger(ctx: CycleContext, kind: EffectType[R], effect: Effect) -> R:
    """Make one effect's remote call, bracketed by its ledger transitions (the table in
    the module docstring). The only place a remote side effect is called."""
    if ctx.dry_run:
        ctx.result.planned.append(f"return {effect.return_id}: would {kind.describe(ctx, effect)}")
        return kind.dry_run_result
    kind.begin(ctx, effect)
    try:
        answer = kind.perform(ctx, effect)
    except StateConflict as exc:
        return kind.on_conflict(ctx, effect, exc)
    except OutcomeUnknown as exc:
        # The intent stays armed: the next attempt reconciles before repeating.
        ctx.store.ledger.error(effect.key, str(exc))
        raise
    except AuthError as exc:  # refused at the door: nothing happened; retry once it works
        kind.not_sent(ctx, effect, exc)
        raise
    except PermanentError as exc:
        return kind.on_refused(ctx, effect, exc)
    except RemoteError as exc:  # transient: certainly not sent (no connection, 429)
        kind.not_sent(ctx, effect, exc)
        raise
    return kind.on_success(ctx, effect, answer)


# -- effects on Loop (run by the act stage) ------------------------------------------------


class LoopEffect(EffectType[bool]):
    """An effect on a Loop return. The call's result: True when the effect is finished
    for this cycle (done, settled, failed or reported), False when it must wait."""

    dry_run_result = True
    # A note waits alone: nothing planned after it depends on it. Other kinds keep plan
    # order, so a waiting one holds back the rest of its return's effects.
    waits_alone: ClassVar[bool] = False

    def reconcile(self, ctx: CycleContext, effect: Effect) -> Verdict:
        """After an unknown outcome: done, wait, repeat or report. Default: repeat
        (re-sending the same grades is harmless)."""
        return Verdict.REPEAT

    def precheck(self, ctx: CycleContext, effect: Effect) -> bool | None:
        """Before a first call: a result when the remote already settles it, else None."""
        return None

    def on_success(self, ctx: CycleContext, effect: Effect, answer: Any) -> bool:
        self.settle(ctx, effect, EffectStatus.SUCCEEDED, None)
        return True

    def on_conflict(self, ctx: CycleContext, effect: Effect, exc: StateConflict) -> bool:
        self.settle(ctx, effect, EffectStatus.SETTLED, exc.message)
        return True

    def on_refused(self, ctx: CycleContext, effect: Effect, exc: PermanentError) -> bool:
        self.settle(ctx, effect, EffectStatus.FAILED, exc.message)
        ctx.problem(effect.return_id, "act", f"{effect.kind} failed: {exc.message}")
        return True

    def settle(
        self, ctx: CycleContext, effect: Effect, status: EffectStatus, message: str | None
    ) -> None:
        """Record the outcome, and what it means for the return, in one transaction."""
        reason = message or effect.payload.get("reason")
        with ctx.store.atomic():
            ctx.store.ledger.outcome(effect.key, status, error=message)
            self.settled(ctx, effect, status, reason)
        self.announce(ctx, effect, status, reason)

    def settled(
        self, ctx: CycleContext, effect: Effect, status: EffectStatus, reason: str | None
    ) -> None:
        """What an outcome changes besides the ledger (in its transaction): counts."""

    def announce(
        self, ctx: CycleContext, effect: Effect, status: EffectStatus, reason: str | None
    ) -> None:
        """An event after the outcome committed (actions only)."""


class Note(LoopEffect):
    kind = EffectKind.NOTE
    waits_alone = True

    def perform(self, ctx: CycleContext, effect: Effect) -> None:
        ctx.loop.add_note(effect.return_id, effect.payload["text"])

    def describe(self, ctx: CycleContext, effect: Effect) -> str:
        return f"add the note {effect.payload.get('text')!r}"

    def precheck(self, ctx: CycleContext, effect: Effect) -> bool | None:
        # Before the first write too: state that was lost or moved must not write the note
        # again (Loop keeps every copy).
        if not note_in_loop(ctx, effect):
            return None
        if is_rma_note(effect) and not ctx.dry_run:
            # An earlier run, whose state this file lacks, worked on this return.
            ctx.store.kv(FOUND_RMAS).set(effect.return_id, iso(ctx.now()))
        self.settle(ctx, effect, EffectStatus.SETTLED, "note already in Loop")
        return True

    def reconcile(self, ctx: CycleContext, effect: Effect) -> Verdict:
        settle = timedelta(seconds=NOTE_SETTLE * ctx.cfg.loop.timeout)
        if ctx.too_soon(effect.updated_at, settle):
            return Verdict.WAIT  # the lost request may still be being written: look later
        if note_in_loop(ctx, effect):
            return Verdict.DONE
        # One read without it may be stale (Loop keeps every copy of a note written
        # twice): repeat only when a second read, `settle` later, agrees.
        evidence = ctx.store.kv(SETTLE_EVIDENCE)
        first = evidence.get(evidence_slot(effect))
        if not isinstance(first, str):
            if not ctx.dry_run:
                evidence.set(evidence_slot(effect), iso(ctx.now()))
            return Verdict.WAIT
        return Verdict.WAIT if ctx.too_soon(first, settle) else Verdict.REPEAT

    def on_refused(self, ctx: CycleContext, effect: Effect, exc: PermanentError) -> bool:
        if note_in_loop(ctx, effect):
            self.settle(ctx, effect, EffectStatus.SETTLED, f"note already in Loop ({exc.message})")
            return True
        return super().on_refused(ctx, effect, exc)

    def settled(
        self, ctx: CycleContext, effect: Effect, status: EffectStatus, reason: str | None
    ) -> None:
        if status == EffectStatus.SUCCEEDED:
            ctx.counts.notes += 1


class Action(LoopEffect):
    """Process or flag: the Loop call that ends a return's journey, made exactly once."""

    outcome: ClassVar[ReturnAction]  # the count and the return's `action` when it succeeds

    def describe(self, ctx: CycleContext, effect: Effect) -> str:
        return f"{effect.kind} it ({effect.payload.get('reason')})"

    def precheck(self, ctx: CycleContext, effect: Effect) -> bool | None:
        found_at = ctx.store.kv(FOUND_RMAS).get(effect.return_id)
        if not found_at:
            return None
        # A lost run may have sent this very call, its answer lost with the state: the
        # same discipline as a lost answer, timed from the discovery. One `open` read
        # (Loop's queue may still be working) is no proof it did not land.
        if ctx.too_soon(found_at, PROCESS_SETTLE):
            return False  # let Loop finish first; no reads needed yet
        verdict = self.reconcile(ctx, replace(effect, updated_at=found_at))
        return apply_verdict(
            ctx,
            self,
            effect,
            verdict,
            done="return is no longer open in Loop",
            report=f"a run whose state is lost worked on this return and Loop does not "
            f"show for certain whether its {effect.kind} took effect",
        )

    def reconcile(self, ctx: CycleContext, effect: Effect) -> Verdict:
        """A process or flag whose answer was lost: done, wait, repeat or report.

        Any state but `open` settles it at once. An `open` read counts only from
        PROCESS_SETTLE after the attempt (Loop may still be working on it); the first such
        read is kept as evidence, and a second one at least PROCESS_SETTLE later decides
        (rules.settle_action). A stale `open` never causes a second call."""
        read = action_read(ctx, effect.return_id)
        if read.state != "open":
            return Verdict.DONE
        if ctx.too_soon(effect.updated_at, PROCESS_SETTLE):
            return Verdict.WAIT  # Loop may still be working on the call: early `open` is no news
        evidence = ctx.store.kv(SETTLE_EVIDENCE)
        first_raw = evidence.get(evidence_slot(effect))
        first = rules.ActionRead(**first_raw) if isinstance(first_raw, dict) else None
        if first is not None:
            early = _clock_doubt(ctx, first, read)
            if early is not None:
                return early
        verdict = Verdict(
            rules.settle_action(effect.kind, first, read, attempted_at=effect.updated_at)
        )
        if verdict == Verdict.WAIT and not ctx.dry_run:
            evidence.set(evidence_slot(effect), asdict(read))
        return verdict

    def on_conflict(self, ctx: CycleContext, effect: Effect, exc: StateConflict) -> bool:
        if _LEFT_OPEN.search(exc.message):
            return super().on_conflict(ctx, effect, exc)
        # Settled at its word only when it says the return left `open`: "Return is open
        # and cannot be processed" (or a bare code) means nothing happened to it, so the
        # return's state decides.
        return self.settle_from_state(ctx, effect, exc)

    def on_refused(self, ctx: CycleContext, effect: Effect, exc: PermanentError) -> bool:
        # An error answer in a wording loopsync does not know ("Return has already been
        # processed", ...) is not a verdict: settle from the return's state.
        return self.settle_from_state(ctx, effect, exc)

    def settle_from_state(self, ctx: CycleContext, effect: Effect, exc: PermanentError) -> bool:
        """An action refused in words loopsync does not know: the return's state says
        whether it is done; an `open` return is reported rather than guessed about."""
        try:
            details = ctx.loop.return_details(effect.return_id)
        except RemoteError as read_exc:
            ctx.store.ledger.error(effect.key, f"{exc}; state read failed: {read_exc}")
            raise
        state = str(details.get("state", "")).lower()
        if state != "open":
            self.settle(ctx, effect, EffectStatus.SETTLED, f"{exc.message} (return is {state})")
            return True
        report_action(
            ctx,
            effect,
            f"Loop answered the {effect.kind} call with an error "
            f"loopsync does not know ({exc.message}) and the "
            "return is still open",
        )
        return True

    def result_of(self, status: EffectStatus) -> ReturnAction:
        """processed | flagged | settled | failed: what became of the call."""
        if status == EffectStatus.SETTLED:
            return ReturnAction.SETTLED
        if status == EffectStatus.FAILED:
            return ReturnAction.FAILED
        return self.outcome

    def settled(
        self, ctx: CycleContext, effect: Effect, status: EffectStatus, reason: str | None
    ) -> None:
        outcome = self.result_of(status)
        if outcome != ReturnAction.FAILED:  # processed, flagged and settled are counts
            setattr(ctx.counts, outcome.value, getattr(ctx.counts, outcome.value) + 1)
        stage = Stage.REJECTED if status == EffectStatus.FAILED else Stage.DONE
        ctx.set_stage(effect.return_id, stage, reason, action=outcome)

    def announce(
        self, ctx: CycleContext, effect: Effect, status: EffectStatus, reason: str | None
    ) -> None:
        ctx.event(self.result_of(status).value, effect.return_id, reason=reason)


class Process(Action):
    kind = EffectKind.PROCESS
    outcome = ReturnAction.PROCESSED

    def perform(self, ctx: CycleContext, effect: Effect) -> None:
        ctx.loop.process(effect.return_id)


class Flag(Action):
    kind = EffectKind.FLAG
    outcome = ReturnAction.FLAGGED

    def perform(self, ctx: CycleContext, effect: Effect) -> None:
        ctx.loop.flag(effect.return_id)


class Disposition(LoopEffect):
    """Grade or assess: a batch of items; re-sending the same batch is harmless."""

    def describe(self, ctx: CycleContext, effect: Effect) -> str:
        return f"send {len(effect.payload.get('items', []))} item(s) to Loop {effect.kind}"

    def settled(
        self, ctx: CycleContext, effect: Effect, status: EffectStatus, reason: str | None
    ) -> None:
        if status == EffectStatus.SUCCEEDED:
            ctx.counts.graded += 1


class Grade(Disposition):
    kind = EffectKind.GRADE

    def perform(self, ctx: CycleContext, effect: Effect) -> object:
        return ctx.loop.grade(effect.payload["items"])


class Assess(Disposition):
    kind = EffectKind.ASSESS

    def perform(self, ctx: CycleContext, effect: Effect) -> object:
        return ctx.loop.assess(effect.payload["items"])


class UnknownKind(Disposition):
    """A ledger row of a kind this version does not know (written by a newer one): it
    fails with a problem row rather than being guessed at."""

    kind = "unknown"

    def perform(self, ctx: CycleContext, effect: Effect) -> None:
        raise PermanentError("loopsync", f"unknown effect kind {effect.kind!r}")

    def settled(
        self, ctx: CycleContext, effect: Effect, status: EffectStatus, reason: str | None
    ) -> None:
        """Counted nowhere."""


# The act stage's effects by ledger kind: adding a kind is one class and one line here.
EFFECTS: dict[EffectKind, LoopEffect] = {
    EffectKind.NOTE: Note(),
    EffectKind.PROCESS: Process(),
    EffectKind.FLAG: Flag(),
    EffectKind.GRADE: Grade(),
    EffectKind.ASSESS: Assess(),
}


def effect_type(kind: EffectKind | str) -> LoopEffect:
    """The class that carries out a Loop effect of `kind`; UnknownKind for a kind this
    version does not know (or the create, which is the push stage's)."""
    found = EFFECTS.get(kind) if isinstance(kind, EffectKind) else None
    return found or UnknownKind()


def run_effect(ctx: CycleContext, effect: Effect) -> bool:
    """Carry out one Loop effect; False when it must wait for a later cycle."""
    kind = effect_type(effect.kind)
    if effect.status == EffectStatus.INTENT:
        verdict = kind.reconcile(ctx, effect)
        early = apply_verdict(
            ctx,
            kind,
            effect,
            verdict,
            done="already done in Loop",
            report=f"the {effect.kind} call's answer was lost and Loop does not show for "
            "certain whether it took effect",
        )
    else:
        early = kind.precheck(ctx, effect)
    if early is not None:
        return early
    return call_under_ledger(ctx, kind, effect)


def apply_verdict(
    ctx: CycleContext, kind: LoopEffect, effect: Effect, verdict: Verdict, *, done: str, report: str
) -> bool | None:
    """Act on a reconciliation's verdict: False (wait for a later cycle), True (settled
    as done, or reported for a person), None (repeat: the caller performs the call)."""
    if verdict == Verdict.WAIT:
        return False
    if verdict == Verdict.DONE:
        kind.settle(ctx, effect, EffectStatus.SETTLED, done)
        return True
    if verdict == Verdict.REPORT:
        report_action(ctx, effect, report)
        return True
    return None


def report_action(ctx: CycleContext, effect: Effect, reason: str) -> None:
    """The effect failed in doubt: a person decides (the return is REPORTED)."""
    with ctx.store.atomic():
        ctx.store.ledger.outcome(effect.key, EffectStatus.FAILED, error=reason)
        ctx.report_for_person(effect.return_id, "act", reason)


def note_in_loop(ctx: CycleContext, effect: Effect) -> bool:
    """Does Loop already hold this note, or a loopsync note naming the same RMA?"""
    notes = [
        _fold(n.get("content")) for n in ctx.loop.notes(effect.return_id) if isinstance(n, dict)
    ]
    return rules.note_present(
        notes, _fold(effect.payload.get("text")), _fold(effect.payload.get("names")) or None
    )


def action_read(ctx: CycleContext, rid: str) -> rules.ActionRead:
    """One read of what Loop shows about a return, for the settle rules."""
    details = ctx.loop.return_details(rid)
    notes = ctx.loop.notes(rid)
    loop_at = getattr(ctx.loop, "details_server_date", None)
    return rules.ActionRead(
        state=str(details.get("state", "")).lower(),
        updated_at=str(details.get("updated_at") or ""),
        notes=len(notes),
        at=iso(ctx.now()) or "",  # never None
        loop_at=(iso(loop_at) or "") if isinstance(loop_at, datetime) else "",
    )


def _clock_doubt(
    ctx: CycleContext, first: rules.ActionRead, read: rules.ActionRead
) -> Verdict | None:
    """Wait or report when the two settle reads are not yet PROCESS_SETTLE apart by our
    clock, or by Loop's; None when both clocks agree they are."""
    if ctx.too_soon(first.at, PROCESS_SETTLE):
        return Verdict.WAIT
    if (
        first.loop_at
        and read.loop_at
        and parse_timestamp(read.loop_at) - parse_timestamp(first.loop_at) < PROCESS_SETTLE
    ):
        # Our clock says a settle delay passed, Loop's does not: ours jumped. Wait for
        # Loop's clock; if it never moves on (a `Date` that lies), ask a person.
        return Verdict.WAIT if ctx.too_soon(first.at, CLOCK_DOUBT_AFTER) else Verdict.REPORT
    return None


def _fold(text: Any) -> str:
    return " ".join(str(text or "").split())


# -- the warehouse RMA (run by the push stage) ---------------------------------------------


class CreateRma(EffectType[RmaRef | None]):
    """Create the RMA for one return. Its answer is the RMA, or None when there is none
    (dry run, or the warehouse rejected it). The link that settles it as done is written
    by the push stage with the return's stage and its note, in one transaction."""

    kind = EffectKind.CREATE_RMA
    dry_run_result = None

    def __init__(self, req: PushRequest, located: dict[str, Any]) -> None:
        self.req = req
        self.located = located

    def perform(self, ctx: CycleContext, effect: Effect) -> RmaRef:
        return ctx.connector.create_rma(self.req, self.located)

    def describe(self, ctx: CycleContext, effect: Effect) -> str:
        return (
            f"create a {ctx.connector.kind} RMA (destination {self.req.destination}, "
            f"{self.req.ret.expected_units} units)"
        )

    def begin(self, ctx: CycleContext, effect: Effect) -> None:
        with ctx.store.atomic():
            super().begin(ctx, effect)
            ctx.set_stage(effect.return_id, Stage.PUSHING, None)

    def not_sent(self, ctx: CycleContext, effect: Effect, exc: RemoteError) -> None:
        with ctx.store.atomic():  # certainly not sent: nothing to look up next time
            super().not_sent(ctx, effect, exc)
            ctx.set_stage(effect.return_id, Stage.NEW, None)

    def on_success(self, ctx: CycleContext, effect: Effect, answer: Any) -> RmaRef | None:
        assert isinstance(answer, RmaRef)
        return answer

    def on_conflict(self, ctx: CycleContext, effect: Effect, exc: StateConflict) -> RmaRef | None:
        return self.on_refused(ctx, effect, exc)

    def on_refused(self, ctx: CycleContext, effect: Effect, exc: PermanentError) -> RmaRef | None:
        if not isinstance(exc, Rejected):
            # An error whose meaning is not certain (an error body, an unexpected status)
            # is an unknown outcome: the intent stays armed and the RMA is looked up first.
            ctx.store.ledger.error(effect.key, str(exc))
            raise exc
        # A refusal may still have created the record (ShipHero answers some GraphQL
        # errors after the return exists): look it up before the verdict.
        try:
            found = ctx.connector.find_rma(self.req, self.located)
        except (RemoteError, NotReady) as lookup:
            ctx.store.ledger.error(effect.key, f"{exc}; look-up failed: {lookup}")
            raise OutcomeUnknown(
                exc.system, f"create refused ({exc.message}) and the look-up failed: {lookup}"
            ) from None
        if found is not None:
            ctx.log.warning(
                "push.refused_but_created", return_id=effect.return_id, error=exc.message
            )
            return found
        ctx.counts.rejected += 1
        with ctx.store.atomic():
            ctx.store.ledger.outcome(effect.key, EffectStatus.FAILED, error=exc.message)
            ctx.set_stage(effect.return_id, Stage.REJECTED, exc.message)
        ctx.problem(effect.return_id, "push", f"warehouse rejected the RMA: {exc.message}")
        return None
