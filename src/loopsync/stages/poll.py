"""The poll stage: open RMAs' warehouse statuses, and the Loop calls they decide.

Open RMAs are polled in chunks (POLL_CHUNK, or all at once for a connector that reads one
sweep per cycle: `polls_all_at_once`). A return already acted on in Loop (processed by hand,
cancelled) is settled without a poll. Each status is recorded with `rules.decide`'s
verdict; a final one plans its effects (grades and assessments in Loop's batch size, then
process, or flag with its note) in the same transaction, for the act stage to carry out.
A status that cannot be recorded holds back only its own return; an answer no parser
foresaw holds back only its chunk. A connector archives what it read (`PollResult.commit`)
only once the chunk's statuses are committed.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from loopsync import rules
from loopsync.connectors.base import PollResult, PollStopped
from loopsync.errors import PaginationStopped, RemoteError, Unreadable
from loopsync.loop_client import DISPOSITION_BATCH, batched
from loopsync.models import LoopReturn, RmaRef, RmaStatus
from loopsync.stages.context import CycleContext, one_records_fault, unexpected
from loopsync.state import EffectKind, ReturnAction, Stage

# RMAs per connector poll call (benchmarks/poll.py measures it; a test lowers it).
POLL_CHUNK = 500


def poll(ctx: CycleContext, only: set[str] | None = None) -> None:
    refs = _open_refs(ctx, only)
    size = max(1, len(refs)) if ctx.connector.polls_all_at_once else POLL_CHUNK
    for i in range(0, len(refs), size):
        if ctx.stop.is_set():
            return
        chunk = refs[i : i + size]
        try:
            result = ctx.connector.poll(chunk)
        except PollStopped:
            return
        except PaginationStopped as exc:
            if exc.reason != "stopped":  # a walk cut short by shutdown is not a fault
                raise
            return
        except Exception as exc:
            if not _unreadable_answer(ctx, chunk, exc):
                raise
            continue
        _record_chunk(ctx, chunk, result)


def _open_refs(ctx: CycleContext, only: set[str] | None) -> list[RmaRef]:
    """The RMAs to poll; a return no longer open in Loop is settled instead."""
    refs: list[RmaRef] = []
    for row in ctx.store.rmas.open():
        rid = row.return_id
        if only is not None and rid not in only:
            continue
        snap = ctx.store.returns.snapshot(rid) or {}
        if str(snap.get("state", "open")).lower() != "open":
            # Someone acted in Loop already (processed by hand, cancelled): nothing to do.
            ctx.counts.settled += 1
            ctx.set_stage(
                rid,
                Stage.DONE,
                f"return is {snap.get('state')} in Loop",
                action=ReturnAction.SETTLED,
            )
            continue
        refs.append(RmaRef(rid, row.rma_id, row.extra))
    return refs


def _unreadable_answer(ctx: CycleContext, chunk: list[RmaRef], exc: Exception) -> bool:
    """Is `exc` an answer no parser foresaw? Then it is recorded: these RMAs wait, the
    next chunk goes on. A remote error or a fault of no one answer is not."""
    if isinstance(exc, RemoteError) or not one_records_fault(exc):
        return False
    ctx.counts.errors += 1
    ctx.problem(
        None,
        "poll",
        f"{ctx.connector.kind} poll of {len(chunk)} RMA(s) unreadable: {unexpected(exc)}",
    )
    return True


def _record_chunk(ctx: CycleContext, chunk: list[RmaRef], result: PollResult) -> None:
    ctx.counts.polled += len(chunk)
    with ctx.store.atomic():
        for rid, status in result.statuses.items():
            _record_status_of_one(ctx, rid, status)
        for rid, error in result.errors.items():
            ctx.problem(rid, "poll", error)
        for message in result.problems:  # about no one RMA (a rejected file, ...)
            ctx.problem(None, "poll", message)
    result.commit()  # only now may a connector archive what it read


def _record_status_of_one(ctx: CycleContext, rid: str, status: RmaStatus) -> None:
    """`_record_status` in a savepoint: one status that cannot be recorded (a stored
    snapshot older rules accepted, ...) is recorded as a problem; the chunk goes on."""
    try:
        with ctx.store.atomic():
            _record_status(ctx, rid, status)
    except Unreadable as exc:
        ctx.counts.errors += 1
        ctx.set_stage(rid, Stage.REJECTED, f"malformed Loop return: {exc}")
        ctx.problem(rid, "poll", f"malformed Loop return: {exc}")
    except Exception as exc:
        if not one_records_fault(exc):
            raise
        ctx.counts.errors += 1
        ctx.problem(rid, "poll", unexpected(exc))


def _record_status(ctx: CycleContext, rid: str, status: RmaStatus) -> None:
    decision = rules.decide(status, ctx.cfg.warehouse.statuses)
    fingerprint = json.dumps(status.fingerprint())
    previous = ctx.store.rmas.record_poll(
        rid,
        status.status,
        json.dumps(asdict(status)),
        fingerprint,
        decision.action,
        decision.reason,
    )
    first_poll, changed = previous is None, previous != fingerprint
    if decision.action in (rules.IGNORE, rules.WAIT):
        # A fresh RMA with nothing received is not news; a later ignore status is.
        quiet = first_poll and status.received_units == 0
        if changed and decision.action == rules.IGNORE and not quiet:
            ctx.counts.ignored += 1
            ctx.event("ignored", rid, reason=decision.reason)
        return
    if decision.action == rules.REPORT:
        ctx.counts.reported += 1
        ctx.set_stage(rid, Stage.REPORTED, decision.reason)
        ctx.problem(rid, "act", decision.reason)
        ctx.result.attention.append(f"return {rid}: {decision.reason}")
        ctx.event("reported", rid, reason=decision.reason)
        return
    _plan_effects(ctx, rid, status, decision)
    ctx.set_stage(rid, Stage.ACTING, decision.reason)


def _plan_effects(ctx: CycleContext, rid: str, status: RmaStatus, decision: rules.Decision) -> None:
    """Plan the Loop calls a final status decides, in the order they are made."""
    ret = LoopReturn.from_api(ctx.store.returns.snapshot(rid))
    grades, assessments = rules.grading_items(ret, status, ctx.cfg.warehouse.grading)
    # One effect per request Loop takes, so a retry re-sends only its own batch.
    for n, batch in enumerate(batched(grades, DISPOSITION_BATCH)):
        ctx.store.ledger.plan(f"grade:{rid}:{n}", rid, EffectKind.GRADE, {"items": batch})
    for n, batch in enumerate(batched(assessments, DISPOSITION_BATCH)):
        ctx.store.ledger.plan(f"assess:{rid}:{n}", rid, EffectKind.ASSESS, {"items": batch})
    if decision.action == rules.PROCESS:
        ctx.store.ledger.plan(
            f"process:{rid}", rid, EffectKind.PROCESS, {"reason": decision.reason}
        )
    else:
        ctx.store.ledger.plan(f"flag:{rid}", rid, EffectKind.FLAG, {"reason": decision.reason})
        ctx.store.ledger.plan(
            f"note_flag:{rid}", rid, EffectKind.NOTE, {"text": rules.flag_note(status, decision)}
        )
