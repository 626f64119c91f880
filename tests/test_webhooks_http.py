"""Webhook intake over real HTTP (serve's listener on 127.0.0.1:0) against the sandbox:
what is accepted, what is refused and how, that a 2xx means stored, and that handling a
stored event acts on that one return exactly once."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from loopsync import web, webhooks
from loopsync.config import load_config
from loopsync.inbox import WebhookService
from loopsync.runner import run_merchant
from loopsync.state import Store

LOOP_SECRET = "loop-webhook-secret-0123456789"
SHIPHERO_SECRET = "shiphero-webhook-secret-0123456789"
GENERIC_SECRET = "generic-webhook-secret-0123456789"


def write_config(sb: Any, tmp_path: Path, **hooks: Any) -> Path:
    data = sb.config_dict(merchant="acme", state_path=str(tmp_path / "acme.sqlite"))
    data["webhooks"] = {
        "loop_secret": "${LOOP_WEBHOOK_SECRET}",
        "shiphero_secret": "${SHIPHERO_WEBHOOK_SECRET}",
        "generic_secret": "${GENERIC_WEBHOOK_SECRET}",
        **hooks,
    }
    path = tmp_path / "acme.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def hook_env(sb: Any) -> dict[str, str]:
    return {
        **sb.env(),
        "LOOP_WEBHOOK_SECRET": LOOP_SECRET,
        "SHIPHERO_WEBHOOK_SECRET": SHIPHERO_SECRET,
        "GENERIC_WEBHOOK_SECRET": GENERIC_SECRET,
    }


class Served:
    """A listener with a webhook service whose worker is driven by the test (`drain`)."""

    def __init__(self, cfg: Any, clock: Any) -> None:
        self.cfg = cfg
        self.hooks = WebhookService(lambda: [cfg], clock=clock)
        self.listener = web.Listener(
            web.Address("127.0.0.1", 0), lambda: [cfg], token=None, clock=clock, hooks=self.hooks
        )
        self.hooks.started = False  # no worker threads: the test calls drain()

    @property
    def port(self) -> int:
        return self.listener.server.port

    def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(
                "POST", path, body, {"Content-Type": "application/json", **(headers or {})}
            )
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def loop_event(self, body: bytes, secret: str = LOOP_SECRET) -> tuple[int, bytes]:
        sig = webhooks.hmac_b64(secret, body)
        return self.post("/webhooks/loop/acme", body, {"X-Loop-Signature": sig})

    def inbox(self) -> list[tuple[Any, ...]]:
        store = Store(self.cfg.state_path, self.listener.clock)
        try:
            return store.conn.execute(
                "select key, source, subject, handled_at, outcome from inbox order by key"
            ).fetchall()
        finally:
            store.close()


@pytest.fixture
def make_served(make_sandbox, clock, tmp_path):
    """make(kind, **webhooks keys) -> (sandbox, Served) on a listener, stopped after."""
    started = []

    def make(kind: str = "shiphero", **hooks: Any) -> tuple[Any, Served]:
        sb = make_sandbox(kind, rate_limits=False)
        srv = Served(load_config(write_config(sb, tmp_path, **hooks), env=hook_env(sb)), clock)
        srv.listener._thread.start()  # the server only: no metrics subscription needed
        started.append(srv)
        return sb, srv

    yield make
    for srv in started:
        srv.listener.server.shutdown()
        srv.listener.server.server_close()


@pytest.fixture
def served(make_served):
    return make_served()


def read_all(sock: socket.socket) -> bytes:
    parts = []
    while piece := sock.recv(4096):
        parts.append(piece)
    return b"".join(parts)


def exchange(srv: Served, head: bytes) -> bytes:
    """Send raw bytes; all the server answers until it closes (it does after a refusal)."""
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        sock.sendall(head)
        return read_all(sock)
    finally:
        sock.close()


OVERSIZED = (
    b"POST /webhooks/loop/acme HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {webhooks.MAX_BODY + 1}\r\n".encode()
)


def rmas_in_warehouse(sb: Any, return_id: Any) -> int:
    return sum(1 for r in sb.warehouse.returns.values() if r.partner_id == str(return_id))


def loop_body(raw: dict[str, Any], clock: Any, trigger: str = "return.created") -> bytes:
    doc = {
        "topic": "return",
        "trigger": trigger,
        "id": str(raw["id"]),
        "state": raw.get("state", "open"),
        "created_at": raw.get("created_at"),
        "updated_at": clock.now().strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return json.dumps(doc).encode()


def test_signed_loop_event_is_stored_before_200_and_handled_once(served, clock):
    sb, srv = served
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    body = loop_body(raw, clock)
    status, answer = srv.loop_event(body)
    assert status == 200 and json.loads(answer) == {"code": "200", "Status": "Success"}
    rows = srv.inbox()
    assert [(r[1], r[2], r[3]) for r in rows] == [("loop", str(raw["id"]), None)]
    # the return was not in the state yet: handling fetches it from Loop and pushes it
    assert srv.hooks.drain(srv.cfg) == 1
    store = Store(srv.cfg.state_path, clock)
    try:
        assert store.rmas.get(str(raw["id"])) is not None
        assert store.inbox.unhandled() == []
    finally:
        store.close()
    assert rmas_in_warehouse(sb, raw["id"]) == 1


def test_duplicate_delivery_changes_nothing(served, clock):
    sb, srv = served
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    body = loop_body(raw, clock)
    assert srv.loop_event(body)[0] == 200
    srv.hooks.drain(srv.cfg)
    before = sb.recorder.count()
    assert srv.loop_event(body)[0] == 200  # answered 2xx, so the sender stops retrying
    assert srv.hooks.drain(srv.cfg) == 0
    assert len(srv.inbox()) == 1
    assert sb.recorder.count() == before


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        (lambda b, h: (b, {}), 401),  # unsigned
        (lambda b, h: (b, {"X-Loop-Signature": webhooks.hmac_b64("wrong-secret-123", b)}), 401),
        (lambda b, h: (b.replace(b"open", b"clos"), h), 401),  # altered after signing
        (lambda b, h: (b, {"X-Loop-Signature": "not base64 at all!"}), 401),
    ],
    ids=["missing-header", "wrong-secret", "altered-body", "garbage-signature"],
)
def test_unsigned_or_badly_signed_events_are_refused_and_not_stored(
    served, clock, mangle, expected
):
    sb, srv = served
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    body = loop_body(raw, clock)
    sent, headers = mangle(body, {"X-Loop-Signature": webhooks.hmac_b64(LOOP_SECRET, body)})
    status, answer = srv.post("/webhooks/loop/acme", sent, headers)
    assert status == expected and answer == b"refused\n"
    assert srv.inbox() == []


def test_unknown_merchant_gets_401_with_the_same_body(served, clock):
    _, srv = served
    body = b'{"id": "1"}'
    status, answer = srv.post(
        "/webhooks/loop/nobody", body, {"X-Loop-Signature": webhooks.hmac_b64(LOOP_SECRET, body)}
    )
    assert (status, answer) == (401, b"refused\n")  # as a bad signature: no enumeration
    assert srv.post("/webhooks/ftp/acme", body)[0] == 401


def test_replay_of_an_old_loop_event_is_refused(served, clock):
    sb, srv = served
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    body = loop_body(raw, clock)
    clock.advance(25 * 3600)  # past webhooks.max_age (24h)
    assert srv.loop_event(body)[0] == 400
    assert srv.inbox() == []


def test_oversized_body_is_refused_from_its_length_before_reading(served):
    _, srv = served
    answer = exchange(srv, OVERSIZED + b"\r\n")  # answered without a single body byte sent
    assert answer.startswith(b"HTTP/1.1 413")


def test_oversized_body_announced_with_expect_100_is_refused_without_a_100(served):
    _, srv = served
    answer = exchange(srv, OVERSIZED + b"Expect: 100-continue\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer


def test_chunked_body_over_the_cap_is_refused(served):
    _, srv = served
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    piece = b"x" * 65536
    try:
        sock.sendall(
            b"POST /webhooks/loop/acme HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(webhooks.MAX_BODY // len(piece) + 1):
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        answer = sock.recv(4096)
    except (BrokenPipeError, ConnectionResetError):
        answer = sock.recv(4096)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413")


def test_chunked_signed_event_is_accepted(served, clock):
    sb, srv = served
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    body = loop_body(raw, clock)
    sig = webhooks.hmac_b64(LOOP_SECRET, body)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(
            "POST",
            "/webhooks/loop/acme",
            iter([body[:10], body[10:]]),
            {"Content-Type": "application/json", "X-Loop-Signature": sig},
            encode_chunked=True,
        )
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    assert len(srv.inbox()) == 1


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET /webhooks/loop/acme HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"PUT /webhooks/loop/acme HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (
            b"POST /webhooks/loop/acme HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 2\r\n\r\n{}",
            415,
        ),
        (
            b"POST /webhooks/loop/acme HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n\r\n",
            411,
        ),
        (
            b"POST /webhooks/loop/acme HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            411,
        ),
    ],
    ids=["get", "put", "text-plain", "no-length", "length-and-chunked"],
)
def test_wrong_method_type_or_framing_is_refused_without_detail(served, head, expected):
    _, srv = served
    answer = exchange(srv, head)
    assert answer.startswith(f"HTTP/1.1 {expected}".encode())
    assert answer.endswith(b"refused\n")


def test_webhooks_need_no_bearer_token_off_loopback(make_served, clock):
    sb, srv = make_served()
    srv.listener.server.token = "a-bearer-token-for-the-page"  # as when bound off loopback
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    assert srv.loop_event(loop_body(raw, clock))[0] == 200
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("GET", "/api/merchants")
    assert conn.getresponse().status == 401  # the page still needs it
    conn.close()


def test_crash_between_store_and_handle_is_finished_once_on_restart(served, clock):
    sb, srv = served
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    assert srv.loop_event(loop_body(raw, clock))[0] == 200
    # "crash": this service never handled it; a new one (serve's restart) starts
    fresh = WebhookService(lambda: [srv.cfg], clock=clock)
    fresh.start()
    try:
        for _ in range(200):
            if srv.inbox()[0][3] is not None:
                break
            fresh.stop.wait(0.05)
    finally:
        fresh.close()
    assert srv.inbox()[0][3] is not None
    assert rmas_in_warehouse(sb, raw["id"]) == 1
    assert srv.hooks.drain(srv.cfg) == 0  # nothing left; the old one adds nothing


def test_lost_webhook_is_found_by_polling_and_counted(served, clock):
    sb, srv = served
    first, lost = sb.seed(2, states_weights=[("open", 1)])
    assert srv.loop_event(loop_body(first, clock))[0] == 200  # webhooks are healthy
    srv.hooks.drain(srv.cfg)
    clock.advance(60)
    with srv.hooks.cycle(srv.cfg):
        run_merchant(srv.cfg, clock=clock, mode="serve")
    store = Store(srv.cfg.state_path, clock)
    try:
        figures = store.inbox.figures()
        assert store.rmas.get(str(lost["id"])) is not None  # polling got it anyway
    finally:
        store.close()
    assert figures.missed == 1 and figures.missed_recent == (str(lost["id"]),)


def processes(sb: Any, return_id: Any) -> int:
    return len(
        [
            c
            for c in sb.recorder.calls("loop", writes=True)
            if c.path.endswith(f"/{return_id}/process")
        ]
    )


def test_shiphero_return_update_polls_that_rma_and_acts_once(served, clock):
    sb, srv = served
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    run_merchant(srv.cfg, clock=clock)  # pushed: the RMA exists
    assert sb.warehouse.receive(str(raw["id"]), "full")
    (ret,) = [r for r in sb.warehouse.returns.values() if r.partner_id == str(raw["id"])]
    body = json.dumps(
        {
            "webhook_type": "Return Update",
            "test": False,
            "return_id": ret.legacy_id,
            "status": "warehouse_complete",
        }
    ).encode()
    sig = webhooks.hmac_b64(SHIPHERO_SECRET, body)
    headers = {"x-shiphero-hmac-sha256": sig, "x-shiphero-message-id": "m-1"}
    assert srv.post("/webhooks/shiphero/acme", body, headers)[0] == 200
    assert srv.hooks.drain(srv.cfg) == 1
    assert processes(sb, raw["id"]) == 1
    # the same message again, and the same update under a new message id: nothing more
    assert srv.post("/webhooks/shiphero/acme", body, headers)[0] == 200
    headers["x-shiphero-message-id"] = "m-2"
    assert srv.post("/webhooks/shiphero/acme", body, headers)[0] == 200
    srv.hooks.drain(srv.cfg)
    assert processes(sb, raw["id"]) == 1


def test_shiphero_update_for_an_unknown_rma_is_left_to_polling(served, clock):
    _, srv = served
    body = b'{"webhook_type": "Return Update", "return_id": 999999, "status": "pending"}'
    sig = webhooks.hmac_b64(SHIPHERO_SECRET, body)
    assert srv.post("/webhooks/shiphero/acme", body, {"x-shiphero-hmac-sha256": sig})[0] == 200
    assert srv.hooks.drain(srv.cfg) == 1
    assert srv.inbox()[0][4] == "unknown RMA (left to polling)"


def test_generic_receipt_event_signed_like_the_connector_acts_once(make_served, clock):
    sb, srv = make_served("generic")
    cfg = srv.cfg
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    run_merchant(cfg, clock=clock)
    assert sb.warehouse.receive(str(raw["id"]), "full")
    body = json.dumps({"event_id": "ev-1", "rma_number": str(raw["id"])}).encode()
    stamp = str(int(clock.now().timestamp()))
    path = "/webhooks/generic/acme"
    headers = {
        "X-Loopsync-Timestamp": stamp,
        "X-Loopsync-Signature": webhooks.sign_generic(GENERIC_SECRET, stamp, "POST", path, body),
    }
    assert srv.post(path, body, headers)[0] == 200
    assert srv.hooks.drain(cfg) == 1
    assert processes(sb, raw["id"]) == 1
    assert srv.post(path, body, headers)[0] == 200  # a duplicate: nothing more
    assert srv.hooks.drain(cfg) == 0
    clock.advance(301)  # outside the connector's documented 5-minute window
    assert srv.post(path, body, headers)[0] == 400


def test_status_page_json_and_metrics_show_webhook_health(make_served, clock):
    from loopsync import status
    from loopsync.report import view_lines

    # Loop alone has a secret: its event makes webhooks healthy (every sender with a
    # secret must be heard: test_redteam_webhooks)
    sb, srv = make_served(shiphero_secret=None, generic_secret=None)
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    assert srv.loop_event(loop_body(raw, clock))[0] == 200
    assert srv.loop_event(loop_body(raw, clock), secret="not-the-secret-xx")[0] == 401
    srv.hooks.drain(srv.cfg)  # the worker writes the refusal counts down
    view = status.merchant_view(srv.cfg, now=clock.now())
    assert view.webhooks is not None and view.webhooks.healthy
    assert view.webhooks.accepted == 1 and view.webhooks.refused == {"bad_signature": 1}
    text = "\n".join(view_lines(view))
    assert "webhooks healthy" in text and "bad_signature 1" in text
    assert view.to_json()["webhooks"]["missed_by_webhooks"] == 0
    page = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    page.request("GET", "/merchants/acme")
    html = page.getresponse().read().decode()
    page.request("GET", "/metrics")
    metrics = page.getresponse().read().decode()
    page.close()
    assert "found by polling, missed by webhooks" in html
    assert 'loopsync_webhook_missed_returns{merchant="acme"} 0.0' in metrics
    assert LOOP_SECRET not in html + metrics + text


def test_scheduled_cycles_are_deferred_only_while_every_sender_is_healthy(make_served, clock):
    # the 3PL sender stays unconfigured here: a configured one must be healthy too
    sb, srv = make_served(poll_every="10m", healthy_within="5m", generic_secret=None)
    cfg = srv.cfg
    ran: list[str] = []
    job = srv.hooks.scheduled(lambda c, stop, next_due=None: ran.append(c.merchant))
    job(cfg, None)  # no event seen yet: polling runs
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    assert srv.loop_event(loop_body(raw, clock))[0] == 200
    clock.advance(60)
    job(cfg, None)  # Loop is healthy, ShipHero has sent nothing: still runs
    body = b'{"webhook_type": "Return Update", "return_id": 1, "status": "pending"}'
    sig = webhooks.hmac_b64(SHIPHERO_SECRET, body)
    assert srv.post("/webhooks/shiphero/acme", body, {"x-shiphero-hmac-sha256": sig})[0] == 200
    clock.advance(60)
    job(cfg, None)  # both healthy, 1 min since the last cycle: deferred
    assert len(ran) == 2
    clock.advance(4 * 60)  # Loop's last event is now older than healthy_within
    job(cfg, None)
    assert len(ran) == 3


def test_a_body_dripped_past_the_read_deadline_is_cut_off_unanswered(served, clock):
    _, srv = served
    slots = srv.listener.server.hook_slots
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        sock.sendall(
            b"POST /webhooks/loop/acme HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        while slots._value == web.WEBHOOK_SLOTS:  # wait until the server reads this request
            clock.sleep(0)
            threading.Event().wait(0.01)
        sock.settimeout(0.5)
        answer = None
        for _ in range(20):  # each byte comes after the server's clock passed its budget
            clock.advance(web.WEBHOOK_READ_SECONDS + 1)
            try:
                sock.sendall(b'"')
                answer = sock.recv(4096)
            except (TimeoutError, ConnectionError):
                continue
            break
        assert answer == b""  # closed without an answer
    finally:
        sock.close()
    assert srv.inbox() == []


def test_connections_over_the_cap_are_closed_at_once(make_served, clock, monkeypatch):
    monkeypatch.setattr(web, "MAX_CONNECTIONS", 2)
    _, srv = make_served()
    idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(2)]
    try:
        idle[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle[0].recv(100).startswith(b"HTTP/1.1 200")  # both threads are running
        extra = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_all(extra) == b""  # no thread for it
        extra.close()
        idle[1].close()
        for _ in range(100):  # the freed slot is given back when its thread ends
            again = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = read_all(again)
            again.close()
            if answer:
                break
            clock.sleep(0)  # FakeClock: no real wait; the loop just retries
        assert answer.startswith(b"HTTP/1.1 200")
    finally:
        for s in idle:
            s.close()


def test_a_held_lock_defers_an_event_and_a_crashing_one_is_recorded_not_retried(served, clock):
    from loopsync.errors import LockHeld

    sb, srv = served
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    assert srv.loop_event(loop_body(raw, clock))[0] == 200

    def locked(*_: Any) -> str:
        raise LockHeld("a cron run holds it")

    def crashing(*_: Any) -> str:
        raise ValueError("data no parser foresaw")

    srv.hooks.handler = locked
    assert srv.hooks.drain(srv.cfg) == 0 and srv.inbox()[0][3] is None  # tried again later
    srv.hooks.handler = crashing
    assert srv.hooks.drain(srv.cfg) == 1
    assert srv.inbox()[0][4] == "failed: ValueError"
    assert srv.hooks.drain(srv.cfg) == 0  # not run again; polling is the safety net
