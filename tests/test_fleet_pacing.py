"""serve on a fleet: a bounded pool, staggered first cycles, lateness, and fairness.

The pure decisions (loopsync.pacing) are tested alone; the scheduler's side through
scheduling's own hooks (a recording scheduler, the Pool on a FakeClock) and a few short
in-process `serve` runs that wait on events, never on time.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from loopsync import pacing
from loopsync.config import MerchantConfig
from loopsync.errors import UsageError
from loopsync.logs import configure as configure_logs
from loopsync.scheduling import Pool, _guarded, _Jobs, serve
from loopsync.shutdown import Shutdown
from loopsync.testing import FakeClock

WAIT = 30  # seconds: only how long a broken test hangs, never a measurement


def merchant(name: str, every: timedelta = timedelta(minutes=1)) -> MerchantConfig:
    # the cycles here never read loop or warehouse settings
    return MerchantConfig(
        file=f"{name}.yaml",
        merchant=name,
        state_path=Path(f"{name}.sqlite"),
        every=every,
        loop=None,  # type: ignore[arg-type]
        warehouse=None,  # type: ignore[arg-type]
    )


def fleet(n: int, every: timedelta = timedelta(minutes=1)) -> list[MerchantConfig]:
    return [merchant(f"m{i:04d}", every) for i in range(n)]


def stop_once(done: threading.Event, stop: threading.Event) -> None:
    """Sets `stop` once `done` is set (or WAIT has passed): how these tests end serve."""

    def watch() -> None:
        done.wait(WAIT)
        stop.set()

    threading.Thread(target=watch, daemon=True).start()


class RecordingScheduler:
    """What _Jobs asks of APScheduler, written down."""

    def __init__(self) -> None:
        self.first: dict[str, Any] = {}

    def add_job(self, func: Any, trigger: str, **kw: Any) -> None:
        self.first[kw["id"].removeprefix("sync:")] = kw["next_run_time"]

    def remove_job(self, job_id: str) -> None:
        self.first.pop(job_id.removeprefix("sync:"), None)


def scheduled(cfgs: list[MerchantConfig], clock: FakeClock) -> dict[str, timedelta]:
    sched = RecordingScheduler()
    _Jobs(sched, lambda *a: None, threading.Event(), clock=clock).schedule_all(cfgs)  # type: ignore[arg-type]
    return {m: when - clock.now() for m, when in sched.first.items()}


# -- staggering --------------------------------------------------------------------------


def test_a_lone_merchant_starts_at_once():
    assert scheduled([merchant("acme", timedelta(hours=1))], FakeClock()) == {"acme": timedelta(0)}


def test_stagger_is_the_same_at_every_start():
    cfgs = fleet(300)
    assert scheduled(cfgs, FakeClock()) == scheduled(list(reversed(cfgs)), FakeClock())


def test_five_hundred_first_cycles_spread_over_one_interval():
    delays = scheduled(fleet(500), FakeClock())
    assert max(delays.values()) < timedelta(minutes=1)
    # ten six-second slices of the minute: each holds some, none a crowd (50 expected)
    slices = [0] * 10
    for delay in delays.values():
        slices[int(delay.total_seconds() // 6)] += 1
    assert min(slices) >= 25 and max(slices) <= 80, slices


def test_a_few_merchants_start_within_seconds_not_an_interval():
    delays = scheduled(fleet(5, timedelta(hours=1)), FakeClock())
    assert max(delays.values()) <= timedelta(seconds=4 * pacing.STAGGER_SLOT_SECONDS)


@given(st.lists(st.text(max_size=30), min_size=1, max_size=50, unique=True), st.integers(10, 86400))
def test_every_first_cycle_falls_within_one_interval(names, seconds):
    every = timedelta(seconds=seconds)
    delays = pacing.first_run_delays([pacing.Pace(n, every) for n in names])
    assert set(delays) == set(names)
    assert all(timedelta(0) <= d <= every for d in delays.values())


def test_a_merchant_added_by_a_reload_starts_at_once_and_a_crowd_is_staggered():
    clock, sched = FakeClock(), RecordingScheduler()
    jobs = _Jobs(sched, lambda *a: None, threading.Event(), clock=clock)  # type: ignore[arg-type]
    jobs.schedule_all(fleet(3))
    jobs.apply([*fleet(3), merchant("late")])
    assert sched.first["late"] == clock.now()
    jobs.apply([*fleet(3), merchant("late"), *(merchant(f"new{i}") for i in range(100))])
    added = [sched.first[f"new{i}"] - clock.now() for i in range(100)]
    assert max(added) > timedelta(seconds=10) and max(added) < timedelta(minutes=1)


# -- the pool's size -----------------------------------------------------------------------


def test_pool_size_is_the_operators_or_the_default_whatever_the_fleet():
    assert pacing.pool_size() == pacing.DEFAULT_WORKERS
    assert pacing.pool_size(40) == 40


def test_one_merchant_uses_one_worker_thread():
    stop = threading.Event()
    workers: list[int] = []
    rounds = threading.Event()

    def cycle(cfg: MerchantConfig, stop_event: threading.Event, next_due: Any) -> None:
        workers.append(threading.get_ident())
        if len(workers) == 3:
            rounds.set()

    stop_once(rounds, stop)
    one = [merchant("acme", timedelta(seconds=1))]
    assert serve(one, cycle, stop, shutdown=Shutdown(), grace=5) == 0
    assert rounds.is_set() and len(set(workers)) == 1  # a pool of 16, one thread made


def test_workers_come_from_the_flag_first_then_the_environment():
    env = {pacing.WORKERS_ENV: "8"}
    assert pacing.read_workers("4", env) == 4
    assert pacing.read_workers(None, env) == 8
    assert pacing.read_workers(None, {}) is None
    assert pacing.read_workers(None, {pacing.WORKERS_ENV: " "}) is None


@pytest.mark.parametrize("bad", ["0", "-1", "257", "abc", "4.5", "", "١٢", "9" * 400])
def test_a_bad_worker_count_is_one_usage_error_naming_its_source(bad):
    with pytest.raises(UsageError, match=r"^--workers must be a whole number"):
        pacing.read_workers(bad, {})
    if bad.strip():
        with pytest.raises(UsageError, match=f"^{pacing.WORKERS_ENV} must be"):
            pacing.read_workers(None, {pacing.WORKERS_ENV: bad})


# -- lateness and the stop ---------------------------------------------------------------


@pytest.fixture
def verbose() -> None:
    configure_logs(json_output=True, level="debug")  # capture_logs keeps the level filter


def test_a_cycle_that_waited_for_a_worker_reports_how_late_it_started(verbose):
    clock = FakeClock()
    pool = Pool(2, clock)
    ran: list[str] = []
    job = _guarded(
        lambda cfg, stop, next_due: ran.append(cfg.merchant), lambda cfg: lambda: None, pool
    )
    pool.expect("sync:acme", clock.now())
    clock.advance(7)  # 7 s in the queue: beyond 10 % of a minute
    with capture_logs() as logs:
        job(merchant("acme"), threading.Event())
    started = [e for e in logs if e["event"] == "serve.cycle_started"]
    late = [e for e in logs if e["event"] == "serve.cycle_late"]
    assert ran == ["acme"] and started[0]["late_s"] == 7.0
    assert late and late[0]["merchant"] == "acme" and late[0]["log_level"] == "warning"
    assert pool.busy == 0 and pool.peak == 1


def test_a_cycle_on_time_is_not_called_late(verbose):
    clock = FakeClock()
    pool = Pool(2, clock)
    job = _guarded(lambda cfg, stop, next_due: None, lambda cfg: lambda: None, pool)
    pool.expect("sync:acme", clock.now())
    clock.advance(5)
    with capture_logs() as logs:
        job(merchant("acme"), threading.Event())
    assert [e["event"] for e in logs] == ["serve.cycle_started"]


def test_a_cycle_still_queued_when_the_stop_came_does_not_start():
    ran: list[str] = []
    pool = Pool(1, FakeClock())
    job = _guarded(
        lambda cfg, stop, next_due: ran.append(cfg.merchant), lambda cfg: lambda: None, pool
    )
    stop = threading.Event()
    stop.set()
    job(merchant("acme"), stop)
    assert ran == [] and pool.busy == 0


# -- serve, in process ---------------------------------------------------------------------


def test_threads_do_not_grow_with_the_merchants():
    cfgs = fleet(120)
    stop = threading.Event()
    lock = threading.Lock()
    workers: set[int] = set()
    seen: set[str] = set()
    everyone = threading.Event()

    def cycle(cfg: MerchantConfig, stop_event: threading.Event, next_due: Any) -> None:
        with lock:
            workers.add(threading.get_ident())
            seen.add(cfg.merchant)
            if len(seen) == len(cfgs):
                everyone.set()

    stop_once(everyone, stop)
    assert serve(cfgs, cycle, stop, shutdown=Shutdown(), grace=5, stagger=False) == 0
    assert everyone.is_set(), f"{len(seen)} of {len(cfgs)} merchants ran"
    assert len(workers) <= pacing.DEFAULT_WORKERS


def test_a_stuck_merchant_does_not_block_the_others_and_the_stop_drains_it():
    every = timedelta(seconds=1)  # the others come round again and again
    cfgs = [merchant("stuck", every), *fleet(9, every)]
    stop = threading.Event()
    lock = threading.Lock()
    others: set[str] = set()  # merchants that ran while the stuck one held its worker
    all_others = threading.Event()
    stuck_started, stuck_done = threading.Event(), threading.Event()

    def cycle(cfg: MerchantConfig, stop_event: threading.Event, next_due: Any) -> None:
        if cfg.merchant == "stuck":
            stuck_started.set()
            stop_event.wait(WAIT)  # a cycle that only ends at the stop, like a slow remote
            stuck_done.set()
            return
        with lock:
            if stuck_started.is_set():
                others.add(cfg.merchant)
            if len(others) == 9:
                all_others.set()

    stop_once(all_others, stop)
    # two workers: one held by the stuck merchant, nine others share the other one
    assert serve(cfgs, cycle, stop, shutdown=Shutdown(), grace=10, workers=2, stagger=False) == 0
    assert all_others.is_set(), f"only {sorted(others)} ran beside the stuck merchant"
    assert stuck_done.is_set()  # serve returned after the stuck cycle ended, not before


@pytest.mark.parametrize(
    ("argv", "env", "source"),
    [(["--workers", "0"], {}, "--workers"), ([], {pacing.WORKERS_ENV: "lots"}, "LOOPSYNC_WORKERS")],
)
def test_serve_with_a_bad_worker_count_exits_2_with_one_line_before_starting(
    tmp_path, capsys, monkeypatch, argv, env, source
):
    from loopsync.cli import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", *argv, "-c", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and source in err[0] and "Traceback" not in err[0]


# -- the sandbox serves a fleet ------------------------------------------------------------


def test_each_fleet_merchant_has_its_own_loop_key_and_its_own_rate_limit(tmp_path):
    import requests

    from loopsync.sandbox import Sandbox

    with Sandbox("generic", rate_limits=False) as sb:
        sb.loop.rate_limit_enabled, sb.loop.rate_limit_per_minute = True, 2
        names = {m: sb.fleet_key(m) for m in ("acme", "globex")}
        env = sb.env()
        config = sb.config_dict(merchant="acme", loop_key_env=names["acme"])
        assert config["loop"]["api_key"] == "${" + names["acme"] + "}"
        url = f"{sb.loop_url}/warehouse/return/list?state=open"

        def status(key: str) -> int:
            return requests.get(url, headers={"X-Authorization": key}, timeout=10).status_code

        acme, globex = env[names["acme"]], env[names["globex"]]
        assert acme != globex
        assert [status(acme) for _ in range(3)] == [200, 200, 429]  # acme spent its budget
        assert status(globex) == 200  # globex's is its own
        assert status("not-a-key") == 401
