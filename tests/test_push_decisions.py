"""The push stage's decisions are pure functions of typed facts (no store, no network)."""

from __future__ import annotations

from loopsync import rules
from loopsync.models import LoopReturn, RmaRef
from loopsync.stages.push import FoundStep, PushFacts, PushStep, decide_found, decide_push
from loopsync.state import EffectStatus, Stage
from loopsync.testing import loop_return

DESTINATIONS = {"12": "WH-1"}


def facts(raw=None, *, stage=Stage.NEW, create=None, linked=False, settling=False) -> PushFacts:
    ret = LoopReturn.from_api(raw or loop_return("101"))
    return PushFacts(ret, stage, rules.plan_push(ret, DESTINATIONS), create, linked, settling)


def test_a_finished_and_linked_create_only_moves_the_stage_on():
    for status in (EffectStatus.SUCCEEDED, EffectStatus.SETTLED):
        assert decide_push(facts(create=status, linked=True)).step == PushStep.RELINK


def test_a_finished_create_without_a_link_is_looked_up_again():
    assert decide_push(facts(create=EffectStatus.SUCCEEDED, linked=False)).step == PushStep.PUSH


def test_a_lost_create_is_not_looked_up_while_it_may_still_land():
    assert decide_push(facts(create=EffectStatus.INTENT, settling=True)).step == PushStep.LATER


def test_a_lost_create_is_looked_up_even_when_the_return_no_longer_qualifies():
    closed = loop_return("101", state="closed")
    decision = decide_push(facts(closed, create=EffectStatus.INTENT))
    assert decision.step == PushStep.PUSH and decision.destination == ""


def test_an_open_return_for_an_unmapped_destination_is_skipped_with_a_problem_once():
    unmapped = loop_return("101", dest=99)
    first = decide_push(facts(unmapped))
    assert first.step == PushStep.SKIP and first.newly_skipped
    assert first.reason and "99" in first.reason and first.problem
    again = decide_push(facts(unmapped, stage=Stage.SKIPPED))
    assert again.step == PushStep.SKIP and not again.newly_skipped and again.problem is None


def test_a_closed_return_is_skipped_without_a_problem():
    decision = decide_push(facts(loop_return("101", state="closed")))
    assert decision.step == PushStep.SKIP and decision.newly_skipped
    assert decision.problem is None


def test_a_line_without_a_sku_is_a_problem_on_the_first_push_only():
    raw = loop_return("101", skus=("A", ""))
    first = decide_push(facts(raw))
    assert first.step == PushStep.PUSH and first.destination == "WH-1"
    assert first.problem and "has no SKU" in first.problem
    assert decide_push(facts(raw, stage=Stage.WAITING)).problem is None


def test_the_look_up_answer_decides_create_link_wait_or_report():
    ref = RmaRef("101", "RMA-101")
    assert decide_found(None, creates_rmas=True, other_owners=[]) == FoundStep.CREATE
    assert decide_found(None, creates_rmas=False, other_owners=[]) == FoundStep.WAIT
    assert decide_found(ref, creates_rmas=True, other_owners=[]) == FoundStep.LINK
    assert decide_found(ref, creates_rmas=False, other_owners=["102"]) == FoundStep.AMBIGUOUS
