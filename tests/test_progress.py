"""Long work shows progress, and processing does not wait for a backlog (issue 10 §2):
progress arithmetic, push batches, poll and act between batches on the sandbox, live run
counts, progress lines, and `import` of an unknown id."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta

import pytest
import structlog

from loopsync import cli
from loopsync import logs as log_config
from loopsync.config import PushSettings, parse_config
from loopsync.errors import ConfigError
from loopsync.progress import Progress, due, estimate
from loopsync.stages.push import Backlog, batch_over, poll_between
from loopsync.state import Store
from loopsync.testing import FakeClock

# -- pure arithmetic ----------------------------------------------------------------------


def test_estimate_gives_rate_and_eta_at_the_pace_so_far():
    r = estimate("push", done=250, total=1000, unit="returns", items=250, elapsed=50.0)
    assert r.rate == 5.0 and r.eta == 150.0
    assert r.fields()["eta_s"] == 150 and r.fields()["rate_per_s"] == 5.0


def test_estimate_knows_no_eta_before_any_progress_or_without_a_total():
    assert estimate("push", done=0, total=10, unit="returns", items=0, elapsed=5).eta is None
    assert estimate("ingest", done=3, total=None, unit="windows", items=900, elapsed=5).eta is None
    assert estimate("push", done=0, total=0, unit="returns", items=0, elapsed=0).eta == 0.0
    assert estimate("push", done=5, total=10, unit="returns", items=5, elapsed=0).rate is None


def test_estimate_never_gives_a_negative_eta_when_done_passes_an_estimated_total():
    assert estimate("ingest", done=12, total=10, unit="windows", items=1, elapsed=3).eta == 0


def test_progress_reports_at_most_once_a_period_by_the_injected_clock():
    clock, lines = FakeClock(), []
    progress = Progress("push", clock=clock, report=lines.append, total=100, every=10)
    for _ in range(30):
        progress.add()
        clock.advance(1)
    assert [r.done for r in lines] == [11, 21]  # at 10 s and 20 s, not once per return
    assert lines[-1].total == 100 and lines[-1].eta is not None
    progress.finish()
    assert lines[-1].final and lines[-1].done == 30


def test_short_work_logs_no_final_line_unless_asked():
    clock, lines = FakeClock(), []
    progress = Progress("push", clock=clock, report=lines.append, total=3, every=10)
    progress.add(3)
    progress.finish()
    assert lines == []
    progress.finish(always=True)
    assert len(lines) == 1 and lines[0].final
    assert due(0.0, 10.0, 10.0) and not due(0.0, 9.9, 10.0)


def test_a_batch_ends_at_its_count_or_its_time_whichever_first():
    limits = PushSettings(batch=200, batch_time=timedelta(seconds=60))
    assert not batch_over(199, 59.9, limits)
    assert batch_over(200, 1.0, limits)
    assert batch_over(1, 60.0, limits)


def test_poll_between_batches_takes_at_most_half_of_the_time():
    assert poll_between(pushed_for=0.0, last_poll_took=0.0)
    assert not poll_between(pushed_for=60.0, last_poll_took=600.0)
    assert poll_between(pushed_for=600.0, last_poll_took=600.0)


def test_backlog_hands_out_each_return_once_and_ends_when_abandoned():
    backlog = Backlog(["1", "2", "3"])
    assert [backlog.take(), backlog.take()] == ["1", "2"] and not backlog.done
    backlog.abandoned = True
    assert backlog.done and backlog.total == 3


# -- config -------------------------------------------------------------------------------


def _config(extra, tmp_path):
    data = {
        "merchant": "acme",
        "state_path": str(tmp_path / "s.sqlite"),
        "loop": {"api_key": "${LOOP_API_KEY}", "start_at": "2026-01-01T00:00:00Z"},
        "warehouse": {"kind": "shiphero", "refresh_token": "${TOKEN}"},
        **extra,
    }
    return parse_config(
        data, file="acme.yaml", env={"LOOP_API_KEY": "loop-key-123456", "TOKEN": "token-123456"}
    )


def test_push_batch_keys_are_read_with_defaults(tmp_path):
    default = _config({}, tmp_path)
    assert default.push == PushSettings(200, timedelta(seconds=60))
    assert default.progress_every == timedelta(seconds=10)
    cfg = _config({"push": {"batch": 50, "batch_time": "2m"}, "progress_every": "30s"}, tmp_path)
    assert cfg.push == PushSettings(50, timedelta(minutes=2))
    assert cfg.progress_every == timedelta(seconds=30)


@pytest.mark.parametrize(
    "push,key",
    [
        ({"batch": 0}, "push.batch"),
        ({"batch_time": "0s"}, "push.batch_time"),
        ({"batch_size": 10}, "push.batch_size"),
    ],
)
def test_bad_push_keys_are_config_errors_naming_the_key(tmp_path, push, key):
    with pytest.raises(ConfigError) as err:
        _config({"push": push}, tmp_path)
    assert key in str(err.value)


# -- the sandbox: a backlog does not hold back processing ----------------------------------


def _sandbox_config(sb, tmp_path, **push):
    data = sb.config_dict(state_path=tmp_path / "sandbox.sqlite")
    data["push"] = push
    data["progress_every"] = "1s"
    return parse_config(data, file=str(tmp_path / "sandbox.yaml"), env=sb.env(), base_dir=tmp_path)


def _watch_process(sb, rid, backlog):
    """When Loop is asked to process `rid`: how many of `backlog` have an RMA by then."""
    seen = {}
    handle = sb.loop.handle

    def watching(req):
        if req.method == "POST" and req.path.endswith(f"/return/{rid}/process"):
            seen.setdefault("rmas", sum(sb.warehouse.rma_count(i) for i in backlog))
        return handle(req)

    sb.loop.handle = watching
    return seen


def test_a_received_return_is_processed_before_the_backlog_push_ends(make_sandbox, tmp_path, clock):
    sb = make_sandbox("shiphero")
    early = str(sb.seed(1, states_weights=[("open", 1)])[0]["id"])
    cfg = _sandbox_config(sb, tmp_path, batch=5)
    clock.advance(60)
    assert sb.run_cycle(cfg).counts.pushed == 1
    assert sb.warehouse.receive(early, "full")
    backlog = [str(r["id"]) for r in sb.seed(23, days=0.005, states_weights=[("open", 1)])]
    seen = _watch_process(sb, early, backlog)
    clock.advance(60)
    result = sb.run_cycle(cfg)
    assert result.ok, result.stage_errors
    assert sb.loop.actions_for(early) == ["process"]
    assert seen["rmas"] < len(backlog)  # processed while the backlog was still being pushed
    assert result.counts.pushed == len(backlog)  # and the whole backlog in the same cycle
    assert all(sb.warehouse.rma_count(i) == 1 for i in backlog)
    assert all(len(sb.loop.notes_for(i)) == 1 for i in backlog)


def test_unbounded_batch_pushes_the_whole_backlog_before_processing(make_sandbox, tmp_path, clock):
    sb = make_sandbox("shiphero")
    early = str(sb.seed(1, states_weights=[("open", 1)])[0]["id"])
    cfg = _sandbox_config(sb, tmp_path, batch=1_000_000, batch_time="1d")
    clock.advance(60)
    sb.run_cycle(cfg)
    sb.warehouse.receive(early, "full")
    backlog = [str(r["id"]) for r in sb.seed(8, days=0.005, states_weights=[("open", 1)])]
    seen = _watch_process(sb, early, backlog)
    clock.advance(60)
    sb.run_cycle(cfg)
    assert seen["rmas"] == len(backlog)  # the old order, for contrast


def _ticking(api, clock, seconds):
    """Every request to `api` takes `seconds` of the sandbox clock."""
    handle = api.handle

    def slow(req):
        clock.advance(seconds)
        return handle(req)

    api.handle = slow


def test_run_counts_are_checkpointed_during_the_cycle(make_sandbox, tmp_path, clock):
    sb = make_sandbox("shiphero")
    sb.seed(12, states_weights=[("open", 1)])
    cfg = _sandbox_config(sb, tmp_path, batch=4)
    _ticking(sb.warehouse, clock, 1)
    live = []
    handle = sb.loop.handle

    def reading(req):  # the run row as `status` would read it, mid-cycle
        if req.method == "POST" and req.path.endswith("/note"):
            with sqlite3.connect(cfg.state_path) as db:
                row = db.execute("select status, counts from runs").fetchone()
            live.append((row[0], json.loads(row[1]).get("pushed", 0) if row[1] else 0))
        return handle(req)

    sb.loop.handle = reading
    clock.advance(60)
    sb.run_cycle(cfg)
    assert live and all(status == "running" for status, _ in live)
    assert max(pushed for _, pushed in live) > 0  # live numbers before the run ended
    store = Store(cfg.state_path, clock)
    (run,) = store.runs.last()
    store.close()
    assert run.status == "ok" and run.counts["pushed"] == 12


def test_checkpoint_never_rewrites_a_finished_run(tmp_path, clock):
    store = Store(tmp_path / "s.sqlite", clock)
    store.runs.start("r1", "run")
    assert store.runs.checkpoint("r1", {"pushed": 3})
    assert store.runs.last()[0].counts == {"pushed": 3}
    store.runs.finish("r1", "ok", {"pushed": 5}, 0)
    assert not store.runs.checkpoint("r1", {"pushed": 4})
    assert not store.runs.checkpoint("nope", {"pushed": 4})
    assert store.runs.last()[0].counts == {"pushed": 5}
    store.close()


def test_push_and_ingest_log_progress_at_info_and_returns_at_debug(make_sandbox, tmp_path, clock):
    sb = make_sandbox("shiphero")
    sb.seed(12, states_weights=[("open", 1)])
    cfg = _sandbox_config(sb, tmp_path, batch=4)
    _ticking(sb.warehouse, clock, 1)
    _ticking(sb.loop, clock, 1)
    clock.advance(60)
    log_config.configure(json_output=True, level="debug")
    with structlog.testing.capture_logs() as logs:
        sb.run_cycle(cfg)
    push = [e for e in logs if e["event"] == "push.progress"]
    assert push and all(e["log_level"] == "info" for e in push)
    assert push[-1]["final"] and push[-1]["done"] == push[-1]["total"] == 12
    assert all(k in push[0] for k in ("rate_per_s", "eta_s", "elapsed_s"))
    ingest = [e for e in logs if e["event"] == "ingest.progress"]
    assert ingest and ingest[-1]["final"] and ingest[-1]["unit"] == "windows"
    assert ingest[-1]["items"] == 12 and all(e["log_level"] == "info" for e in ingest)
    per_return = [
        e
        for e in logs
        if e["event"] in ("return.rma_created", "loop.action", "shiphero.rma_created")
    ]
    assert per_return and all(e["log_level"] == "debug" for e in per_return)


# -- import -------------------------------------------------------------------------------


def test_import_of_an_unknown_return_id_is_one_line_not_a_traceback(
    make_sandbox, tmp_path, monkeypatch, capsys
):
    sb = make_sandbox("shiphero")
    sb.seed(2)
    path = sb.write_config(tmp_path)
    for name, value in sb.env().items():
        monkeypatch.setenv(name, value)
    code = cli.main(["--log-level", "error", "import", "-c", str(path), "--return-id", "999999"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_CONFIG
    assert err == ["loopsync: sandbox: return 999999 not found in Loop"]
    code = cli.main(["--log-level", "error", "import", "-c", str(path), "--return-id", "12ab"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_CONFIG and len(err) == 1 and "digits" in err[0]


def test_import_range_prints_progress_lines(make_sandbox, tmp_path, monkeypatch, clock):
    sb = make_sandbox("shiphero")
    sb.seed(6, days=2)
    cfg = _sandbox_config(sb, tmp_path)
    from loopsync.runner import run_merchant
    from loopsync.testing.sandbox import SANDBOX_POLICY

    log_config.configure(json_output=True, level="info")
    with structlog.testing.capture_logs() as logs:
        result = run_merchant(
            cfg,
            clock=clock,
            mode="import",
            policy=SANDBOX_POLICY,
            import_from=clock.now() - timedelta(days=3),
            import_to=clock.now(),
        )
    assert result.counts.pulled == 6
    lines = [e for e in logs if e["event"] == "import.progress"]
    assert lines and lines[-1]["final"] and lines[-1]["done"] == lines[-1]["total"] == 5
    assert lines[-1]["unit"] == "windows" and lines[-1]["items"] == 6


# -- the guards hold across batches -------------------------------------------------------


def test_outage_budget_counts_failures_in_a_row_across_batches(tmp_path):
    from dataclasses import replace

    from loopsync.cycle import OUTAGE_AFTER, Engine
    from loopsync.testing import FakeLoop, FakeWarehouse, loop_return, merchant_config

    clock = FakeClock("2026-05-02T00:00:00Z")
    returns = [loop_return(str(i)) for i in range(101, 111)]
    cfg = replace(merchant_config(tmp_path), push=PushSettings(2, timedelta(minutes=1)))
    loop, wh = FakeLoop(returns), FakeWarehouse()
    wh.orders = {r["order_name"] for r in returns}
    wh.down = True
    store = Store(cfg.state_path, clock)
    try:
        result = Engine(cfg, store, loop, wh, clock=clock, run_id="r1").run_cycle()
        failed = [p for p in store.runs.problems(50) if p.stage == "push"]
    finally:
        store.close()
    assert "push" in result.stage_errors  # the remote is down: the stage stopped once
    assert len(failed) == OUTAGE_AFTER  # not OUTAGE_AFTER per batch of 2
