"""The act stage: every planned or interrupted Loop effect, return by return, in plan order.

Effects are planned by the poll stage (process or flag, with grades, assessments and the
flag's note) and by the push stage (the note naming the RMA). Each one is carried out by
`effects.run_effect`: reconciled first when an earlier attempt's outcome is unknown, then
called under the ledger. An effect that must wait (its outcome cannot be told yet) holds
back the effects planned after it for the same return, except a note, which waits alone.
A return left for a person (REPORTED) gets only the note naming its RMA.
"""

from __future__ import annotations

from loopsync.effects import effect_type, is_rma_note, run_effect
from loopsync.stages.context import CycleContext
from loopsync.state import EffectKind, Stage


def return_ids(ctx: CycleContext) -> list[str]:
    """Returns with an effect not yet settled, in the order their effects were planned."""
    return list(dict.fromkeys(e.return_id for e in ctx.store.ledger.pending()))


def run_effects(ctx: CycleContext, rid: str) -> None:
    """Carry out one return's unsettled effects in plan order."""
    row = ctx.store.returns.get(rid)
    reported = row is not None and row.stage == Stage.REPORTED
    for effect in ctx.store.ledger.pending(rid):
        if effect.kind == EffectKind.CREATE_RMA:
            continue  # owned by the push stage
        if reported and not is_rma_note(effect):
            return  # left for a person: only the note naming its RMA still goes
        if not run_effect(ctx, effect):
            if effect_type(effect.kind).waits_alone:
                continue  # a note waits alone: nothing after it depends on it
            return  # deferred: keep plan order, try again next cycle
