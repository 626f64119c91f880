"""The HTTP layer's deadline and answer-size cap are configuration, per remote."""

import textwrap
import threading

import pytest

from loopsync.config import load_config
from loopsync.errors import ConfigError, ResponseTooLarge
from loopsync.runner import build_connector, build_loop_client
from loopsync.state import Store
from loopsync.testing import FakeClock
from tests.hostile import HostileServer, reply
from tests.test_config import BASE, ENV, write


def with_limits(loop_extra: str = "", warehouse_extra: str = "") -> str:
    text = BASE.replace("  lookback: 15m\n", "  lookback: 15m\n" + loop_extra)
    return text + warehouse_extra


def test_deadline_and_size_cap_reach_every_client(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            with_limits(
                "  deadline: 20s\n  max_response_mb: 1\n", "  deadline: 40s\n  max_response_mb: 3\n"
            ),
        ),
        env=ENV,
    )
    clock = FakeClock()
    loop = build_loop_client(cfg, clock)
    assert (loop.http.deadline, loop.http.max_body) == (20.0, 1024 * 1024)
    store = Store(tmp_path / "s.sqlite", clock)
    connector = build_connector(cfg, clock, store, stop=threading.Event())
    http = connector.client.http
    assert (http.deadline, http.max_body) == (40.0, 3 * 1024 * 1024)


def test_defaults_leave_the_http_layer_its_own(tmp_path):
    cfg = load_config(write(tmp_path, BASE), env=ENV)
    loop = build_loop_client(cfg, FakeClock())
    assert loop.http.deadline == 5.0 + 3 * cfg.loop.timeout
    assert loop.http.max_body == 32 * 1024 * 1024


def test_a_configured_cap_refuses_a_larger_loop_answer(tmp_path):
    big = b'{"returns": [], "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    with HostileServer(reply(200, big, {"Content-Type": "application/json"})) as server:
        text = with_limits("  max_response_mb: 1\n").replace(
            "https://api.loopreturns.com/api/v1", f"http://127.0.0.1:{server.port}"
        )
        cfg = load_config(write(tmp_path, text), env=ENV)
        loop = build_loop_client(cfg, FakeClock())
        with pytest.raises(ResponseTooLarge):
            loop.http.request("GET", "/warehouse/return/list")


@pytest.mark.parametrize(
    "extra, key",
    [
        ("  deadline: 0s\n", "loop.deadline"),
        ("  deadline: 2h\n", "loop.deadline"),
        ("  max_response_mb: 0\n", "loop.max_response_mb"),
        ("  max_response_mb: 100000\n", "loop.max_response_mb"),
        ("  timeout: 3650d\n", "loop.timeout"),
    ],
)
def test_absurd_http_limits_are_configuration_errors(tmp_path, extra, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, with_limits(extra)), env=ENV)
    assert key in str(err.value)
