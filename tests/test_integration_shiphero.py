"""The whole worker against the sandbox's emulated Loop and ShipHero over real HTTP on
127.0.0.1. Time is a FakeClock shared by the worker and the emulators."""

from datetime import timedelta

from loopsync.sandbox.seed import make_return
from loopsync.sandbox.server import Fault
from loopsync.state import Store


def open_returns(sb, n, **kw):
    return sb.seed(n, states_weights=[("open", 1)], **kw)


def loop_writes(sb):
    return [c for c in sb.recorder.calls("loop") if c.write]


def test_end_to_end_exactly_once(make_sandbox, tmp_path, clock):
    sb = make_sandbox()
    seeded = open_returns(sb, 8)
    cfg = sb.merchant_config(tmp_path)
    r1 = sb.run_cycle(cfg)
    assert r1.ok, r1.stage_errors
    assert r1.counts.pushed == 8
    for raw in seeded:
        rid = str(raw["id"])
        assert sb.warehouse.rma_count(rid) == 1
        notes = sb.loop.notes_for(rid)
        assert len(notes) == 1 and "ShipHero" in notes[0]
    ids = [str(r["id"]) for r in seeded]
    for rid, scenario in zip(
        ids, ["full", "short", "damaged", "over", "full", "cancelled"], strict=False
    ):
        sb.warehouse.receive(rid, scenario)
    clock.advance(60)
    r2 = sb.run_cycle(cfg)
    assert r2.ok, r2.stage_errors
    assert (r2.counts.processed, r2.counts.flagged) == (2, 3)
    assert sb.loop.actions_for(ids[0]) == ["process"]
    assert sb.loop.actions_for(ids[1]) == ["flag"]
    flag_note = sb.loop.notes_for(ids[1])[-1]
    assert "short" in flag_note and "expected" in flag_note
    assert "amaged" in sb.loop.notes_for(ids[2])[-1]
    assert sb.loop.actions_for(ids[5]) == []  # RTS: ignored
    before = len(loop_writes(sb))
    clock.advance(60)
    r3 = sb.run_cycle(cfg)
    assert r3.ok and len(loop_writes(sb)) == before, "a rerun wrote to Loop again"
    assert all(sb.warehouse.rma_count(rid) == 1 for rid in ids)


def test_every_state_pass_is_read(make_sandbox, tmp_path):
    sb = make_sandbox()
    states = ["open", "closed", "cancelled", "review", "expired"]
    for n, state in enumerate(states):
        sb.add_return(
            make_return(
                rng=sb.rng,
                return_id=5000 + n,
                state=state,
                updated_at=sb.clock.now() - timedelta(hours=1),
            )
        )
    cfg = sb.merchant_config(tmp_path)
    sb.run_cycle(cfg)
    asked = {c.query.get("state") for c in sb.recorder.calls("loop", path="/warehouse/return/list")}
    assert set(states) <= asked
    store = Store(cfg.state_path, sb.clock)
    assert {store.returns.get(str(5000 + n)).state for n in range(5)} == set(states)


def test_pagination_quirks_lose_nothing(make_sandbox, tmp_path):
    sb = make_sandbox()
    sb.loop.drop_params_in_next_url = True
    sb.loop.repeat_cursor_once = True
    seeded = open_returns(sb, 30)
    cfg = sb.merchant_config(tmp_path, page_size=7)
    r1 = sb.run_cycle(cfg)
    # The repeated cursor ends that pass early (guard); the next cycle re-reads the
    # window (lookback) and picks up whatever the guarded pass left.
    sb.clock.advance(60)
    sb.run_cycle(cfg)
    store = Store(cfg.state_path, sb.clock)
    assert all(store.returns.get(str(r["id"])) for r in seeded)
    assert r1.counts.pulled >= 7
    for call in sb.recorder.calls("loop", path="/warehouse/return/list"):
        if "cursor" in call.query:  # our own parameters were re-applied to every page
            assert call.query.get("state") and call.query.get("from") and call.query.get("to")


def test_return_updated_exactly_at_a_window_boundary_is_not_lost(make_sandbox, tmp_path, clock):
    sb = make_sandbox()
    cfg = sb.merchant_config(tmp_path, window="1d", start_days=3)
    boundary = cfg.loop.start_at + timedelta(days=1)
    sb.add_return(make_return(rng=sb.rng, return_id=7001, state="open", updated_at=boundary))
    sb.run_cycle(cfg)
    assert Store(cfg.state_path, clock).returns.get("7001") is not None


def test_429_with_and_without_retry_after(make_sandbox, tmp_path, clock):
    sb = make_sandbox()
    open_returns(sb, 3)
    sb.loop.faults.inject(Fault("rate_limit", retry_after=7), times=2)
    sb.loop.faults.inject(Fault("rate_limit"), times=2)
    cfg = sb.merchant_config(tmp_path)
    r = sb.run_cycle(cfg)
    assert r.ok, r.stage_errors
    waits = [s for s in clock.slept if s >= 7]
    assert len(waits) >= 2, clock.slept  # Retry-After honoured
    assert r.counts.pushed == 3


