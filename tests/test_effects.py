"""Effects: one class per kind in one registry, and one call under the ledger that maps
every kind of answer to the same ledger transition (in-memory fakes, no network)."""

from __future__ import annotations

import pytest

from loopsync import store as st
from loopsync.connectors.base import PushRequest
from loopsync.cycle import Engine
from loopsync.effects import (
    EFFECTS,
    CreateRma,
    Effect,
    EffectKind,
    UnknownKind,
    call_under_ledger,
    effect_type,
)
from loopsync.errors import (
    AuthError,
    ErrorBody,
    OutcomeUnknown,
    Rejected,
    StateConflict,
    TransientError,
)
from loopsync.models import LoopReturn, RmaRef
from loopsync.store import Store
from loopsync.testing import FakeClock

from loopsync.testing import FakeLoop, FakeWarehouse, loop_return, merchant_config


def test_every_effect_kind_but_create_has_one_registered_class_of_that_kind():
    assert set(EFFECTS) == set(EffectKind) - {EffectKind.CREATE_RMA}
    assert all(cls.kind == kind for kind, cls in EFFECTS.items())
    assert CreateRma.kind == EffectKind.CREATE_RMA


def test_effect_kinds_are_the_ledger_strings():
    assert [k.value for k in EffectKind] == ["create_rma", "note", "process", "flag", "grade",
                                             "assess"]
    assert EffectKind.NOTE == "note"


def test_a_kind_this_version_does_not_know_fails_rather_than_being_guessed():
    assert isinstance(effect_type("refund"), UnknownKind)


class Raising(FakeLoop):
    """Loop whose grade call raises `error` (after nothing happened, or as it says)."""

    error: Exception | None = None

    def grade(self, items):
        if self.error is not None:
            raise self.error
        return []


class Raise(FakeWarehouse):
    error: Exception | None = None
    found: RmaRef | None = None

    def create_rma(self, req, located):
        if self.error is not None:
            raise self.error
        return RmaRef(req.ret.id, "RMA-1")

    def find_rma(self, req, located):
        return self.found


@pytest.fixture
def world(tmp_path):
    clock = FakeClock("2026-05-02T00:00:00Z")
    store = Store(tmp_path / "s.sqlite", clock)
    raw = loop_return("101")
    with store.atomic():
        ret = LoopReturn.from_api(raw)
        store.upsert_return(ret.id, raw, state=ret.state, updated_at=ret.updated_at,
                            created_at=ret.created_at, destination_id=ret.destination_id,
                            order_name=ret.order_name)
    eng = Engine(merchant_config(tmp_path), store, Raising(), Raise(), clock=clock, run_id="r")
    yield eng
    store.close()


def _grade(eng, error):
    eng.loop.error = error
    eng.store.plan_effect("grade:101:0", "101", "grade", {"items": [{"sku": "A"}]})
    effect = Effect.from_row(eng.store.pending_effects("101")[0])
    return call_under_ledger(eng.ctx, EFFECTS[EffectKind.GRADE], effect)


@pytest.mark.parametrize(("error", "status", "raised"), [
    (None, st.SUCCEEDED, None),
    (StateConflict("loop", "Return is closed"), st.SETTLED, None),
    (OutcomeUnknown("loop", "answer lost"), st.INTENT, OutcomeUnknown),
    (AuthError("loop", "401"), st.PENDING, AuthError),
    (ErrorBody("loop", "no such item"), st.FAILED, None),
    (TransientError("loop", "reset before sending"), st.PENDING, TransientError),
])
def test_a_loop_effects_answer_moves_the_ledger_as_the_table_says(world, error, status, raised):
    if raised is None:
        assert _grade(world, error) is True
    else:
        with pytest.raises(raised):
            _grade(world, error)
    assert world.store.effect("grade:101:0")["status"] == status
    failed = status == st.FAILED
    assert bool(world.store.runs.problems()) == failed


def _create(eng, error, found=None):
    eng.connector.error, eng.connector.found = error, found
    req = PushRequest(LoopReturn.from_api(eng.store.snapshot("101")), "WH-1")
    effect = Effect("create_rma:101", "101", EffectKind.CREATE_RMA, st.PENDING, {}, 0, "")
    return call_under_ledger(eng.ctx, CreateRma(req, {}), effect)


@pytest.mark.parametrize(("error", "status", "stage", "raised"), [
    (None, st.INTENT, st.PUSHING, None),  # the push stage links it and settles it as done
    (OutcomeUnknown("wh", "answer lost"), st.INTENT, st.PUSHING, OutcomeUnknown),
    (ErrorBody("wh", "unexpected"), st.INTENT, st.PUSHING, ErrorBody),  # may have created
    (AuthError("wh", "401"), st.PENDING, st.NEW, AuthError),
    (TransientError("wh", "reset before sending"), st.PENDING, st.NEW, TransientError),
    (Rejected("wh", "SKU not on order"), st.FAILED, st.REJECTED, None),
])
def test_a_creates_answer_moves_the_ledger_and_the_stage_as_the_table_says(
        world, error, status, stage, raised):
    if raised is None:
        _create(world, error)
    else:
        with pytest.raises(raised):
            _create(world, error)
    assert world.store.effect("create_rma:101")["status"] == status
    assert world.store.get_return_row("101")["stage"] == stage


def test_a_refused_create_that_did_create_is_found_not_rejected(world):
    ref = RmaRef("101", "RMA-9")
    assert _create(world, Rejected("wh", "GraphQL error"), found=ref) == ref
    assert world.counts.rejected == 0


def test_a_dry_run_plans_the_call_and_writes_no_ledger_row(tmp_path):
    clock = FakeClock("2026-05-02T00:00:00Z")
    store = Store(tmp_path / "s.sqlite", clock)
    eng = Engine(merchant_config(tmp_path), store, Raising(), Raise(), clock=clock,
                 run_id="r", dry_run=True)
    effect = Effect("note_rma:101", "101", EffectKind.NOTE, st.PENDING, {"text": "hi"}, 0, "")
    assert call_under_ledger(eng.ctx, EFFECTS[EffectKind.NOTE], effect) is True
    assert eng.result.planned == ["return 101: would add the note 'hi'"]
    assert store.effect("note_rma:101") is None
    store.close()
