"""Webhook intake over real HTTP (serve's listener on 127.0.0.1:0) against the sandbox:
what is accepted, what is refused and how, that a 2xx means stored, and that handling a
stored event acts on that one return exactly once."""

from __future__ import annotations

import http.client
import json
import socket
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
def served(make_sandbox, clock, tmp_path):
    sb = make_sandbox("shiphero", rate_limits=False)
    cfg = load_config(write_config(sb, tmp_path), env=hook_env(sb))
    srv = Served(cfg, clock)
    srv.listener._thread.start()  # the server only: no metrics subscription needed
    yield sb, srv
    srv.listener.server.shutdown()
    srv.listener.server.server_close()


def read_all(sock: socket.socket) -> bytes:
    parts = []
    while piece := sock.recv(4096):
        parts.append(piece)
    return b"".join(parts)


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


def test_unknown_merchant_gets_404_with_the_same_body(served, clock):
    _, srv = served
    body = b'{"id": "1"}'
    status, answer = srv.post(
        "/webhooks/loop/nobody", body, {"X-Loop-Signature": webhooks.hmac_b64(LOOP_SECRET, body)}
    )
    assert (status, answer) == (404, b"refused\n")
    assert srv.post("/webhooks/ftp/acme", body)[0] == 404


def test_replay_of_an_old_loop_event_is_refused(served, clock):
    sb, srv = served
    (raw,) = sb.seed(1, states_weights=[("open", 1)])
    body = loop_body(raw, clock)
    clock.advance(25 * 3600)  # past webhooks.max_age (24h)
    assert srv.loop_event(body)[0] == 400
    assert srv.inbox() == []


def test_oversized_body_is_refused_from_its_length_before_reading(served):
    _, srv = served
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        sock.sendall(
            b"POST /webhooks/loop/acme HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {webhooks.MAX_BODY + 1}\r\n\r\n".encode()
        )
        answer = sock.recv(4096)  # answered without our sending a single body byte
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413")


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
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        sock.sendall(head)
        answer = read_all(sock)  # the server closes the connection after a refusal
    finally:
        sock.close()
    assert answer.startswith(f"HTTP/1.1 {expected}".encode())
    assert answer.endswith(b"refused\n")


def test_webhooks_need_no_bearer_token_off_loopback(make_sandbox, clock, tmp_path):
    sb = make_sandbox("shiphero", rate_limits=False)
    cfg = load_config(write_config(sb, tmp_path), env=hook_env(sb))
    srv = Served(cfg, clock)
    srv.listener.server.token = "a-bearer-token-for-the-page"  # as when bound off loopback
    srv.listener._thread.start()
    try:
        (raw,) = sb.seed(1, states_weights=[("open", 1)])
        assert srv.loop_event(loop_body(raw, clock))[0] == 200
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("GET", "/api/merchants")
        assert conn.getresponse().status == 401  # the page still needs it
        conn.close()
    finally:
        srv.listener.server.shutdown()
        srv.listener.server.server_close()


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
