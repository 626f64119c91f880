"""The real worker in a subprocess meets SIGTERM and SIGINT: `run --once` stops at its
current request, records the run as stopped and exits 128 + the signal; `serve` honours
a SIGTERM that arrives during start-up, keeps going past bad merchants, and a second
signal forces the exit, after which `status` shows the run as interrupted."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from loopsync.testing import Sandbox
from loopsync.sandbox.server import Fault, json_response
from loopsync.state import Store
from loopsync.timeutil import SystemClock
from loopsync.testing import FakeClock

pytestmark = pytest.mark.slow
WAIT = 30  # seconds: the most any condition below is waited for (a loaded machine)


def wait_for(condition, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def worker(tmp_path, env, *args):
    err = open(tmp_path / "stderr.txt", "w+b")  # a file: read while the worker runs
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopsync", "--log-format", "json", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=err,
    )
    return proc, lambda: (tmp_path / "stderr.txt").read_text(errors="replace")


@pytest.fixture
def sb():
    sandbox = Sandbox("shiphero", clock=SystemClock(), rate_limits=False).start()
    yield sandbox
    sandbox.stop()


def hold_first_list(sb, release):
    """The Loop returns list is answered only when `release` is set (or after 30 s)."""
    reached = threading.Event()

    def respond(req):
        reached.set()
        release.wait(WAIT)
        return json_response({"message": "too late"}, 500)

    sb.loop.faults.inject(
        Fault("custom", response=respond),
        when=lambda req: req.path.endswith("/warehouse/return/list"),
    )
    return reached


IMPORT = ["import", "--from", "2026-01-01T00:00:00Z", "--to", "2036-01-01T00:00:00Z"]


@pytest.mark.parametrize(
    "command, sig, code",
    [(["run", "--once"], signal.SIGTERM, 143), (IMPORT, signal.SIGINT, 130)],
    ids=["run --once, SIGTERM", "import, SIGINT"],
)
def test_run_and_import_stop_on_signal_record_stopped_and_exit_128_plus_signal(
    sb, tmp_path, command, sig, code
):
    sb.seed(3, states_weights=[("open", 1)])
    cfg = sb.write_config(
        tmp_path, merchant="acme", state_path=str(tmp_path / "acme.sqlite"), timeout="1s"
    )
    release = threading.Event()
    reached = hold_first_list(sb, release)
    proc, stderr = worker(tmp_path, sb.env(), *command, "-c", str(cfg))
    try:
        assert reached.wait(WAIT), stderr()
        proc.send_signal(sig)
        proc.wait(WAIT)  # the held request is abandoned at its 1 s timeout, not retried
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
    err = stderr()
    assert proc.returncode == code, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    run = Store(tmp_path / "acme.sqlite", FakeClock(), read_only=True).runs.last(1)[0]
    assert run.status == "stopped" and run.ended_at


def sigterm_is_caught(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_serve_honours_a_sigterm_during_start_up(tmp_path):
    cfg = tmp_path / "acme.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "merchant": "acme",
                "state_path": str(tmp_path / "acme.sqlite"),
                "loop": {
                    "base_url": "http://127.0.0.1:9",
                    "api_key": "${LOOP_API_KEY}",
                    "start_at": "2026-01-01T00:00:00Z",
                },
                "warehouse": {
                    "kind": "generic",
                    "base_url": "http://127.0.0.1:9",
                    "api_key": "${GENERIC_KEY}",
                    "destinations": {"1": "main"},
                },
            }
        )
    )
    env = {"LOOP_API_KEY": "loop-key-0123456789", "GENERIC_KEY": "generic-key-0123456789"}
    proc, stderr = worker(tmp_path, env, "serve", "-c", str(cfg))
    try:
        # Sent the moment a handler exists: before the CLI, configs and scheduler are up.
        wait_for(lambda: proc.poll() is not None or sigterm_is_caught(proc.pid), "a handler")
        proc.send_signal(signal.SIGTERM)
        proc.wait(WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = stderr()
    assert proc.returncode == 0, err
    assert "serve.start" not in err and "Traceback" not in err


def test_serve_runs_past_bad_merchants_reloads_and_a_second_sigterm_forces_exit(sb, tmp_path):
    sb.seed(2, states_weights=[("open", 1)])
    conf = tmp_path / "conf"
    good = sb.write_config(
        conf, merchant="good", state_path=str(tmp_path / "good.sqlite"), timeout="20s"
    )
    sb.write_config(conf, merchant="corrupt", state_path=str(tmp_path / "corrupt.sqlite"))
    (tmp_path / "corrupt.sqlite").write_bytes(b"not a database at all\n" * 50)
    (conf / "bad.yaml").write_text("merchant: bad\nloop: {}\nwarehouse: {kind: nowhere}\n")
    release = threading.Event()
    reached = hold_first_list(sb, release)
    proc, stderr = worker(tmp_path, sb.env(), "serve", "-c", str(conf))
    try:
        assert reached.wait(WAIT), stderr()  # good's cycle is under way despite the others
        wait_for(lambda: "serve.state_error" in stderr(), "the corrupt merchant's report")
        sb.write_config(conf, merchant="late", state_path=str(tmp_path / "late.sqlite"))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "serve.merchant_added" in stderr(), "the reload")
        wait_for(lambda: (tmp_path / "late.sqlite").exists(), "the added merchant's cycle")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)  # good's request is held for 20 s more...
        wait_for(lambda: "shutdown.requested" in stderr(), "the first SIGTERM")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)  # ...so the second one cuts it short
        proc.wait(WAIT)
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
    err = stderr()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    config_lines = [line for line in err.splitlines() if line.startswith("config error:")]
    # One line for the bad file at start and again at the reload, naming file and key.
    assert len(set(config_lines)) == 1 and "bad.yaml: loop.api_key" in config_lines[0], err
    assert str(tmp_path / "corrupt.sqlite") in err
    status = subprocess.run(
        [sys.executable, "-m", "loopsync", "status", "-c", str(good)],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env={k: v for k, v in os.environ.items() if k not in sb.env()},
    )
    assert status.returncode == 0, status.stderr
    assert "interrupted" in status.stdout


def test_a_stopping_command_waits_for_its_work_at_most_the_grace():
    from loopsync.shutdown import Shutdown

    shutdown = Shutdown()
    shutdown.signum = signal.SIGTERM  # as if it had arrived during start-up
    release = threading.Event()
    seen = []
    try:
        # The work ignores the stop (a request that outlives every timeout).
        assert (
            shutdown.supervise(
                lambda stop: seen.append(stop.is_set()) or release.wait(WAIT), grace=0.4
            )
            is None
        )
    finally:
        release.set()
    assert seen == [True] and shutdown.exit_code == 143
