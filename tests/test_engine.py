"""The engine's exactly-once protocol, against in-memory fakes (no network)."""

import threading

import pytest

from loopsync.cycle import Engine
from loopsync.rules import GradingRules
from loopsync.state import Store
from loopsync.state.cursors import CursorRepository
from loopsync.testing import FakeClock, FakeLoop, FakeWarehouse, loop_return, merchant_config


class World:
    def __init__(self, tmp_path, returns, **cfg_kw):
        self.clock = FakeClock("2026-05-02T00:00:00Z")
        self.cfg = merchant_config(tmp_path, **cfg_kw)
        self.loop = FakeLoop(returns)
        self.wh = FakeWarehouse()
        self.wh.orders = {r["order_name"] for r in returns}
        self.runs = 0

    def cycle(self, *, dry_run=False, stop=None):
        self.runs += 1
        store = Store(
            ":memory:" if dry_run else self.cfg.state_path,
            self.clock,
            memory_copy_of=self.cfg.state_path if dry_run else None,
        )
        try:
            engine = Engine(
                self.cfg,
                store,
                self.loop,
                self.wh,
                clock=self.clock,
                run_id=f"r{self.runs}",
                stop=stop,
                dry_run=dry_run,
            )
            return engine.run_cycle()
        finally:
            store.close()

    def store(self):
        return Store(self.cfg.state_path, self.clock)


def test_full_flow_creates_once_notes_once_processes_once(tmp_path):
    w = World(tmp_path, [loop_return("101"), loop_return("102")])
    r1 = w.cycle()
    assert (r1.counts.new, r1.counts.pushed, r1.counts.notes) == (2, 2, 2)
    assert w.wh.created == 2
    assert all("created fake RMA" in n for n in w.loop.notes_by["101"])
    w.wh.finish("101")
    w.wh.finish("102", short=1)
    r2 = w.cycle()
    assert (r2.counts.processed, r2.counts.flagged) == (1, 1)
    assert ("process", "101") in w.loop.writes and ("flag", "102") in w.loop.writes
    flag_note = w.loop.notes_by["102"][-1]
    assert "short" in flag_note and "expected 2" in flag_note and "received 1" in flag_note
    writes_before = list(w.loop.writes)
    r3 = w.cycle()  # nothing new happens however often it runs
    assert w.loop.writes == writes_before and w.wh.created == 2
    assert r3.counts.pushed == r3.counts.processed == r3.counts.flagged == 0


