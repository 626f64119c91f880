"""Exactly once at the edges (issue 14 §4), against the engine's in-memory fakes: lost
action answers read as stale, action errors in unknown wordings, create errors that did
create, an RMA that exists before the first create, ambiguous weak matches."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as hs

from loopsync import rules
from loopsync.cycle import Engine
from loopsync.errors import ErrorBody, OutcomeUnknown, Rejected
from loopsync.models import RmaRef
from loopsync.state import Store
from loopsync.testing import FakeClock

from loopsync.testing import FakeLoop, FakeRma, FakeWarehouse, loop_return, merchant_config

SETTLE = 10 * 60 + 1  # seconds: just past engine.PROCESS_SETTLE


class StaleLoop(FakeLoop):
    """Loop whose details read lags: `stale` return ids keep showing `open` (and the
    `updated_at` given) whatever happened to them."""

    def __init__(self, returns):
        super().__init__(returns)
        self.stale: dict[str, str | None] = {}
        self.error_answer: dict[str, str] = {}  # action -> wording of a 200 error body
        self.calls: list[tuple[str, str]] = []  # every action call sent, refused or not

    def return_details(self, rid):
        details = super().return_details(rid)
        if rid in self.stale:
            details["state"] = "open"
            if self.stale[rid] is not None:
                details["updated_at"] = self.stale[rid]
        return details

    def _act(self, name, rid, new_state=None):
        self.calls.append((name, rid))
        wording = self.error_answer.get(name)
        if wording is not None:
            self._check()
            self.writes.append((f"{name}-refused", rid))
            raise ErrorBody("loop", wording, status=200)
        super()._act(name, rid, new_state)


class World:
    def __init__(self, tmp_path, returns, wh=None):
        self.clock = FakeClock("2026-05-02T00:00:00Z")
        self.cfg = merchant_config(tmp_path)
        self.loop = StaleLoop(returns)
        self.wh = wh or FakeWarehouse()
        self.wh.orders = {r["order_name"] for r in returns}
        self.runs = 0

    def cycle(self, advance: float = 0):
        self.clock.advance(advance)
        self.runs += 1
        store = Store(self.cfg.state_path, self.clock)
        try:
            return Engine(
                self.cfg, store, self.loop, self.wh, clock=self.clock, run_id=f"r{self.runs}"
            ).run_cycle()
        finally:
            store.close()

    def row(self, rid):
        store = Store(self.cfg.state_path, self.clock)
        try:
            return store.returns.get(rid)
        finally:
            store.close()


def _flagged_world(tmp_path):
    """One return whose warehouse status asks for a flag, the flag's answer lost."""
    w = World(tmp_path, [loop_return("101")])
    w.cycle()
    w.wh.finish("101", short=1)
    w.loop.lose_answer.add("flag")
    w.loop.stale["101"] = None  # the flag landed, but reads still say open
    assert w.cycle().counts.errors == 1
    assert w.loop.writes.count(("flag", "101")) == 1
    return w


# -- 1. a lost flag or process answer and a stale `open` read -------------------------------


def test_lost_flag_answer_and_a_stale_open_read_do_not_flag_again_next_cycle(tmp_path):
    w = _flagged_world(tmp_path)
    w.cycle(60)
    w.cycle(60)
    assert w.loop.calls.count(("flag", "101")) == 1, "flagged twice on a stale read"
    assert w.row("101").stage == "acting"


def test_lost_flag_answer_is_not_repeated_after_one_settle_delay(tmp_path):
    w = _flagged_world(tmp_path)
    w.cycle(SETTLE)  # one `open` read after the delay is evidence kept, not a verdict
    assert w.loop.calls.count(("flag", "101")) == 1


