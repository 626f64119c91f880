"""`loopsync status` gives a verdict (issue 10, section 1): real cycles on the sandbox with
a FakeClock for each verdict, grouped problems and their resolution, `--check` exit codes,
`--return` stories, and an older state file read as it is."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopsync import report
from loopsync.cli import EXIT_ALERT, main
from loopsync.config import load_config
from loopsync.report import Verdict
from loopsync.runner import record_next_due
from loopsync.sandbox.server import Fault
from loopsync.state import Store
from loopsync.status import merchant_view, outcomes_by_hour, return_story
from loopsync.testing import FakeClock
from loopsync.timeutil import SystemClock


@pytest.fixture
def sb(make_sandbox):
    return make_sandbox(rate_limits=False)


@pytest.fixture
def cfg(sb, tmp_path):
    return sb.merchant_config(tmp_path, every="1m")


def cycle(sb, cfg, seconds=60, **kw):
    sb.clock.advance(seconds)
    return sb.run_cycle(cfg, **kw)


def view(sb, cfg):
    return merchant_view(cfg, now=sb.clock.now())


def open_returns(sb, n):
    return [str(r["id"]) for r in sb.seed(n, states_weights=[("open", 1)])]


# -- verdicts --------------------------------------------------------------------------------


def test_a_merchant_with_no_state_file_is_never_run(sb, cfg):
    v = view(sb, cfg)
    assert v.verdict == Verdict.NEVER_RUN
    assert v.state_path == str(cfg.state_path.absolute())
    assert not cfg.state_path.exists(), "status created the state file"


def test_a_clean_cycle_is_ok_and_its_end_is_the_last_successful_cycle(sb, cfg):
    open_returns(sb, 3)
    result = cycle(sb, cfg)
    assert result.ok, result.stage_errors
    v = view(sb, cfg)
    assert v.verdict == Verdict.OK, v.reason
    assert v.last_ok_at is not None and v.last_run is not None
    assert v.backlog == {"open": 3}
    assert v.to_json()["verdict"] == "OK"


def test_no_successful_cycle_within_three_intervals_is_stalled_then_recovers(sb, cfg):
    open_returns(sb, 2)
    assert cycle(sb, cfg).ok
    sb.clock.advance(170)  # under 3 x 1 min since the last good cycle
    assert view(sb, cfg).verdict == Verdict.OK
    sb.loop.faults.inject(Fault("status", status=503), times=10**6)
    cycle(sb, cfg, seconds=30)  # fails; now more than 3 min since the last good one
    stalled = view(sb, cfg)
    assert stalled.verdict == Verdict.STALLED, stalled.reason
    assert "limit 3 min" in stalled.reason
    sb.loop.faults = type(sb.loop.faults)()  # Loop is back
    assert cycle(sb, cfg).ok
    assert view(sb, cfg).verdict == Verdict.OK


def test_stalled_after_from_the_merchant_file_moves_the_threshold(sb, tmp_path):
    path = sb.write_config(tmp_path, every="1m")
    text = path.read_text().replace("every: 1m", "every: 1m\n  stalled_after: 10m")
    path.write_text(text)
    cfg = load_config(path, env=sb.env())
    assert cfg.stall_limit == timedelta(minutes=10)
    assert cycle(sb, cfg).ok
    sb.clock.advance(5 * 60)  # past 3 x every, within stalled_after
    assert view(sb, cfg).verdict == Verdict.OK
    sb.clock.advance(6 * 60)
    assert view(sb, cfg).verdict == Verdict.STALLED


def test_refused_credentials_make_the_merchant_blocked_until_accepted(sb, cfg):
    assert cycle(sb, cfg).ok
    keys = dict(sb.loop.api_keys)
    sb.loop.api_keys.clear()
    cycle(sb, cfg)
    blocked = view(sb, cfg)
    assert blocked.verdict == Verdict.BLOCKED
    assert "credentials refused by loop" in blocked.reason
    sb.loop.api_keys.update(keys)
    cycle(sb, cfg, seconds=3600)  # past the refusal's wait
    assert view(sb, cfg).verdict == Verdict.OK


def test_a_running_run_with_no_lock_held_is_interrupted(sb, cfg):
    assert cycle(sb, cfg).ok
    store = Store(cfg.state_path, sb.clock)
    store.runs.start("deadbeef0001", "run")  # as a killed process leaves it
    store.close()
    v = view(sb, cfg)
    assert v.verdict == Verdict.INTERRUPTED, v.reason
    assert v.last_run is not None and v.last_run.status == "interrupted"
    assert cycle(sb, cfg).ok
    assert view(sb, cfg).verdict == Verdict.OK


def test_a_stage_failure_is_stored_with_its_reason_and_the_merchant_is_degraded(sb, cfg):
    open_returns(sb, 2)
    assert cycle(sb, cfg).ok
    sb.warehouse.faults.inject(Fault("status", status=503), times=10**6)
    result = cycle(sb, cfg)
    assert "poll" in result.stage_errors
    v = view(sb, cfg)
    assert v.verdict == Verdict.DEGRADED
    assert "poll failed" in v.reason and "503" in v.reason
    assert v.last_run is not None
    assert [f.stage for f in v.last_run.stage_failures] == ["poll"]
    (group,) = [g for g in v.problems if g.stage == "poll"]
    assert not group.resolved
    # the warehouse is back: the poll stage runs to its end, the failure is resolved
    sb.warehouse.faults = type(sb.warehouse.faults)()
    assert cycle(sb, cfg).ok
    after = view(sb, cfg)
    assert after.verdict == Verdict.OK
    assert all(g.resolved for g in after.problems if g.stage == "poll")


# -- problems --------------------------------------------------------------------------------


def test_problems_group_by_cause_with_ids_replaced_and_recent_ids_kept():
    at = FakeClock("2026-06-01T12:00:00Z").now()
    problems = [
        report.ProblemFact(
            f"r{i}",
            "push",
            f"shiphero HTTP 422: order {1000 + i} not found",
            at + timedelta(minutes=i),
        )
        for i in range(7)
    ]
    problems.append(report.ProblemFact("x1", "act", "loop HTTP 500: boom", at))
    groups = report.group_problems(problems, {}, [])
    top = groups[0]
    assert (top.stage, top.count) == ("push", 7)
    assert top.reason == "shiphero HTTP 422: order # not found"
    assert top.recent_ids == ("r6", "r5", "r4", "r3", "r2")
    assert (top.first_seen, top.last_seen) == (at, at + timedelta(minutes=6))
    assert len(groups) == 2 and not any(g.resolved for g in groups)


def test_a_problem_whose_return_moved_past_its_stage_is_resolved():
    at = FakeClock("2026-06-01T12:00:00Z").now()
    p = report.ProblemFact("r1", "push", "order not found", at)
    assert (
        report.group_problems([p], {"r1": report.ReturnPlace("waiting")}, [])[0].resolved is False
    )
    assert report.group_problems([p], {"r1": report.ReturnPlace("open")}, [])[0].resolved
    q = report.ProblemFact("r2", "act", "loop HTTP 500", at)
    assert not report.group_problems([q], {"r2": report.ReturnPlace("acting")}, [])[0].resolved
    assert report.group_problems([q], {"r2": report.ReturnPlace("done")}, [])[0].resolved


def test_throttling_is_never_grouped_as_a_problem():
    at = FakeClock("2026-06-01T12:00:00Z").now()
    problems = [
        report.ProblemFact("r1", "push", "loop HTTP 429: Too Many Requests", at),
        report.ProblemFact("r2", "act", "shiphero: not enough credits", at),
    ]
    run = report.RunView(
        "a",
        at,
        at,
        "errors",
        {},
        1,
        (report.StageFailure("a", "poll", "peoplevox HTTP 429: throttled", at),),
    )
    assert report.group_problems(problems, {}, [run]) == []


def test_a_throttled_stage_is_not_stored_as_a_stage_failure(make_sandbox, tmp_path):
    sb = make_sandbox(rate_limits=False)
    cfg = sb.merchant_config(tmp_path, every="1m")
    open_returns(sb, 2)
    assert cycle(sb, cfg).ok
    sb.warehouse.faults.inject(Fault("rate_limit", retry_after=1), times=10**6)
    result = cycle(sb, cfg)
    assert "poll" in result.stage_errors  # the stage stopped for this cycle ...
    v = view(sb, cfg)
    assert v.last_run is not None and v.last_run.stage_failures == ()  # ... no problem kept
    assert not [g for g in v.problems if g.stage == "poll"]


def test_ages_read_as_minutes_and_hours():
    now = FakeClock("2026-06-01T12:00:00Z").now()
    assert report.ago(now - timedelta(minutes=4), now) == "4 min ago"
    assert report.ago(now - timedelta(hours=2, minutes=5), now) == "2 h 5 min ago"
    assert report.ago(now + timedelta(minutes=3), now) == "in 3 min"
    assert report.ago(None, now) is None


# -- the command ------------------------------------------------------------------------------


def test_status_check_exits_3_when_stalled(sb, tmp_path, capsys, monkeypatch):
    # The command reads the real time: this sandbox's clock is months in the past, so its
    # good cycle is long ago (STALLED).
    monkeypatch.delenv("LOOP_API_KEY", raising=False)  # status needs no secret
    path = sb.write_config(tmp_path, every="1m")
    assert cycle(sb, load_config(path, env=sb.env())).ok
    assert main(["status", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sandbox  STALLED  (shiphero)")
    assert f"state {(tmp_path / 'state' / 'sandbox.sqlite').absolute()}" in out
    assert main(["status", "--check", "-c", str(path)]) == EXIT_ALERT


def test_status_check_is_0_when_every_merchant_is_ok(make_sandbox, tmp_path, capsys):
    sb = make_sandbox(clock=SystemClock(), rate_limits=False)
    path = sb.write_config(tmp_path, every="1m")
    assert sb.run_cycle(load_config(path, env=sb.env())).ok
    assert main(["status", "--check", "--json", "-c", str(path)]) == 0
    (shown,) = json.loads(capsys.readouterr().out)
    assert shown["verdict"] == "OK" and shown["state_path"].startswith("/")
    assert shown["last_ok_at"] and shown["detail"]["stages"] == {}


def test_status_return_tells_a_processed_returns_story(sb, cfg, capsys):
    (rid,) = open_returns(sb, 1)
    assert cycle(sb, cfg).ok
    sb.warehouse.receive(rid, "full")
    assert cycle(sb, cfg).ok
    story = return_story(cfg, rid)
    assert story is not None and story.rma_id
    kinds = [e.kind for e in story.events]
    assert kinds[0] == report.EventKind.INGESTED
    for kind in ("pushed", "polled", "decided", "effect"):
        assert kind in kinds, kinds
    assert story.wait_reason is None and story.stage == "done"
    assert any("process succeeded after 1 attempt" in e.text for e in story.events)
    by_rma = return_story(cfg, story.rma_id)
    assert by_rma is not None and by_rma.return_id == rid
    assert main(["status", "--return", rid, "-c", str(cfg.file)]) == 0
    out = capsys.readouterr().out
    assert f"return {rid}" in out and "now: nothing to wait for" in out


def test_status_return_tells_a_flagged_returns_story_and_its_poll_history(sb, cfg):
    (rid,) = open_returns(sb, 1)
    assert cycle(sb, cfg).ok
    assert cycle(sb, cfg).ok  # polled, not received yet
    sb.warehouse.receive(rid, "short")
    assert cycle(sb, cfg).ok
    story = return_story(cfg, rid)
    assert story is not None
    polls = [e.text for e in story.events if e.kind == report.EventKind.POLLED]
    assert len(polls) == 2, polls  # one row per status seen, not per poll
    decided = [e.text for e in story.events if e.kind == report.EventKind.DECIDED]
    assert any("flag" in d for d in decided), decided
    assert story.wait_reason is None


def test_a_story_shows_no_customer_personal_data(sb, cfg):
    raw = sb.seed(1, states_weights=[("open", 1)])[0]
    raw["customer"] = {
        "email": "jane.doe@example.com",
        "first_name": "Jane",
        "address1": "1 Secret Lane",
    }
    assert cycle(sb, cfg).ok
    story = return_story(cfg, str(raw["id"]))
    assert story is not None
    text = json.dumps(story.to_json()) + "\n".join(story.lines())
    assert "jane" not in text.lower() and "Secret Lane" not in text


def test_status_return_of_an_unknown_id_is_one_line_and_exit_1(sb, cfg, capsys):
    assert cycle(sb, cfg).ok
    assert main(["status", "--return", "no-such-return", "-c", str(cfg.file)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no return or RMA 'no-such-return'" in err


def test_outcomes_per_hour_count_processed_and_flagged(sb, cfg):
    ids = open_returns(sb, 2)
    assert cycle(sb, cfg).ok
    sb.warehouse.receive(ids[0], "full")
    sb.warehouse.receive(ids[1], "short")
    assert cycle(sb, cfg).ok
    hours = outcomes_by_hour(cfg, hours=3, now=sb.clock.now())
    assert len(hours) == 3
    assert (sum(h.processed for h in hours), sum(h.flagged for h in hours)) == (1, 1)


def test_next_due_recorded_by_the_runner_is_shown(sb, cfg):
    assert cycle(sb, cfg).ok
    due = sb.clock.now() + timedelta(minutes=2)  # the cycle below moves the clock 1 min
    assert cycle(sb, cfg, next_due=lambda: due).ok
    v = view(sb, cfg)
    assert v.next_due is not None and v.next_due > sb.clock.now()
    assert "next due in" in "\n".join(report.view_lines(v))
    store = Store(cfg.state_path, sb.clock)
    record_next_due(store, None)
    store.close()
    assert view(sb, cfg).next_due is None


# -- an older state file --------------------------------------------------------------------


def test_status_reads_a_schema_2_file_as_it_is_and_runs_no_migration(sb, cfg):
    (rid,) = open_returns(sb, 1)
    assert cycle(sb, cfg).ok
    conn = sqlite3.connect(cfg.state_path)
    conn.executescript(
        "drop table stage_failures; drop table polls; "
        "update meta set value = '2' where key = 'schema_version';"
    )
    conn.close()
    before = cfg.state_path.read_bytes()
    v = view(sb, cfg)
    assert v.verdict == Verdict.OK and v.schema_version == 2
    story = return_story(cfg, rid)
    assert story is not None and story.rma_id
    assert cfg.state_path.read_bytes() == before, "status changed an older state file"


def test_serve_hands_each_cycle_the_jobs_next_run_time():
    """scheduling.serve passes `next_due`; asked once the scheduler has moved the job on,
    it is about one interval ahead (what the runner stores for `status`)."""
    import threading

    from loopsync.config import MerchantConfig
    from loopsync.scheduling import serve

    # the fake cycle never reads loop or warehouse settings
    cfg = MerchantConfig(
        file="x.yaml",
        merchant="acme",
        state_path=Path("unused.sqlite"),
        every=timedelta(minutes=15),
        loop=None,
        warehouse=None,
    )
    stop = threading.Event()
    seen: list[object] = []

    def run_cycle(cfg, stop_event, next_due):
        moved = threading.Event()
        for _ in range(500):  # the scheduler thread sets it just after submitting the job
            when = next_due()
            if when is not None and when - SystemClock().now() > timedelta(minutes=10):
                break
            moved.wait(0.01)
        seen.append(when)
        stop.set()

    assert serve([cfg], run_cycle, stop, grace=5) == 0
    (when,) = seen
    assert when is not None
    ahead = when - SystemClock().now()
    assert timedelta(minutes=13) < ahead <= timedelta(minutes=15, seconds=31)


def test_a_bad_stalled_after_is_a_config_error_naming_the_key(sb, tmp_path):
    from loopsync.errors import ConfigError

    path = sb.write_config(tmp_path, every="1m")
    path.write_text(path.read_text().replace("every: 1m", "every: 1m\n  stalled_after: soon"))
    with pytest.raises(ConfigError, match=r"schedule\.stalled_after"):
        load_config(path, env=sb.env())


def test_an_unreadable_state_file_is_blocked_and_check_exits_3(sb, cfg, capsys):
    cfg.state_path.parent.mkdir(parents=True, exist_ok=True)
    cfg.state_path.write_bytes(b"not a database at all, just some bytes " * 100)
    v = view(sb, cfg)
    assert v.verdict == Verdict.BLOCKED and v.reason.startswith("state unreadable")
    assert main(["status", "--check", "-c", str(cfg.file)]) == EXIT_ALERT
    assert "Traceback" not in capsys.readouterr().err


def test_status_return_json_names_the_merchant_and_the_rma(sb, cfg, capsys):
    (rid,) = open_returns(sb, 1)
    assert cycle(sb, cfg).ok
    assert main(["status", "--json", "--return", rid, "-c", str(cfg.file)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["merchant"] == "sandbox" and shown["return_id"] == rid and shown["rma_id"]
    assert shown["wait_reason"].startswith("waiting for the warehouse to receive it")


@given(st.text(max_size=200))
def test_normalising_any_reason_is_stable(reason):
    once = report.normalise(reason)
    assert report.normalise(once) == once


def test_an_email_a_remote_echoed_in_a_problem_never_reaches_status_text_or_json(sb, cfg, capsys):
    (rid,) = open_returns(sb, 1)
    assert cycle(sb, cfg).ok
    store = Store(cfg.state_path, sb.clock)
    store.runs.add_problem(rid, "push", 'rejected: "jane.doe+r@example.com"\nhas no order', None)
    store.close()
    outs = []
    for args in (["status"], ["status", "--json"], ["status", "--return", rid]):
        assert main([*args, "-c", str(cfg.file)]) == 0
        outs.append(capsys.readouterr().out)
    assert all("jane.doe" not in out and "example.com" not in out for out in outs)
    json.loads(outs[1])  # masked field by field: the JSON still parses
