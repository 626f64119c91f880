"""Issue 15 §6: rate limits are shared for real: per API key across merchants and cycles
in one process, across process restarts through the state store, and ShipHero's credit
bucket per account."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from loopsync import http
from loopsync.connectors import shiphero
from loopsync.connectors.base import MemoryKeyValue
from loopsync.http import LIMIT_HISTORY_NAMESPACE, LimitHistory, RateLimiter, key_id, shared_limiter
from loopsync.loop_client import LoopClient
from loopsync.runner import build_connector, open_store, run_merchant
from loopsync.sandbox import LOOP_KEY
from loopsync.sandbox.peoplevox import PASSWORD_ENV
from loopsync.testing import FakeClock, Sandbox
from loopsync.timeutil import SystemClock


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Forget every in-process limiter, as a new process (cron's next `run --once`) would."""

    def restart() -> None:
        monkeypatch.setattr(http, "_shared_limiters", {})

    restart()
    return restart


def test_loop_clients_with_one_key_share_one_limiter_whatever_their_run_clock() -> None:
    a = LoopClient(
        "http://127.0.0.1:9/api/v1", "shared-key-123456789", clock=SystemClock(threading.Event())
    )
    b = LoopClient(
        "http://127.0.0.1:9/api/v1", "shared-key-123456789", clock=SystemClock(threading.Event())
    )
    c = LoopClient(
        "http://127.0.0.1:9/api/v1", "another-key-12345678", clock=SystemClock(threading.Event())
    )
    assert a.http.limiter is b.http.limiter and a.http.limiter is not c.http.limiter


def test_run_merchant_shares_the_loop_limiter_across_cycles_and_merchants(
    tmp_path: Path, fresh_process: Any
) -> None:
    # fresh_process: another in-process `run` in this worker (test_cli, a webhook test)
    # within the last minute left its sends in the shared limiter of the sandbox's key
    with Sandbox("generic", clock=SystemClock(), rate_limits=False) as sb:
        sb.seed(2, states_weights=[("open", 1)])
        first = sb.merchant_config(tmp_path / "a", merchant="first")
        second = sb.merchant_config(tmp_path / "b", merchant="second")
        run_merchant(first)  # a clock of its own each cycle, as `serve` does
        limiter = http._shared_limiters[("loop", key_id(LOOP_KEY))]
        sent = len(limiter.recent())
        run_merchant(first)
        run_merchant(second)
        assert http._shared_limiters[("loop", key_id(LOOP_KEY))] is limiter
        loop_calls = len(sb.recorder.calls("loop"))
    assert sent > 0 and len(limiter.recent()) == loop_calls


def test_a_new_process_counts_the_sends_the_last_one_made(fresh_process: Any) -> None:
    first = FakeClock("2026-06-01T12:00:00Z")
    limiter = shared_limiter("peoplevox", "account-1", 15, 15.5, first)
    kv = MemoryKeyValue()
    history = LimitHistory.load(kv, limiter)
    for _ in range(15):
        assert limiter.acquire() == 0
    history.save()
    assert "account-1" not in repr(kv.data)

    fresh_process()
    second = FakeClock("2026-06-01T12:00:02Z")  # the next cron run, two seconds later
    again = shared_limiter("peoplevox", "account-1", 15, 15.5, second)
    assert again is not limiter
    LimitHistory.load(kv, again)
    waited = again.acquire()
    assert waited == pytest.approx(13.5, abs=0.01)  # 15.5 s after the first send


def test_merging_a_history_twice_counts_each_send_once() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, 60, clock)
    limiter.ident = "t:x"
    for _ in range(3):
        limiter.acquire()
    saved = limiter.recent()
    assert limiter.merge(saved) == 0
    assert limiter.merge([*saved, "junk", None, True, float("nan"), float("inf"), 1.0]) == 0
    assert len(limiter.recent()) == 3


def test_a_send_dated_in_the_future_counts_as_now() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1, 60, clock)
    assert limiter.merge([clock.now().timestamp() + 3600]) == 1
    assert limiter.acquire() == pytest.approx(60)


def test_history_is_saved_every_few_seconds_while_the_run_goes() -> None:
    clock = FakeClock()
    limiter = shared_limiter("xoro", "key-for-periodic", 100, 60, clock)
    kv = MemoryKeyValue()
    LimitHistory.load(kv, limiter)
    limiter.acquire()
    clock.advance(LimitHistory.SAVE_EVERY + 1)
    limiter.acquire()
    assert len(kv.data[limiter.ident]) == 2


def test_back_to_back_cron_runs_stay_under_peoplevox_15_in_15s(
    make_sandbox: Any, tmp_path: Path, clock: FakeClock, fresh_process: Any
) -> None:
    sb = make_sandbox("peoplevox")
    sb.seed(12, states_weights=[("open", 1)])
    cfg = sb.merchant_config(tmp_path)
    assert sb.run_cycle(cfg).ok
    assert sb.warehouse.throttled == 0
    fresh_process()  # a new process, an instant later
    sb.seed(12, states_weights=[("open", 1)])
    assert sb.run_cycle(cfg).ok
    assert sb.warehouse.throttled == 0

    conn = sqlite3.connect(str(cfg.state_path))
    rows = conn.execute(
        "select key, value from kv where namespace = ?", [LIMIT_HISTORY_NAMESPACE]
    ).fetchall()
    conn.close()
    assert {key.split(":")[0] for key, _ in rows} == {"loop", "peoplevox"}
    text = repr(rows)  # epochs under hashed key ids: no credential
    assert LOOP_KEY not in text and sb.env()[PASSWORD_ENV] not in text


def test_merchants_on_one_shiphero_account_share_one_credit_bucket(
    make_sandbox: Any, tmp_path: Path, clock: FakeClock
) -> None:
    sb = make_sandbox("shiphero")
    built = []
    for name in ("north", "south"):
        cfg = sb.merchant_config(tmp_path / name, merchant=name)
        store = open_store(cfg, clock, dry_run=True)
        built.append(build_connector(cfg, clock, store, stop=threading.Event()))
    assert built[0].client.credits is built[1].client.credits
    other = shiphero.shared_bucket("another-account", 1001, 15.0, clock)
    assert other is not built[0].client.credits