def test_lost_action_read_changed_since_the_attempt_is_reported_not_repeated(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.cycle()
    w.wh.finish("101")
    w.loop.lose_answer.add("process")
    w.cycle()
    # Loop touched the return after our call, yet a read says open: stale or strange.
    w.loop.stale["101"] = "2026-05-02T00:05:00Z"
    w.cycle(SETTLE)
    result = w.cycle(SETTLE)
    assert w.loop.writes.count(("process", "101")) == 1
    assert w.row("101").stage == "reported"
    assert "answer was lost" in w.row("101").reason
    assert result.needs_attention and "101" in result.attention[0]
    later = w.cycle(SETTLE)
    assert w.loop.writes.count(("process", "101")) == 1 and not later.needs_attention


def test_lost_action_reads_that_disagree_are_reported(tmp_path):
    w = _flagged_world(tmp_path)
    w.loop.stale["101"] = "2026-05-01T10:00:00Z"
    w.cycle(SETTLE)
    w.loop.notes_by.setdefault("101", []).append("someone wrote in Loop meanwhile")
    result = w.cycle(SETTLE)
    assert result.needs_attention
    assert w.loop.writes.count(("flag", "101")) == 1
    assert w.row("101").stage == "reported"


# -- 3. action errors in wordings loopsync does not know ------------------------------------


def test_unknown_action_error_with_the_return_closed_is_settled_not_rejected(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.cycle()
    w.wh.finish("101")
    w.loop.returns["101"]["state"] = "closed"  # processed by someone; the list lags
    w.loop.error_answer["process"] = "Return has already been processed"
    result = w.cycle()
    row = w.row("101")
    assert row.stage == "done" and row.action == "settled", row
    assert not result.needs_attention


def test_unknown_action_error_with_the_return_open_is_reported_and_the_run_says_so(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.cycle()
    w.wh.finish("101")
    w.loop.error_answer["process"] = "Something odd happened"
    result = w.cycle()
    row = w.row("101")
    assert row.stage == "reported" and "Something odd happened" in row.reason
    assert result.needs_attention
    del w.loop.error_answer["process"]
    w.cycle(SETTLE)
    w.cycle(SETTLE)
    assert ("process", "101") not in w.loop.writes  # left for a person, never guessed


# -- 2. create errors whose meaning is not certain ------------------------------------------


class CreatesThenErrs(FakeWarehouse):
    """A warehouse that creates the RMA and then answers with an error."""

    def __init__(self, error):
        super().__init__()
        self.error = error

    def create_rma(self, req, located):
        self.created += 1
        self.rmas[req.ret.id] = FakeRma(req.ret.id, req.ret.units_by_sku())
        raise self.error


def test_create_refused_after_creating_is_looked_up_and_linked_not_rejected(tmp_path):
    w = World(tmp_path, [loop_return("101")], wh=CreatesThenErrs(Rejected("fake", "oops")))
    result = w.cycle()
    assert w.row("101").stage == "open"
    assert result.counts.rejected == 0 and w.wh.created == 1
    assert len(w.loop.notes_by["101"]) == 1


def test_create_error_of_uncertain_meaning_is_an_unknown_outcome_looked_up_first(tmp_path):
    wh = CreatesThenErrs(ErrorBody("fake", "internal error"))
    w = World(tmp_path, [loop_return("101")], wh=wh)
    w.cycle()
    assert w.row("101").stage == "pushing"  # not rejected, not forgotten
    w.cycle(2 * w.cfg.warehouse.timeout + 1)
    assert w.wh.created == 1 and w.row("101").stage == "open"


def test_a_rejection_that_did_not_create_is_still_rejected(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.wh.reject.add("101")
    assert w.cycle().counts.rejected == 1
    assert w.row("101").stage == "rejected"


# -- 4. lost state: an RMA and a note that already exist ------------------------------------


def test_existing_rma_and_note_are_found_before_the_first_create_and_note(tmp_path):
    w = World(tmp_path, [loop_return("101"), loop_return("102")])
    w.cycle()
    w.wh.finish("101")
    w.cycle()
    writes = list(w.loop.writes)
    w.cfg.state_path.unlink()  # the state file is lost
    result = w.cycle(60)
    assert w.wh.created == 2, "a second RMA was created"
    assert result.counts.pushed == 0 and result.counts.linked == 1  # 101 is closed in Loop
    assert w.loop.writes == writes, "a note or action was repeated"
    assert [len(w.loop.notes_by[r]) for r in ("101", "102")] == [1, 1]


# -- 5. ambiguity --------------------------------------------------------------------------


class ByOrder(FakeWarehouse):
    """A watch-only warehouse matching by order name: one RMA per order."""

    creates_rmas = False
    weak_matching = True

    def match_key(self, ret):
        return f"order {ret.order_name}"

    def find_rma(self, req, located):
        r = self.rmas.get(req.ret.order_name)
        return RmaRef(req.ret.id, f"RMA-{req.ret.order_name}") if r else None

    def poll(self, rmas):
        self.polled = getattr(self, "polled", 0) + len(rmas)
        return super().poll([RmaRef(r.return_id, r.rma_id) for r in rmas])


def _same_order(rid, order):
    raw = loop_return(rid)
    raw["order_name"] = order
    return raw


def test_two_returns_on_one_order_matched_weakly_are_both_reported_and_neither_acted_on(tmp_path):
    wh = ByOrder()
    w = World(tmp_path, [_same_order("101", "#1"), _same_order("102", "#1")], wh=wh)
    wh.rmas["#1"] = FakeRma("#1", {"A": 1, "B": 1}, status="complete", received={"A": 1, "B": 1})
    wh.rmas["101"] = wh.rmas["102"] = wh.rmas["#1"]
    result = w.cycle()
    assert result.needs_attention and len(result.attention) == 2
    for rid in ("101", "102"):
        assert w.row(rid).stage == "reported"
        assert "ambiguous" in w.row(rid).reason
    w.cycle(60)
    assert w.loop.writes == [] and getattr(wh, "polled", 0) == 0


def test_a_weak_match_to_an_rma_another_return_holds_is_reported(tmp_path):
    wh = ByOrder()
    w = World(tmp_path, [_same_order("101", "#1")], wh=wh)
    wh.rmas["#1"] = wh.rmas["101"] = FakeRma("#1", {"A": 1, "B": 1})
    w.cycle()
    assert w.row("101").stage == "open"
    # 101 is done with; a new return on the same order matches its RMA.
    w.loop.returns["101"].update(state="closed", updated_at="2026-05-02T00:00:30Z")
    w.loop.returns["102"] = _same_order("102", "#1")
    w.loop.returns["102"]["updated_at"] = "2026-05-02T00:00:30Z"
    wh.rmas["102"] = wh.rmas["#1"]
    result = w.cycle(60)
    assert w.row("102").stage == "reported" and result.needs_attention


# -- the settle rule, for any pair of reads -----------------------------------------------

_reads = hs.builds(
    rules.ActionRead,
    state=hs.sampled_from(["open", "closed", "review", ""]),
    updated_at=hs.sampled_from(["2026-05-01T00:00:00Z", "2026-05-03T00:00:00Z", "", "not a time"]),
    notes=hs.integers(0, 3),
    at=hs.just("2026-05-02T01:00:00Z"),
)


@settings(max_examples=50, deadline=None)
@given(first=hs.none() | _reads, read=_reads)
def test_settle_rule_repeats_only_on_two_agreeing_open_reads_untouched_since(first, read):
    verdict = rules.settle_action("process", first, read, attempted_at="2026-05-02T00:00:00Z")
    if verdict == rules.REPEAT:
        assert first is not None and first.state == read.state == "open"
        assert (first.updated_at, first.notes) == (read.updated_at, read.notes)
        assert read.updated_at == "2026-05-01T00:00:00Z"
    if read.state != "open":
        assert verdict == rules.DONE
    if first is None and read.state == "open":
        assert verdict == rules.WAIT_READ


def test_lost_answer_after_a_repeat_gets_fresh_evidence(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.cycle()
    w.wh.finish("101")
    w.loop.process = lambda rid: (_ for _ in ()).throw(OutcomeUnknown("loop", "lost"))
    w.cycle()
    w.cycle(SETTLE)
    w.cycle(SETTLE)  # two agreeing reads: repeated, and lost again
    del w.loop.process
    w.cycle(SETTLE)  # the evidence of the first attempt does not count for the second
    assert ("process", "101") not in w.loop.writes
    w.cycle(SETTLE)
    assert w.loop.writes.count(("process", "101")) == 1


def test_note_error_in_unknown_words_with_the_note_in_loop_is_settled(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.loop.error_answer["note"] = "Something went wrong"  # the note was stored anyway
    w.cycle()
    del w.loop.error_answer["note"]
    w.cycle(SETTLE)
    assert len(w.loop.notes_by["101"]) == 1
    store = Store(w.cfg.state_path, w.clock)
    assert store.ledger.get("note_rma:101").status == "settled"


@settings(max_examples=50, deadline=None)
@given(
    notes=hs.lists(hs.text(max_size=300), max_size=5),
    text=hs.text(max_size=300),
    names=hs.none() | hs.text(max_size=40),
)
def test_note_match_takes_any_note_text_and_never_matches_an_empty_note(notes, text, names):
    """Loop's note contents are remote data: any text is read without error, and a
    match is the same text or a loopsync note naming the same RMA, nothing looser."""
    found = rules.note_present(notes, text, names)
    assert isinstance(found, bool)
    if found:
        assert (text and text in notes) or any(
            names and names in n and "loopsync" in n.lower() for n in notes
        )
    assert not rules.note_present([], text, names)


def test_a_status_the_rules_leave_for_a_person_makes_the_run_need_attention(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.cycle()
    w.wh.rmas["101"].status = "cancelled"  # in statuses.report
    result = w.cycle(60)
    assert result.needs_attention and w.row("101").stage == "reported"
    assert not w.cycle(60).needs_attention  # reported once, not every run
