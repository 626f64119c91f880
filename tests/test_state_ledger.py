"""Issue 9 §2: the effects ledger moves along named, guarded transitions; its rows are
typed; the engine's transitional dict API still sees the old status "done"."""

import dataclasses

import pytest

from loopsync.errors import TransitionRefused
from loopsync.state import Effect, EffectKind, EffectStatus, Store
from loopsync.testing import FakeClock


def _store(tmp_path):
    return Store(tmp_path / "s.sqlite", FakeClock("2026-06-01T00:00:00Z"))


def test_an_effect_goes_planned_intent_succeeded_and_leaves_the_pending_list(tmp_path):
    store = _store(tmp_path)
    store.ledger.plan("note:1", "1", EffectKind.NOTE, {"text": "hi"})
    store.ledger.plan("note:1", "1", EffectKind.NOTE, {"text": "other"})  # known: no-op
    assert [e.payload for e in store.ledger.pending()] == [{"text": "hi"}]
    store.ledger.intent("note:1", "1", EffectKind.NOTE)
    store.ledger.outcome("note:1", EffectStatus.SUCCEEDED, result={"ok": True})
    effect = store.ledger.get("note:1")
    assert isinstance(effect, Effect) and dataclasses.is_dataclass(effect)
    assert effect.status is EffectStatus.SUCCEEDED and effect.kind is EffectKind.NOTE
    assert effect.attempts == 1 and effect.result == {"ok": True}
    assert store.ledger.pending() == []
    assert store.ledger.counts() == {EffectKind.NOTE: {EffectStatus.SUCCEEDED: 1}}


@pytest.mark.parametrize(
    "finish", [EffectStatus.SUCCEEDED, EffectStatus.SETTLED, EffectStatus.FAILED]
)
def test_a_settled_effect_refuses_every_further_transition_and_is_unchanged(tmp_path, finish):
    store = _store(tmp_path)
    store.ledger.intent("process:1", "1", EffectKind.PROCESS)
    store.ledger.outcome("process:1", finish, error="x")
    before = store.ledger.get("process:1")
    for move in (
        lambda: store.ledger.intent("process:1", "1", EffectKind.PROCESS),
        lambda: store.ledger.outcome("process:1", EffectStatus.FAILED),
        lambda: store.ledger.not_sent("process:1", "no"),
        lambda: store.ledger.error("process:1", "no"),
    ):
        with pytest.raises(TransitionRefused) as caught:
            move()
        assert caught.value.found == finish
    assert store.ledger.get("process:1") == before


def test_not_sent_and_error_apply_only_to_an_armed_intent(tmp_path):
    store = _store(tmp_path)
    store.ledger.plan("flag:1", "1", EffectKind.FLAG)
    with pytest.raises(TransitionRefused):
        store.ledger.not_sent("flag:1", "refused at the door")
    with pytest.raises(TransitionRefused):
        store.ledger.error("flag:1", "timeout")
    store.ledger.intent("flag:1", "1", EffectKind.FLAG)
    store.ledger.error("flag:1", "timeout")
    assert store.ledger.get("flag:1").status is EffectStatus.INTENT
    store.ledger.not_sent("flag:1", "reset")
    effect = store.ledger.get("flag:1")
    assert effect.status is EffectStatus.PENDING and effect.last_error == "reset"


def test_a_transition_of_an_unknown_effect_raises_naming_no_row(tmp_path):
    with pytest.raises(TransitionRefused) as caught:
        _store(tmp_path).ledger.outcome("nope", EffectStatus.SETTLED)
    assert caught.value.found is None


def test_a_row_of_a_kind_this_version_does_not_know_is_read_with_its_kind_text(tmp_path):
    store = _store(tmp_path)
    store.conn.execute(
        "insert into effects (key, return_id, kind, status, attempts, "
        "created_at, updated_at) values ('refund:1', '1', 'refund', 'pending', "
        "0, 'x', 'x')"
    )
    (effect,) = store.ledger.pending()
    assert effect.kind == "refund" and not isinstance(effect.kind, EffectKind)
    assert effect.payload == {}
    store.ledger.intent(effect.key, effect.return_id, effect.kind)  # attempted like any other
    assert store.ledger.get("refund:1").status is EffectStatus.INTENT
    assert store.ledger.counts()["refund"] == {EffectStatus.INTENT: 1}
