"""Red team on `serve --http`: what an attacker or a careless operator tried, as tests."""

import json
import socket
import sqlite3
import struct
import threading
import time
import urllib.request

import pytest

from loopsync import web
from loopsync.config import load_config
from loopsync.errors import UsageError
from loopsync.redaction import redact
from loopsync.state import Store
from tests.test_web import get, listener, synced  # noqa: F401 - fixtures used by name

EMAIL = "jane.doe+returns@example.com"


def test_an_email_in_a_remote_error_reason_never_reaches_the_page_or_json(
    make_sandbox, clock, tmp_path
):
    from loopsync.runner import run_merchant

    sb = make_sandbox("shiphero", rate_limits=False)
    seeded = sb.seed(2, states_weights=[("open", 1)])
    path = sb.write_config(tmp_path, merchant="acme", state_path=str(tmp_path / "acme.sqlite"))
    cfg = load_config(path, env=sb.env())
    run_merchant(cfg, clock=clock)
    rid = seeded[0]["id"]
    store = Store(cfg.state_path, clock)
    # a warehouse's rejection that echoes the customer's address, stored as the remote said it
    store.runs.add_problem(rid, "push", f"rejected: customer {EMAIL} has no order", None)
    store.runs.add_problem(rid, "push", "rejected:\njosé.núñez@example.com unknown", None)
    store.close()
    lis = web.Listener(web.Address("127.0.0.1", 0), lambda: [cfg], token=None, clock=clock)
    lis.start()
    try:
        base = f"http://127.0.0.1:{lis.server.port}"
        texts = [
            get(base + "/")[1],
            get(base + "/api/merchants")[1],
            get(base + f"/api/returns/{rid}")[1],
            get(base + f"/returns?q={rid}")[1],
        ]
    finally:
        lis.stop()
    assert "has no order" in texts[0] and "has no order" in texts[2]  # the reason is shown
    assert json.loads(texts[1]) and json.loads(texts[2])  # still JSON after the masking
    for text in texts:
        for part in ("jane.doe", "example.com", "núñez", "n\\u00fa\\u00f1ez"):
            assert part not in text


def test_head_on_the_probes_answers_like_get_without_a_body(listener):
    _, base = listener
    req = urllib.request.Request(base + "/healthz", method="HEAD")  # noqa: S310 - loopback
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - as above
        assert resp.status == 200 and resp.read() == b""


def test_one_merchants_damaged_rows_do_not_500_the_page_or_hide_the_others(
    make_sandbox, clock, tmp_path
):
    from loopsync.runner import run_merchant

    sb = make_sandbox("shiphero", rate_limits=False)
    seeded = sb.seed(2, states_weights=[("open", 1)])
    cfgs = []
    for name in ("acme", "bravo"):
        folder = tmp_path / name
        folder.mkdir()
        p = sb.write_config(folder, merchant=name, state_path=str(folder / f"{name}.sqlite"))
        cfg = load_config(p, env=sb.env())
        run_merchant(cfg, clock=clock)
        cfgs.append(cfg)
    conn = sqlite3.connect(cfgs[0].state_path)
    conn.execute("update returns set stage = 'no-such-stage'")
    conn.execute("update runs set status = 'bogus', started_at = 'yesterday-ish'")
    conn.commit()
    conn.close()
    lis = web.Listener(web.Address("127.0.0.1", 0), lambda: cfgs, token=None, clock=clock)
    lis.start()
    try:
        base = f"http://127.0.0.1:{lis.server.port}"
        page = get(base + "/")
        api = get(base + "/api/merchants")
        ready = get(base + "/readyz")
        metrics = get(base + "/metrics")
        story = get(base + f"/api/returns/{seeded[0]['id']}")
    finally:
        lis.stop()
    assert page[0] == 200 and 'data-merchant="bravo"' in page[1]
    assert "BLOCKED" in page[1] and "holds a row this loopsync cannot read" in page[1]
    assert story[0] == 200 and '"merchant": "bravo"' in story[1]
    assert api[0] == 200 and '"bravo"' in api[1]
    assert ready[0] in (200, 503) and metrics[0] == 200


