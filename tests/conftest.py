import pytest

from loopsync import http, logs
from loopsync.testing import FakeClock, Sandbox


@pytest.fixture(autouse=True)
def _quiet_logs():
    logs.configure(json_output=True, level="error")


@pytest.fixture(autouse=True)
def _fresh_rate_budgets():
    """Each test starts with a fresh process's Loop budget (the limiter is per process and
    key, and every test uses the sandbox's key): no test waits out another's minute."""
    http.forget_shared_limiters()


@pytest.fixture
def clock():
    return FakeClock("2026-06-01T12:00:00Z")


@pytest.fixture
def make_sandbox(clock):
    """Start sandboxes (Loop + one warehouse on 127.0.0.1) that stop after the test."""
    started = []

    def make(warehouse="shiphero", **kw):
        kw.setdefault("clock", clock)
        sb = Sandbox(warehouse, **kw).start()
        started.append(sb)
        return sb

    yield make
    for sb in started:
        sb.stop()