def test_lost_create_answer_is_looked_up_not_repeated(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.wh.lose_create_answer = True
    r1 = w.cycle()
    assert r1.counts.errors == 1 and w.wh.created == 1
    w.cycle()  # too soon: the create may still be running at the warehouse
    assert w.wh.created == 1 and w.store().returns.get("101").stage == "pushing"
    w.clock.advance(2 * w.cfg.warehouse.timeout + 1)
    r2 = w.cycle()
    assert w.wh.created == 1, "a second RMA was created"
    assert r2.counts.linked == 1
    assert len(w.loop.notes_by["101"]) == 1


def test_lost_process_answer_is_checked_in_loop_not_fired_again(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.cycle()
    w.wh.finish("101")
    w.loop.lose_answer.add("process")
    r = w.cycle()
    assert r.counts.errors == 1
    w.cycle()
    assert w.loop.writes.count(("process", "101")) == 1
    s = w.store()
    assert s.returns.get("101").stage == "done"
    assert s.ledger.get("process:101").status == "settled"


def test_lost_process_answer_with_loop_still_open_waits_then_repeats(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.cycle()
    w.wh.finish("101")
    w.loop.lose_answer.add("process")
    w.loop.process = lambda rid: (_ for _ in ()).throw(
        __import__("loopsync.errors", fromlist=["x"]).OutcomeUnknown("loop", "lost")
    )
    w.cycle()  # the call never landed, Loop still shows open
    del w.loop.process
    w.cycle()  # within the settle time: wait, do not repeat
    assert ("process", "101") not in w.loop.writes
    w.clock.advance(11 * 60)
    w.cycle()  # one `open` read after the settle delay may be stale: kept, not acted on
    assert ("process", "101") not in w.loop.writes
    w.clock.advance(11 * 60)
    w.cycle()  # a second read, agreeing, a settle delay later: positive evidence
    assert w.loop.writes.count(("process", "101")) == 1


def test_lost_note_answer_is_found_in_loop_notes(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.loop.lose_answer.add("note")
    w.cycle()
    w.cycle()
    assert len(w.loop.notes_by["101"]) == 1


def test_state_conflict_is_settled_not_retried(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.cycle()
    w.wh.finish("101")
    # Someone processed it by hand between our poll and our call.
    real_poll = w.wh.poll

    def poll_then_close(refs):
        out = real_poll(refs)
        w.loop.returns["101"]["state"] = "closed"
        return out

    w.wh.poll = poll_then_close
    r = w.cycle()
    assert r.counts.settled == 1 and r.counts.errors == 0
    assert w.store().ledger.get("process:101").status == "settled"


def test_rejected_rma_is_recorded_and_the_batch_goes_on(tmp_path):
    w = World(tmp_path, [loop_return("101"), loop_return("102")])
    w.wh.reject.add("101")
    r = w.cycle()
    assert r.counts.rejected == 1 and r.counts.pushed == 1
    s = w.store()
    assert s.returns.get("101").stage == "rejected"
    assert "SKU not on order" in s.runs.problems()[0].message


def test_order_not_found_waits_then_goes_stale(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.wh.orders.clear()
    w.cycle()
    s = w.store()
    assert s.returns.get("101").stage == "waiting"
    w.clock.advance(3 * 86400)
    w.wh.orders.add("#101")  # the order reached the warehouse late
    w.loop.returns["101"]["updated_at"] = "2026-05-04T23:59:00Z"
    w.cycle()
    assert w.store().returns.get("101").stage == "open"

    w2 = World(tmp_path / "b", [loop_return("201")])
    w2.wh.orders.clear()
    w2.cycle()
    w2.clock.advance(8 * 86400)
    w2.cycle()
    row = w2.store().returns.get("201")
    assert row.stage == "stale" and "gave up" in row.reason


def test_unmapped_destination_and_closed_returns_are_skipped_with_reason(tmp_path):
    w = World(tmp_path, [loop_return("101", dest=99), loop_return("102", state="closed")])
    r = w.cycle()
    assert r.counts.skipped == 2 and w.wh.created == 0
    s = w.store()
    assert "destination 99 is not mapped" in s.returns.get("101").reason
    assert "closed" in s.returns.get("102").reason


def test_malformed_return_is_recorded_and_others_go_on(tmp_path):
    bad = loop_return("103")
    bad["updated_at"] = "2026-05-01 10:00:00"  # no zone
    w = World(tmp_path, [loop_return("101"), loop_return("103")])
    real_iter = w.loop.iter_returns

    def iter_with_bad(start, end, state, cursor=None):
        for page in real_iter(start, end, state, cursor=cursor):
            page.returns = [bad if r["id"] == "103" else r for r in page.returns]
            yield page

    w.loop.iter_returns = iter_with_bad
    r = w.cycle()
    assert r.counts.malformed == 1 and r.counts.pushed == 1
    assert "no timezone" in w.store().runs.problems()[0].message


def test_warehouse_outage_does_not_hold_back_ingest(tmp_path):
    w = World(tmp_path, [loop_return(str(i)) for i in range(101, 106)])
    w.wh.down = True
    r = w.cycle()
    assert r.counts.new == 5 and "push" in r.stage_errors
    assert w.store().cursors.get("returns", "open").done_until is not None


def test_loop_outage_does_not_block_polling(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.cycle()
    w.wh.finish("101")
    w.loop.down = True
    r = w.cycle()
    assert "ingest" in r.stage_errors and r.counts.polled == 1
    assert w.store().returns.get("101").stage == "acting"
    w.loop.down = False
    w.cycle()
    assert w.loop.writes.count(("process", "101")) == 1


def test_stop_mid_window_checkpoints_the_page_and_resumes(tmp_path, monkeypatch):
    returns = [loop_return(str(i)) for i in range(101, 111)]
    w = World(tmp_path, returns, states=("open",))
    stop = threading.Event()
    real_save = CursorRepository.save_page
    saved = []

    def stop_after_two_pages(self, *a, **k):  # SIGTERM arrives while page 2 is stored
        real_save(self, *a, **k)
        saved.append(a)
        if len(saved) == 2:
            stop.set()

    monkeypatch.setattr(CursorRepository, "save_page", stop_after_two_pages)
    r1 = w.cycle(stop=stop)
    assert r1.stopped and r1.counts.new == 4
    cur = w.store().cursors.get("returns", "open")
    assert cur.page_cursor == "4" and cur.done_until is None
    monkeypatch.setattr(CursorRepository, "save_page", real_save)
    r2 = w.cycle()
    assert r2.counts.new == 6
    assert w.wh.created == 10


def test_boundary_return_is_read_by_both_windows(tmp_path):
    w = World(tmp_path, [loop_return("101", updated="2026-05-02T00:00:00Z")], states=("open",))
    r = w.cycle()  # the clock is exactly 2026-05-02T00:00:00Z: the return sits on `to`
    assert r.counts.new == 1


def test_dry_run_writes_nothing_anywhere(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.cycle()
    w.wh.finish("101")
    loop_writes, created = list(w.loop.writes), w.wh.created
    w.loop.returns["102"] = loop_return("102", updated="2026-05-01T23:50:00Z")
    w.wh.orders.add("#102")
    r = w.cycle(dry_run=True)
    assert w.loop.writes == loop_writes and w.wh.created == created
    assert any("would create" in p for p in r.planned)
    assert any("would process" in p for p in r.planned)
    s = w.store()
    assert s.returns.get("102") is None
    assert s.returns.get("101").stage == "open"


def test_grades_go_to_loop_in_batches_of_twenty(tmp_path):
    skus = tuple(f"S{i}" for i in range(25))
    grading = GradingRules({"good": "grade_a"}, {"good": "back_to_stock"})
    w = World(tmp_path, [loop_return("101", skus=skus)], grading=grading)
    w.cycle()
    w.wh.finish("101")
    for s in skus:
        w.wh.rmas["101"].conditions[s] = "Good"
    w.cycle()
    grades = [n for name, n in w.loop.writes if name == "grade"]
    assert grades == ["20", "5"]
    assert [n for name, n in w.loop.writes if name == "assess"] == ["20", "5"]
    assert w.loop.writes[-1] == ("process", "101")  # graded before the return is finalised


def test_cancelled_in_warehouse_is_reported_without_a_loop_call(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.cycle()
    w.wh.finish("101", status="cancelled")
    before = list(w.loop.writes)
    r = w.cycle()
    assert r.counts.reported == 1 and w.loop.writes == before
    assert w.store().returns.get("101").stage == "reported"


@pytest.mark.parametrize("crash_at", ["before_intent", "after_intent"])
def test_crash_around_flag_fires_once(tmp_path, crash_at):
    w = World(tmp_path, [loop_return("101")])
    w.cycle()
    w.wh.finish("101", status="damaged")
    if crash_at == "after_intent":
        w.loop.lose_answer.add("flag")
    else:
        w.loop.down = True
    w.cycle()
    w.loop.down = False
    w.cycle()
    w.cycle()
    assert w.loop.writes.count(("flag", "101")) == 1
    assert sum("flagged" in n for n in w.loop.notes_by["101"]) == 1


def test_broken_pagination_keeps_the_window_open_and_other_states_go_on(tmp_path):
    from loopsync.loop_client import PaginationStopped

    returns = [loop_return(str(i)) for i in range(101, 107)] + [loop_return("201", state="closed")]
    w = World(tmp_path, returns, states=("open", "closed"))
    real_iter = w.loop.iter_returns
    broken = {"open": 2}  # the open pass breaks off after its first page, twice

    def flaky(start, end, state, cursor=None):
        for n, page in enumerate(real_iter(start, end, state, cursor=cursor)):
            yield page
            if state in broken and broken[state] and n == 0:
                broken[state] -= 1
                raise PaginationStopped("repeated_cursor", "cursor repeated")

    w.loop.iter_returns = flaky
    r1 = w.cycle()
    assert r1.counts.errors == 1 and "not finished" in w.store().runs.problems()[0].message
    s = w.store()
    assert s.cursors.get("returns", "open").done_until is None, "an unfinished window was completed"
    assert s.cursors.get("returns", "closed").done_until is not None
    assert s.returns.get("201") is not None
    r2 = w.cycle()
    assert r2.counts.errors == 0
    assert all(w.store().returns.get(str(i)) for i in range(101, 107))


def test_poll_chunks_unless_the_connector_polls_all_at_once(tmp_path, monkeypatch):
    from loopsync.stages import poll as engine

    monkeypatch.setattr(engine, "POLL_CHUNK", 2)
    returns = [loop_return(str(i)) for i in range(101, 106)]
    w = World(tmp_path, returns)
    w.cycle()
    calls = []
    real_poll = w.wh.poll
    w.wh.poll = lambda refs: calls.append(len(refs)) or real_poll(refs)
    w.cycle()
    assert calls == [2, 2, 1]
    calls.clear()
    w.wh.polls_all_at_once = True  # a sweep read once per poll stage (PeopleVox, Xoro)
    w.cycle()
    assert calls == [5]


def test_poll_stopped_by_the_connector_ends_the_stage_quietly(tmp_path):
    from loopsync.connectors.base import PollStopped

    w = World(tmp_path, [loop_return("101")])
    w.cycle()
    w.wh.finish("101")

    def stopped(refs):
        raise PollStopped("shutting down")

    w.wh.poll = stopped
    r = w.cycle()
    assert r.counts.errors == 0 and not r.stage_errors and r.counts.processed == 0
    assert w.store().returns.get("101").stage == "open"


def test_a_throttled_return_is_no_problem_and_no_error_and_is_pushed_next_cycle(tmp_path):
    from loopsync.errors import RateLimited

    w = World(tmp_path, [loop_return("101")])
    create = w.wh.create_rma

    def throttled(req, located):
        raise RateLimited("fake", "429 slow down", retry_after=1)

    w.wh.create_rma = throttled
    r1 = w.cycle()
    assert r1.counts.errors == 0 and r1.counts.pushed == 0
    store = w.store()
    assert store.runs.problems() == []
    store.close()
    w.wh.create_rma = create
    w.clock.advance(60)
    assert w.cycle().counts.pushed == 1 and w.wh.created == 1