def test_an_idle_connection_is_closed_by_the_server(listener, monkeypatch):
    monkeypatch.setattr(web, "IDLE_TIMEOUT", 0.5, raising=False)
    _, base = listener
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
        assert idle.recv(1) == b""  # closed by the server, well before our 10 s
    assert get(base + "/healthz")[0] == 200


def test_a_request_the_server_refuses_early_gets_its_answer_and_no_traceback(
    listener,
    capfd,
):
    _, base = listener
    port = int(base.rsplit(":", 1)[1])
    for request in (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1 x\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            answer = b"".join(iter(lambda s=sock: s.recv(4096), b""))
        assert b"Error code: 414" in answer or b"Error code: 400" in answer, answer
    assert get(base + "/healthz")[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_that_hangs_up_mid_request_or_answer_leaves_no_raw_traceback(synced, clock, capfd):
    cfg, _ = synced
    armed, hung_up = threading.Event(), threading.Event()

    def configs():
        if armed.is_set():
            hung_up.wait(10)  # the page is read only once the client has gone
        return [cfg]

    # Handler threads an earlier test's listener may still hold (a silent socket is closed
    # only after 30 s) are not this test's.
    before = {t for t in threading.enumerate() if "process_request" in t.name}
    lis = web.Listener(web.Address("127.0.0.1", 0), configs, token=None, clock=clock)
    lis.start()
    try:
        sock = socket.create_connection(("127.0.0.1", lis.server.port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        armed.set()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.close()  # a reset, not a polite close
        hung_up.set()
        half = socket.create_connection(("127.0.0.1", lis.server.port), timeout=10)
        half.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        half.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # headers not finished
        assert get(f"http://127.0.0.1:{lis.server.port}/healthz")[0] == 200
        half.close()
        deadline = time.monotonic() + 10  # generous: the handler ends within milliseconds
        while any("process_request" in t.name and t not in before for t in threading.enumerate()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        lis.stop()
    assert "Traceback" not in capfd.readouterr().err


def test_while_serve_drains_readyz_fails_and_healthz_stays_alive(listener, clock):
    lis, base = listener
    lis.draining()
    clock.advance(web.HEARTBEAT_STALE + 60)  # the heartbeat job no longer runs while draining
    assert get(base + "/readyz") == (503, "shutting down\n")
    assert get(base + "/healthz")[0] == 200  # a liveness probe must not kill the drain


def test_serve_tells_the_listener_it_drains_before_the_cycles_end():
    from loopsync.scheduling import serve
    from loopsync.shutdown import Shutdown

    stop = threading.Event()
    seen: list[str] = []

    class Probe:
        def start(self):
            seen.append("start")

        def beat(self):
            stop.set()

        def draining(self):
            seen.append("draining")

        def stop(self):
            seen.append("stop")

    assert (
        serve([], lambda cfg, ev, **kw: None, stop, shutdown=Shutdown(), grace=5, listener=Probe())
        == 0
    )
    assert seen == ["start", "draining", "stop"]


@pytest.mark.parametrize("weak", ["x", "1234567", "pässwörd-ünicode", "two words here"])
def test_a_short_or_unsendable_page_token_is_refused_at_start(weak):
    with pytest.raises(UsageError, match=web.TOKEN_ENV):
        web.check_token(web.Address("0.0.0.0", 9108), {web.TOKEN_ENV: weak})  # noqa: S104


def test_the_page_token_is_masked_at_every_exit():
    token = "page-token-0123456789"
    assert web.check_token(web.Address("0.0.0.0", 9108), {web.TOKEN_ENV: token}) == token  # noqa: S104
    assert token not in redact(f"echoed: {token}")
