"""Effects: one class per kind in one registry, and one call under the ledger that maps
every kind of answer to the same ledger transition (in-memory fakes, no network)."""

from __future__ import annotations

import dataclasses

import pytest

from loopsync.connectors.base import PushRequest
from loopsync.cycle import Engine
from loopsync.effects import (
    EFFECTS,
    CreateRma,
    UnknownKind,
    call_under_ledger,
    effect_type,
    first_attempt,
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
from loopsync.state import EffectKind, EffectStatus, Stage, Store
from loopsync.testing import FakeClock, FakeLoop, FakeWarehouse, loop_return, merchant_config


def test_every_effect_kind_but_create_has_one_registered_class_of_that_kind():
    assert set(EFFECTS) == set(EffectKind) - {EffectKind.CREATE_RMA}
    assert all(cls.kind == kind for kind, cls in EFFECTS.items())
    assert CreateRma.kind == EffectKind.CREATE_RMA


def test_effect_kinds_are_the_ledger_strings():
    assert [k.value for k in EffectKind] == [
        "create_rma",
        "note",
        "process",
        "flag",
        "grade",
        "assess",
    ]
    assert EffectKind.NOTE == "note"


def test_a_kind_this_version_does_not_know_fails_rather_than_being_guessed():
    assert isinstance(effect_type("refund"), UnknownKind)


def test_a_ledger_row_of_an_unknown_kind_fails_with_a_problem_row_and_the_act_stage_goes_on(world):
    world.store.conn.execute(
        "insert into effects (key, return_id, kind, status, attempts, created_at, updated_at) "
        "values ('refund:101', '101', 'refund', 'pending', 0, 'x', 'x')"
    )
    world.act()
    assert world.store.ledger.get("refund:101").status is EffectStatus.FAILED
    (problem,) = world.store.runs.problems()
    assert "unknown effect kind 'refund'" in problem.message
    assert world.loop.writes == []


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
        store.returns.upsert(
            ret.id,
            raw,
            state=ret.state,
            updated_at=ret.updated_at,
            created_at=ret.created_at,
            destination_id=ret.destination_id,
            order_name=ret.order_name,
        )
    eng = Engine(merchant_config(tmp_path), store, Raising(), Raise(), clock=clock, run_id="r")
    yield eng
    store.close()


def _grade(eng, error):
    eng.loop.error = error
    eng.store.ledger.plan("grade:101:0", "101", EffectKind.GRADE, {"items": [{"sku": "A"}]})
    (effect,) = eng.store.ledger.pending("101")
    return call_under_ledger(eng.ctx, EFFECTS[EffectKind.GRADE], effect)


@pytest.mark.parametrize(
    ("error", "status", "raised"),
    [
        (None, EffectStatus.SUCCEEDED, None),
        (StateConflict("loop", "Return is closed"), EffectStatus.SETTLED, None),
        (OutcomeUnknown("loop", "answer lost"), EffectStatus.INTENT, OutcomeUnknown),
        (AuthError("loop", "401"), EffectStatus.PENDING, AuthError),
        (ErrorBody("loop", "no such item"), EffectStatus.FAILED, None),
        (TransientError("loop", "reset before sending"), EffectStatus.PENDING, TransientError),
    ],
)
def test_a_loop_effects_answer_moves_the_ledger_as_the_table_says(world, error, status, raised):
    if raised is None:
        assert _grade(world, error) is True
    else:
        with pytest.raises(raised):
            _grade(world, error)
    assert world.store.ledger.get("grade:101:0").status is status
    failed = status == EffectStatus.FAILED
    assert bool(world.store.runs.problems()) == failed


def _create(eng, error, found=None):
    eng.connector.error, eng.connector.found = error, found
    req = PushRequest(LoopReturn.from_api(eng.store.returns.snapshot("101")), "WH-1")
    effect = first_attempt("create_rma:101", "101", EffectKind.CREATE_RMA)
    return call_under_ledger(eng.ctx, CreateRma(req, {}), effect)


@pytest.mark.parametrize(
    ("error", "status", "stage", "raised"),
    [
        # No answer yet settles a create: the push stage links it and settles it as succeeded.
        (None, EffectStatus.INTENT, Stage.PUSHING, None),
        (OutcomeUnknown("wh", "answer lost"), EffectStatus.INTENT, Stage.PUSHING, OutcomeUnknown),
        # An error body may have created it: the outcome is unknown.
        (ErrorBody("wh", "unexpected"), EffectStatus.INTENT, Stage.PUSHING, ErrorBody),
        (AuthError("wh", "401"), EffectStatus.PENDING, Stage.NEW, AuthError),
        (
            TransientError("wh", "reset before sending"),
            EffectStatus.PENDING,
            Stage.NEW,
            TransientError,
        ),
        (Rejected("wh", "SKU not on order"), EffectStatus.FAILED, Stage.REJECTED, None),
    ],
)
def test_a_creates_answer_moves_the_ledger_and_the_stage_as_the_table_says(
    world, error, status, stage, raised
):
    if raised is None:
        _create(world, error)
    else:
        with pytest.raises(raised):
            _create(world, error)
    assert world.store.ledger.get("create_rma:101").status is status
    assert world.store.returns.get("101").stage is stage


def test_a_refused_create_that_did_create_is_found_not_rejected(world):
    ref = RmaRef("101", "RMA-9")
    assert _create(world, Rejected("wh", "GraphQL error"), found=ref) == ref
    assert world.counts.rejected == 0


def test_a_dry_run_plans_the_call_and_writes_no_ledger_row(tmp_path):
    clock = FakeClock("2026-05-02T00:00:00Z")
    store = Store(tmp_path / "s.sqlite", clock)
    eng = Engine(
        merchant_config(tmp_path), store, Raising(), Raise(), clock=clock, run_id="r", dry_run=True
    )
    effect = dataclasses.replace(
        first_attempt("note_rma:101", "101", EffectKind.NOTE), payload={"text": "hi"}
    )
    assert call_under_ledger(eng.ctx, EFFECTS[EffectKind.NOTE], effect) is True
    assert eng.result.planned == ["return 101: would add the note 'hi'"]
    assert store.ledger.get("note_rma:101") is None
    store.close()
