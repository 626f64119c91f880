"""Red team, cursors, clocks and exactly-once (issue 14 §3, §4): edges that held back a
guarantee after the first pass."""

from __future__ import annotations

from loopsync.cycle import Engine
from loopsync.models import RmaRef
from loopsync.state import Store

from loopsync.testing import FakeRma, Page, loop_return
from .test_once_engine import ByOrder, StaleLoop, World, _same_order


def test_a_third_return_on_an_order_already_reported_as_ambiguous_is_reported_not_matched(tmp_path):
    """Two returns on one order were reported (one ASN, two returns); a third return on the
    same order arrives while they wait for a person. It matches that one ASN just as well:
    it must be reported too, never linked to the ASN and processed."""
    wh = ByOrder()
    w = World(tmp_path, [_same_order("101", "#1"), _same_order("102", "#1")], wh=wh)
    wh.rmas["#1"] = FakeRma("#1", {"A": 1, "B": 1}, status="complete", received={"A": 1, "B": 1})
    w.cycle()
    assert w.row("101").stage == w.row("102").stage == "reported"
    w.loop.returns["103"] = _same_order("103", "#1")
    w.loop.returns["103"]["updated_at"] = "2026-05-02T00:00:30Z"
    result = w.cycle(60)
    assert w.row("103").stage == "reported" and "ambiguous" in w.row("103").reason
    assert result.needs_attention
    w.cycle(60)
    assert w.loop.writes == [] and getattr(wh, "polled", 0) == 0
    # The two already reported are not reported again every cycle.
    store = Store(w.cfg.state_path, w.clock)
    try:
        problems = [
            p
            for p in store.db.query("select return_id from problems")
            if p["return_id"] in ("101", "102")
        ]
    finally:
        store.close()
    assert len(problems) == 2


def test_lost_state_and_a_loop_queue_longer_than_the_settle_delay_do_not_process_twice(
    make_sandbox, tmp_path, clock
):
    """State lost while Loop still queues our process for longer than PROCESS_SETTLE: one
    `open` read after the settle delay is no proof the first call did not land. Like a
    lost answer, the action is repeated only on two agreeing reads PROCESS_SETTLE apart."""
    from .test_once_sandbox import cycle, forget_state, open_returns

    sb = make_sandbox("shiphero")
    sb.loop.process_delay_seconds = 15 * 60
    (rid,) = open_returns(sb, 1)
    cfg = sb.merchant_config(tmp_path)
    cycle(sb, cfg, clock)
    sb.warehouse.receive(rid, "full")
    cycle(sb, cfg, clock)
    assert sb.loop.actions_for(rid) == ["process"]  # queued; the return still says open
    forget_state(cfg)
    cycle(sb, cfg, clock)  # found again: the RMA and its note are there, Loop still open
    for _ in range(4):
        cycle(sb, cfg, clock, seconds=6 * 60)
    assert sb.loop.actions_for(rid) == ["process"], "processed twice after lost state"
    assert sb.warehouse.rma_count(rid) == 1 and len(sb.loop.notes_for(rid)) == 1