def test_5xx_and_resets_are_retried(make_sandbox, tmp_path):
    sb = make_sandbox()
    open_returns(sb, 2)
    sb.loop.faults.inject(Fault("status", status=503), times=2)
    sb.loop.faults.inject(Fault("reset"), times=1)
    sb.loop.faults.inject(Fault("malformed"), times=1)
    r = sb.run_cycle(sb.merchant_config(tmp_path))
    assert r.ok, r.stage_errors
    assert r.counts.pushed == 2


def test_state_conflict_body_is_settled(make_sandbox, tmp_path, clock):
    sb = make_sandbox()
    (raw,) = open_returns(sb, 1)
    rid = str(raw["id"])
    cfg = sb.merchant_config(tmp_path)
    sb.run_cycle(cfg)
    sb.warehouse.receive(rid, "full")
    conflict = {
        "errors": {
            "message": "Return is closed and therefore cannot be processed.",
            "code": "UNPROCESSABLE_RETURN",
        }
    }
    sb.loop.faults.inject(
        Fault("status", status=200, body=conflict), when=lambda req: req.path.endswith("/process")
    )
    r = sb.run_cycle(cfg)
    assert r.counts.settled == 1 and r.ok, r.stage_errors
    assert sb.loop.actions_for(rid) == []
    effect = Store(cfg.state_path, clock).ledger.get(f"process:{rid}")
    assert effect.status == "settled" and "closed" in effect.last_error
    clock.advance(60)
    sb.run_cycle(cfg)
    assert len(sb.recorder.calls("loop", path="/process")) == 1, "a settled call was retried"


def test_shiphero_throttling_and_token_refresh(make_sandbox, tmp_path, clock):
    sb = make_sandbox()
    open_returns(sb, 4)
    cfg = sb.merchant_config(tmp_path)
    sb.warehouse.expire_tokens()
    throttle = {
        "data": None,
        "errors": [
            {
                "code": 30,
                "message": "There are not enough credits "
                "to perform the requested operation. Try again in 3 seconds",
                "time_remaining": "3 seconds",
                "required_credits": 101,
                "remaining_credits": 10,
            }
        ],
    }
    sb.warehouse.faults.inject(
        Fault("status", status=200, body=throttle),
        times=1,
        when=lambda req: req.path.endswith("/graphql"),
    )
    sb.warehouse.faults.inject(
        Fault("rate_limit", retry_after=2), times=1, when=lambda req: req.path.endswith("/graphql")
    )
    r = sb.run_cycle(cfg)
    assert r.ok, r.stage_errors
    assert r.counts.pushed == 4
    assert any(2.9 <= s <= 3.5 for s in clock.slept), clock.slept
    assert sb.recorder.calls("shiphero", path="/auth/refresh")


def test_unmapped_destination_and_missing_order(make_sandbox, tmp_path):
    sb = make_sandbox()
    unmapped = make_return(rng=sb.rng, return_id=8001, state="open", updated_at=sb.clock.now())
    unmapped["destination_id"] = 99
    sb.add_return(unmapped)
    sb.add_return(
        make_return(rng=sb.rng, return_id=8002, state="open", updated_at=sb.clock.now()),
        with_order=False,
    )
    cfg = sb.merchant_config(tmp_path)
    r = sb.run_cycle(cfg)
    assert r.counts.pushed == 0 and r.counts.skipped == 1 and r.counts.waiting == 1
    store = Store(cfg.state_path, sb.clock)
    assert "destination 99 is not mapped" in store.returns.get("8001").reason
    assert "not found in ShipHero" in store.returns.get("8002").reason
    assert not sb.warehouse.has_rma("8001") and not sb.warehouse.has_rma("8002")


def test_dry_run_makes_no_writing_call(make_sandbox, tmp_path, clock):
    sb = make_sandbox()
    seeded = open_returns(sb, 4)
    cfg = sb.merchant_config(tmp_path)
    sb.run_cycle(cfg)
    sb.warehouse.receive(str(seeded[0]["id"]), "full")
    open_returns(sb, 2)
    sb.recorder.clear()
    state_before = cfg.state_path.read_bytes()
    r = sb.run_cycle(cfg, dry_run=True)
    assert [c.path for c in sb.recorder.calls() if c.write] == []
    assert any("would create" in p for p in r.planned)
    assert any("would process" in p for p in r.planned)
    assert cfg.state_path.read_bytes() == state_before


def test_ship_hero_poll_batches_open_rmas(make_sandbox, tmp_path):
    sb = make_sandbox()
    open_returns(sb, 60)
    cfg = sb.merchant_config(tmp_path)
    sb.run_cycle(cfg)
    sb.recorder.clear()
    sb.clock.advance(60)
    r = sb.run_cycle(cfg)
    polls = [
        c
        for c in sb.recorder.calls("shiphero", path="/graphql")
        if b"return(" in c.body and b"return_create" not in c.body
    ]
    assert r.counts.polled == 60 and 1 <= len(polls) <= 3


def test_access_token_is_reused_across_cycles(make_sandbox, tmp_path, clock):
    sb = make_sandbox()
    sb.warehouse.expire_tokens()  # nothing cached from other tests is still valid there
    open_returns(sb, 2)
    cfg = sb.merchant_config(tmp_path)
    for _ in range(3):
        clock.advance(60)
        assert sb.run_cycle(cfg).ok
    assert len(sb.recorder.calls("shiphero", path="/auth/refresh")) == 1
