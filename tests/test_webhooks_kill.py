"""The real `serve --http` in a subprocess: an event answered 200 is in the state file even
when the process is killed (SIGKILL) before handling it, and the next `serve` handles it,
once."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime

import pytest
import yaml

from loopsync import webhooks
from loopsync.state import MerchantLock, Store
from loopsync.testing import Sandbox
from loopsync.timeutil import SystemClock
from tests.test_ops_signals import WAIT, wait_for

pytestmark = pytest.mark.slow
SECRET = "loop-webhook-secret-kill-test"
SERVE = [sys.executable, "-m", "loopsync", "--log-format", "json", "serve"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(port, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body, headers or {})
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def inbox(path):
    if not path.exists():
        return []
    store = Store(path, SystemClock(), read_only=True)
    try:
        if not store.runs.has_table("inbox"):
            return []
        return store.conn.execute("select subject, handled_at from inbox").fetchall()
    finally:
        store.close()


def test_an_event_stored_before_a_kill_is_handled_once_after_restart(tmp_path):
    sb = Sandbox("shiphero", clock=SystemClock(), rate_limits=False).start()
    procs = []
    try:
        (raw,) = sb.seed(1, states_weights=[("open", 1)])
        state = tmp_path / "acme.sqlite"
        data = sb.config_dict(merchant="acme", state_path=str(state), every="1h")
        data["webhooks"] = {"loop_secret": "${LOOP_WEBHOOK_SECRET}"}
        conf = tmp_path / "acme.yaml"
        conf.write_text(yaml.safe_dump(data), encoding="utf-8")
        env = {**os.environ, **sb.env(), "LOOP_WEBHOOK_SECRET": SECRET}
        port = free_port()

        def serve():
            err = open(tmp_path / f"stderr{len(procs)}.txt", "w+b")  # noqa: SIM115
            proc = subprocess.Popen(
                [*SERVE, "--http", f"127.0.0.1:{port}", "-c", str(conf)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            procs.append(proc)
            wait_for(lambda: request(port, "GET", "/healthz") == 200, "the listener")
            return proc

        Store(state, SystemClock()).close()  # the schema exists: no first-open race
        lock = MerchantLock(state).acquire()  # nothing is handled while we hold it
        first = serve()
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = json.dumps({"topic": "return", "id": str(raw["id"]), "updated_at": now}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Loop-Signature": webhooks.hmac_b64(SECRET, body),
        }
        assert request(port, "POST", "/webhooks/loop/acme", body, headers) == 200
        assert inbox(state) == [(str(raw["id"]), None)]  # committed before the 200
        first.send_signal(signal.SIGKILL)
        first.wait(WAIT)
        lock.release()
        assert sb.warehouse.rma_count(str(raw["id"])) == 0

        second = serve()
        wait_for(lambda: inbox(state) and inbox(state)[0][1] is not None, "the event handled")
        second.send_signal(signal.SIGTERM)
        assert second.wait(WAIT) == 0
        assert sb.warehouse.rma_count(str(raw["id"])) == 1
        assert len(inbox(state)) == 1
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        sb.stop()