def test_generic_folder_receipts_archived_before_the_state_was_lost_still_count(
    make_sandbox, tmp_path, clock
):
    """The folder transport moves each receipt file to archive/ once its lines are kept in
    the state file. With that state lost, the first half of a return's receipts lives only
    in archive/: a return found again by its RMA number reads them there, or the second
    half alone leaves it `partial` for ever (never processed, and nothing says why)."""
    from .test_once_sandbox import cycle, forget_state, open_returns

    from loopsync.sandbox.seed import make_return

    sb = make_sandbox("generic", transport="folder", folder_root=tmp_path / "3pl")
    rid = "64001"
    sb.add_return(
        make_return(rng=sb.rng, return_id=rid, state="open", updated_at=clock.now(), units=3)
    )
    cfg = sb.merchant_config(tmp_path)
    assert cycle(sb, cfg, clock).counts.pushed == 1
    assert sb.warehouse.has_rma(rid)  # the 3PL picks the RMA file up
    with sb.warehouse.lock:
        lines = [(str(li["sku"]), int(li["quantity"])) for li in sb.warehouse.rmas[rid]["lines"]]
    units = [(sku, 1) for sku, qty in lines for _ in range(qty)]
    assert len(units) == 3
    first, rest = units[:1], units[1:]
    sb.warehouse.add_receipts(rid, [(sku, n, "available") for sku, n in first])
    cycle(sb, cfg, clock)  # read, kept, archived; not complete yet
    assert sb.loop.actions_for(rid) == []
    assert not list((tmp_path / "3pl" / "inbox").glob("*.csv"))
    forget_state(cfg)
    cycle(sb, cfg, clock)  # found again by its RMA number
    sb.warehouse.add_receipts(rid, [(sku, n, "available") for sku, n in rest])
    for _ in range(3):  # a return found after lost state: its action waits to settle
        cycle(sb, cfg, clock, seconds=11 * 60)
    assert sb.loop.actions_for(rid) == ["process"], "fully received, never processed"


class _UnfilteredLoop(StaleLoop):
    """Loop filtering its list on its own (true) update time while the `updated_at` it
    shows may be wrong: every return of the state is listed in every window."""

    def iter_returns(self, start, end, state, *, cursor=None):
        self._check()
        yield Page([r for r in self.returns.values() if r["state"] == state], None)


def test_a_return_once_shown_future_dated_is_not_frozen_at_that_snapshot(tmp_path):
    """Loop once showed return 101 closed with `updated_at` 2099 (a bad row), then the
    truth: open, updated now. The 2099 snapshot must not win over every later read as
    "newer", or the return is skipped for ever and never pushed."""
    raw = loop_return("101")
    raw.update(state="closed", updated_at="2099-01-01T00:00:00Z")
    w = World(tmp_path, [raw])
    w.loop = _UnfilteredLoop([raw])
    w.cycle()
    assert w.row("101").stage == "skipped"
    w.loop.returns["101"].update(state="open", updated_at="2026-05-02T00:01:00Z")
    w.cycle(120)
    assert w.row("101").stage == "open", "a future-dated snapshot froze the return"
    assert w.wh.created == 1


class _OpenConflictLoop(StaleLoop):
    """Loop refusing an action with a state-conflict wording that names `open` itself."""

    def _act(self, name, rid, new_state=None):
        if name in ("process", "flag"):
            from loopsync.errors import StateConflict

            self.calls.append((name, rid))
            raise StateConflict(
                "loop", f"Return is open and cannot be {name}ed yet", code="UNPROCESSABLE_RETURN"
            )
        super()._act(name, rid, new_state)


def test_an_action_refused_for_its_state_while_the_return_is_open_is_reported_not_settled(tmp_path):
    """A state-conflict answer is settled as "already done" only when the return really
    left `open`; refused while still open, the return was neither processed nor flagged:
    marking it done would skip it silently. It is reported for a person."""
    w = World(tmp_path, [loop_return("101")])
    w.loop = _OpenConflictLoop([loop_return("101")])
    w.cycle()
    w.wh.finish("101")
    result = w.cycle(60)
    row = w.row("101")
    assert row.stage == "reported", row
    assert result.needs_attention
    assert w.loop.returns["101"]["state"] == "open"


class _StaleNotesLoop(StaleLoop):
    """Loop whose notes listing lags: the first `lag` reads after a write miss it."""

    def __init__(self, returns):
        super().__init__(returns)
        self.lag = 0

    def add_note(self, rid, content):
        self.lag = 1
        super().add_note(rid, content)

    def notes(self, rid):
        if self.lag:
            self.lag -= 1
            return []
        return super().notes(rid)


def test_a_lost_note_answer_and_one_stale_notes_read_do_not_write_the_note_twice(tmp_path):
    w = World(tmp_path, [loop_return("101")])
    w.loop = _StaleNotesLoop([loop_return("101")])
    w.loop.lose_answer.add("note")
    w.cycle()  # the RMA note lands in Loop; its answer is lost
    assert len(w.loop.notes_by["101"]) == 1
    for _ in range(4):
        w.cycle(120)  # past the note settle time; the first look-up reads a stale list
    assert len(w.loop.notes_by["101"]) == 1, "the note was written twice"


def test_a_clock_jump_between_two_open_reads_is_no_settle_delay(tmp_path):
    """After a lost flag answer the first `open` read is kept; then our clock jumps a day
    ahead while Loop's (its `Date`) moves a minute. The two reads are not PROCESS_SETTLE
    apart in truth: no second flag on that evidence."""
    from datetime import timedelta

    from .test_once_engine import SETTLE, _flagged_world

    w = _flagged_world(tmp_path)
    loop_now = [w.clock.now()]
    real = w.loop.return_details

    def details(rid):
        w.loop.details_server_date = loop_now[0]
        return real(rid)

    w.loop.return_details = details
    loop_now[0] += timedelta(seconds=SETTLE)
    w.cycle(SETTLE)  # first `open` read, kept as evidence
    assert w.loop.calls.count(("flag", "101")) == 1
    loop_now[0] += timedelta(seconds=60)
    w.cycle(86_400)  # our clock: a day later; Loop's: a minute
    w.cycle(60)
    assert w.loop.calls.count(("flag", "101")) == 1, "flagged again after a clock jump"


def test_generic_feed_receipts_of_an_rma_found_again_later_after_lost_state_still_count(
    make_sandbox, tmp_path, clock
):
    """State lost; return A's RMA is found again only a cycle after B's (its look-up failed
    once), when the feed cursor has already moved past A's first receipt. A's first poll
    reads the feed from A's creation, or A stays `partial` for ever."""
    from datetime import timedelta

    from loopsync.sandbox.seed import make_return
    from loopsync.sandbox.server import Fault

    from .test_once_sandbox import cycle, forget_state

    sb = make_sandbox("generic")
    a = "65001"
    sb.add_return(
        make_return(
            rng=sb.rng,
            return_id=a,
            state="open",
            units=3,
            created_at=clock.now() - timedelta(days=2),
            updated_at=clock.now(),
        )
    )
    cfg = sb.merchant_config(tmp_path)
    assert cycle(sb, cfg, clock).counts.pushed == 1
    with sb.warehouse.lock:
        units_a = [
            (str(li["sku"]), 1, "available")
            for li in sb.warehouse.rmas[a]["lines"]
            for _ in range(int(li["quantity"]))
        ]
    assert len(units_a) == 3
    sb.warehouse.add_receipts(a, units_a[:1])
    cycle(sb, cfg, clock)  # A: 1 of 3, kept in the state file
    clock.advance(3600)
    b = "65002"
    sb.add_return(
        make_return(rng=sb.rng, return_id=b, state="open", units=3, updated_at=clock.now())
    )
    assert cycle(sb, cfg, clock).counts.pushed == 1
    with sb.warehouse.lock:
        sku_b = str(sb.warehouse.rmas[b]["lines"][0]["sku"])
    forget_state(cfg)
    sb.warehouse.add_receipts(b, [(sku_b, 1, "available")])
    sb.warehouse.faults.inject(
        Fault("status", status=400, body={"error": "busy"}),
        times=1,
        when=lambda r: r.method == "GET" and r.path.endswith(f"/rmas/{a}"),
    )
    cycle(sb, cfg, clock)  # B found and polled (cursor moves to B's receipt); A not yet
    cycle(sb, cfg, clock)  # A found now
    sb.warehouse.add_receipts(a, units_a[1:])
    for _ in range(4):
        cycle(sb, cfg, clock, seconds=11 * 60)
    assert sb.loop.actions_for(a) == ["process"], "A fully received, never processed"
